"""`derain` and `eval` on batches: up-front checks, --skip-errors, --skip-existing, eval's progressive
--json and --output, Ctrl-C, no empty output folders, progress on stderr (terminal or log) and --quiet."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from imaging import random_image, read_uint8, tiny_checkpoint

from drsformer_fast import cli, progress
from drsformer_fast.images import evaluation, inference

pytestmark = pytest.mark.usefixtures("one_thread", "torch_path")

CORRUPT = b"\x89PNG\r\n\x1a\n this is not really a png"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("batch") / "net.pth", seed=0)


@pytest.fixture
def batch(tmp_path):
    """rain/1.png, 2.png, 3.png (16x16, 16x24, 24x16) and their clean targets."""
    rain, clean = tmp_path / "rain", tmp_path / "clean"
    rain.mkdir()
    clean.mkdir()
    for i, (h, w) in enumerate(((16, 16), (16, 24), (24, 16)), 1):
        random_image(rain / f"{i}.png", h, w, seed=i)
        random_image(clean / f"{i}.png", h, w, seed=10 + i)
    return rain, clean


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def lines(text):
    return [line for line in text.splitlines() if line.strip()]


def fail_on(monkeypatch, module, name, bad, exc):
    """``module.name`` raises ``exc`` for the image named ``bad`` (its second positional argument)."""
    real = getattr(module, name)

    def patched(model, src, *args, **kwargs):
        if Path(src).name == bad:
            raise exc
        return real(model, src, *args, **kwargs)

    monkeypatch.setattr(module, name, patched)


# --------------------------------------------------------------------------------------------
# up-front checks
# --------------------------------------------------------------------------------------------


def test_corrupt_image_in_the_middle_is_refused_before_the_model_loads(batch, ckpt, tmp_path, capsys, monkeypatch):
    rain, clean = batch
    (rain / "2.png").write_bytes(CORRUPT)
    monkeypatch.setattr(cli, "_load", lambda *a, **k: pytest.fail("the model was loaded"))
    out_dir = tmp_path / "new" / "out"
    code, out, err = run(capsys, "derain", rain, "--weights", ckpt, "--output", out_dir)
    assert (code, out) == (2, "")
    assert len(lines(err)) == 1 and lines(err)[0].startswith("drsformer-fast: error: ")
    assert "cannot read image" in err and "2.png" in err
    assert not (tmp_path / "new").exists()
    code, out, err = run(capsys, "eval", "--weights", ckpt, "--input", rain, "--target", clean,
                         "--json", tmp_path / "r.json")
    assert (code, out) == (2, "") and len(lines(err)) == 1 and "cannot read image" in err and "2.png" in err
    assert not (tmp_path / "r.json").exists()


def test_every_problem_is_an_error_line(batch, ckpt, tmp_path, capsys):
    rain, clean = batch
    (rain / "1.png").write_bytes(CORRUPT)
    (rain / "3.png").write_bytes(CORRUPT)
    code, _, err = run(capsys, "derain", rain, "--weights", ckpt, "--output", tmp_path / "out")
    assert code == 2 and len(lines(err)) == 2
    assert all(line.startswith("drsformer-fast: error: cannot read image") for line in lines(err))
    assert "1.png" in lines(err)[0] and "3.png" in lines(err)[1]


def test_eval_checks_targets_up_front(batch, ckpt, tmp_path, capsys, monkeypatch):
    rain, clean = batch
    monkeypatch.setattr(cli, "_load", lambda *a, **k: pytest.fail("the model was loaded"))
    random_image(clean / "2.png", 20, 20, seed=3)
    code, out, err = run(capsys, "eval", "--weights", ckpt, "--input", rain, "--target", clean)
    assert (code, out) == (2, "") and len(lines(err)) == 1 and "2.png is 16x24 but its target" in err
    (clean / "2.png").write_bytes(CORRUPT)
    code, out, err = run(capsys, "eval", "--weights", ckpt, "--input", rain, "--target", clean)
    assert (code, out) == (2, "") and len(lines(err)) == 1 and "cannot read image" in err


def test_output_paths_are_checked_up_front(batch, ckpt, tmp_path, capsys, monkeypatch):
    rain, clean = batch
    monkeypatch.setattr(cli, "_load", lambda *a, **k: pytest.fail("the model was loaded"))
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    code, out, err = run(capsys, "derain", rain, "--weights", ckpt, "--output", a_file)
    assert (code, out, err) == (2, "", f"drsformer-fast: error: --output {a_file} is a file; give a folder\n")
    code, _, err = run(capsys, "derain", rain, "--weights", ckpt, "--output", a_file / "sub")
    assert code == 2 and len(lines(err)) == 1 and "cannot be created" in err and "is a file" in err
    code, _, err = run(capsys, "eval", "--weights", ckpt, "--input", rain, "--target", clean, "--output", a_file)
    assert code == 2 and len(lines(err)) == 1 and "is a file; give a folder" in err
    (tmp_path / "out" / "2.png").mkdir(parents=True)
    code, _, err = run(capsys, "derain", rain, "--weights", ckpt, "--output", tmp_path / "out")
    assert code == 2 and len(lines(err)) == 1 and "2.png is a folder" in err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = run(capsys, "derain", rain, "--weights", ckpt, "--output", locked / "out")
        assert code == 2 and len(lines(err)) == 1 and "not writable" in err


# --------------------------------------------------------------------------------------------
# --skip-errors
# --------------------------------------------------------------------------------------------


def test_skip_errors_skips_a_corrupt_image_up_front(batch, ckpt, tmp_path, capsys):
    rain, clean = batch
    (rain / "2.png").write_bytes(CORRUPT)
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "derain", rain, "--weights", ckpt, "--output", out_dir, "--skip-errors")
    assert code == 1, err
    assert out == f"wrote 2 image(s) to {out_dir}\n"
    assert any(line.startswith("skipped 2.png: cannot read image") for line in lines(err))
    assert lines(err)[-1] == "2 written, 1 skipped (1 failed)"
    assert sorted(p.name for p in out_dir.iterdir()) == ["1.png", "3.png"]
    code, out, err = run(capsys, "eval", "--weights", ckpt, "--input", rain, "--target", clean, "--skip-errors",
                         "--json", tmp_path / "r.json")
    assert code == 1 and "mean of 2" in out and lines(err)[-1] == "2 scored, 1 skipped (1 failed)"
    report = json.loads((tmp_path / "r.json").read_text())
    assert [r["name"] for r in report["images"]] == ["1.png", "3.png"] and report["count"] == 2
    assert report["skipped"][0]["name"] == "2.png" and "cannot read image" in report["skipped"][0]["error"]
    assert "partial" not in report


def test_a_failure_while_running_stops_the_batch_keeping_what_was_written(batch, ckpt, tmp_path, capsys,
                                                                           monkeypatch):
    rain, _ = batch
    fail_on(monkeypatch, inference, "derain_image", "2.png", inference.InferenceError(f"{rain / '2.png'}: broken"))
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "derain", rain, "--weights", ckpt, "--output", out_dir)
    assert (code, out) == (2, "")
    assert lines(err)[-1] == f"drsformer-fast: error: {rain / '2.png'}: broken" and "Traceback" not in err
    assert [p.name for p in out_dir.iterdir()] == ["1.png"]


def test_skip_errors_skips_a_failure_while_running(batch, ckpt, tmp_path, capsys, monkeypatch):
    rain, _ = batch
    fail_on(monkeypatch, inference, "derain_image", "2.png", inference.InferenceError("broken"))
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "derain", rain, "--weights", ckpt, "--output", out_dir, "--skip-errors")
    assert code == 1 and out == f"wrote 2 image(s) to {out_dir}\n"
    assert "skipped 2.png: broken" in lines(err)
    assert lines(err)[-1] == "2 written, 1 skipped (1 failed)"
    assert sorted(p.name for p in out_dir.iterdir()) == ["1.png", "3.png"]


def test_no_empty_output_folder_after_a_failed_run(batch, ckpt, tmp_path, capsys, monkeypatch):
    rain, _ = batch
    fail_on(monkeypatch, inference, "derain_image", "1.png", inference.InferenceError("broken"))
    code, _, err = run(capsys, "derain", rain, "--weights", ckpt, "--output", tmp_path / "a" / "b")
    assert code == 2 and lines(err)[-1] == "drsformer-fast: error: broken"
    assert not (tmp_path / "a").exists()

    def write_fails(path, img):
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # the folder is made, the write fails
        raise OSError("disk full")

    monkeypatch.undo()
    monkeypatch.setattr(inference, "write_png", write_fails)
    code, _, err = run(capsys, "derain", rain, "--weights", ckpt, "--output", tmp_path / "a" / "b",
                       "--skip-errors")
    assert code == 1 and lines(err)[-1] == "0 written, 3 skipped (3 failed)"
    assert not (tmp_path / "a").exists()
    code, _, err = run(capsys, "eval", "--weights", ckpt, "--input", rain, "--target", batch[1], "--output",
                       tmp_path / "a")
    assert code == 2 and "disk full" in lines(err)[-1] and not (tmp_path / "a").exists()


# --------------------------------------------------------------------------------------------
# --skip-existing, eval --output
# --------------------------------------------------------------------------------------------


def test_skip_existing(batch, ckpt, tmp_path, capsys, monkeypatch):
    rain, _ = batch
    out_dir = tmp_path / "out"
    assert run(capsys, "derain", rain, "--weights", ckpt, "--output", out_dir)[0] == 0
    (out_dir / "2.png").unlink()
    done = []
    real = inference.derain_image
    monkeypatch.setattr(inference, "derain_image", lambda model, src, *a, **k: done.append(src.name) or
                        real(model, src, *a, **k))
    code, out, err = run(capsys, "derain", rain, "--weights", ckpt, "--output", out_dir, "--skip-existing")
    assert code == 0, err
    assert done == ["2.png"] and out == f"wrote 1 image(s) to {out_dir}\n"
    assert lines(err)[-1] == "1 written, 2 skipped (2 already existed)"
    code, out, err = run(capsys, "derain", rain, "--weights", ckpt, "--output", out_dir, "--skip-existing")
    assert code == 0 and done == ["2.png"] and lines(err) == ["0 written, 3 skipped (3 already existed)"]


def test_eval_output_keeps_the_derained_images(batch, ckpt, tmp_path, capsys):
    rain, clean = batch
    assert run(capsys, "derain", rain, "--weights", ckpt, "--output", tmp_path / "derained")[0] == 0
    code, out, err = run(capsys, "eval", "--weights", ckpt, "--input", rain, "--target", clean,
                         "--output", tmp_path / "kept")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["1.png", "2.png", "3.png"]
    for name in ("1.png", "2.png", "3.png"):
        assert np.array_equal(read_uint8(tmp_path / "kept" / name), read_uint8(tmp_path / "derained" / name))


# --------------------------------------------------------------------------------------------
# eval --json after every image; Ctrl-C
# --------------------------------------------------------------------------------------------


def test_eval_json_is_written_after_every_image(batch, ckpt, tmp_path, capsys, monkeypatch):
    rain, clean = batch
    path = tmp_path / "r.json"
    fail_on(monkeypatch, evaluation, "evaluate_pair", "2.png", evaluation.InferenceError("2.png: broken"))
    code, out, err = run(capsys, "eval", "--weights", ckpt, "--input", rain, "--target", clean, "--json", path)
    assert (code, out) == (2, "") and lines(err)[-1] == "drsformer-fast: error: 2.png: broken"
    report = json.loads(path.read_text())
    assert [r["name"] for r in report["images"]] == ["1.png"] and report["count"] == 1
    assert report["partial"] == {"done": 1, "total": 3} and report["config"]["dim"] == 8
    assert report["mean"]["psnr"] == report["images"][0]["psnr"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("r.json")] == ["r.json"]  # no temp file left


def test_eval_ctrl_c_keeps_the_report_so_far(batch, ckpt, tmp_path, capsys, monkeypatch):
    rain, clean = batch
    path = tmp_path / "r.json"
    fail_on(monkeypatch, evaluation, "evaluate_pair", "3.png", KeyboardInterrupt())
    code, out, err = run(capsys, "eval", "--weights", ckpt, "--input", rain, "--target", clean, "--json", path,
                         "--output", tmp_path / "kept")
    assert (code, out) == (130, "") and "Traceback" not in err
    assert lines(err)[-1] == (f"interrupted after 2 of 3 images; 2 scored; report so far in {path}; "
                              f"2 written to {tmp_path / 'kept'}")
    assert [r["name"] for r in json.loads(path.read_text())["images"]] == ["1.png", "2.png"]


def test_derain_ctrl_c_in_a_subprocess(batch, ckpt, tmp_path):
    """SIGINT while the second image runs: one line, exit code 130, the first image kept."""
    rain, _ = batch
    marker = tmp_path / "started-2"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from drsformer_fast import cli\nfrom drsformer_fast.images import inference\n"
        "real = inference.derain_image\n"
        "def slow(model, src, *a, **k):\n"
        "    if Path(src).name == '2.png':\n"
        f"        Path({str(marker)!r}).touch()\n"
        "        time.sleep(60)\n"
        "    return real(model, src, *a, **k)\n"
        "inference.derain_image = slow\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    out_dir = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.Popen([sys.executable, "-c", script, "derain", str(rain), "--weights", str(ckpt),
                             "--output", str(out_dir), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert out == "" and "Traceback" not in err
    assert lines(err)[-1] == f"interrupted after 1 of 3 images; 1 written to {out_dir}"
    assert [p.name for p in out_dir.iterdir()] == ["1.png"]


# --------------------------------------------------------------------------------------------
# progress and --quiet
# --------------------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_in_a_log_one_line_per_image_with_tiles(batch, ckpt, tmp_path, capsys, monkeypatch):
    rain, _ = batch
    monkeypatch.setattr(progress, "TILE_LINE_SECONDS", 0.0)
    code, out, err = run(capsys, "derain", rain, "--weights", ckpt, "--output", tmp_path / "out", "--tile", 8,
                         "--tile-overlap", 0)
    assert code == 0 and "\r" not in err
    done = [line for line in lines(err) if line.startswith("[") and "->" in line]
    assert len(done) == 3 and done[0].startswith("[1/3] ") and "ETA 0:" in done[0] and "ETA" not in done[2]
    assert "[2/3] 2.png: tile 1/6" in lines(err)  # 16x24 in 8x8 tiles: 2 x 3


def test_progress_on_a_terminal_is_a_bar(batch, ckpt, tmp_path, capsys, monkeypatch):
    rain, clean = batch
    (rain / "2.png").write_bytes(CORRUPT)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    code = cli.main([str(a) for a in ("derain", rain, "--weights", ckpt, "--output", tmp_path / "out", "--tile",
                                      8, "--tile-overlap", 0, "--skip-errors")])
    err = terminal.getvalue()
    assert code == 1
    assert "\r" in err and "derain" in err and "image" in err and "1.png: tile 4/4" in err  # 16x16 in 8x8 tiles
    assert "2/2" in err and not any(line.startswith("[1/") for line in err.splitlines())
    assert "skipped 2.png: cannot read image" in err and err.rstrip().endswith("2 written, 1 skipped (1 failed)")
    assert capsys.readouterr().out == f"wrote 2 image(s) to {tmp_path / 'out'}\n"


def test_quiet_prints_no_progress(batch, ckpt, tmp_path, capsys, monkeypatch):
    rain, clean = batch
    code, out, err = run(capsys, "derain", rain, "--weights", ckpt, "--output", tmp_path / "out", "--quiet")
    assert (code, err) == (0, "") and out == f"wrote 3 image(s) to {tmp_path / 'out'}\n"
    code, out, err = run(capsys, "eval", "--weights", ckpt, "--input", rain, "--target", clean, "-q")
    assert (code, err) == (0, "") and "mean of 3" in out
    code, out, err = run(capsys, "score", tmp_path / "out", clean, "--quiet")
    assert (code, err) == (0, "") and "mean of 3" in out
    (rain / "2.png").write_bytes(CORRUPT)  # errors still print
    code, out, err = run(capsys, "derain", rain, "--weights", ckpt, "--output", tmp_path / "o2", "--quiet",
                         "--skip-errors")
    assert code == 1 and lines(err) == [lines(err)[0], "2 written, 1 skipped (1 failed)"]
    assert lines(err)[0].startswith("skipped 2.png: ")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main(["eval", "--weights", str(ckpt), "--input", str(rain), "--target", str(clean), "--quiet"]) == 2
    assert terminal.getvalue().startswith("drsformer-fast: error: cannot read image")
    assert len(terminal.getvalue().splitlines()) == 1


def test_score_bar_on_a_terminal_only_when_it_takes_long(batch, tmp_path, capsys, monkeypatch):
    rain, clean = batch
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main(["score", str(rain), str(clean)]) == 0
    assert terminal.getvalue() == ""  # under a second: no bar
    real = progress.Progress

    def no_delay(*args, **kwargs):
        return real(*args, **{**kwargs, "delay": 0.0})

    monkeypatch.setattr(progress, "Progress", no_delay)
    assert cli.main(["score", str(rain), str(clean)]) == 0
    assert "score" in terminal.getvalue() and "3/3" in terminal.getvalue()
    assert "mean of 3" in capsys.readouterr().out
