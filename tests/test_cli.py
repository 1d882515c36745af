"""`drsformer-fast derain` and `drsformer-fast eval`, end to end on tiny checkpoints and images; the
command's --version, help texts and `python -m drsformer_fast`."""

import importlib.metadata
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from imaging import direct_derain, psnr_y, random_image, read_uint8, ssim_direct, tiny_checkpoint

from drsformer_fast import cli, load_checkpoint
from drsformer_fast.images.imageio import read_image
from drsformer_fast.images.inference import derain_tensor
from drsformer_fast.images.metrics import rgb_to_y

pytestmark = pytest.mark.usefixtures("one_thread", "torch_path")


SIZES = {"rain-2.png": (37, 29), "rain-10.jpg": (20, 44), "Rain-3.BMP": (24, 17)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ckpt = tiny_checkpoint(root / "net.pth", seed=0)
    rainy = root / "rainy"
    clean = root / "clean"
    rainy.mkdir()
    clean.mkdir()
    for i, (name, (h, w)) in enumerate(SIZES.items()):
        random_image(rainy / name, h, w, seed=i)
        random_image(clean / (name.rsplit(".", 1)[0] + ".png"), h, w, seed=100 + i)
    (rainy / "notes.txt").write_text("not an image\n")
    return root, ckpt, rainy, clean


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *needles):
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("drsformer-fast: error: ")
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def test_derain_folder_writes_pngs_equal_to_the_model_output(data, tmp_path, capsys):
    root, ckpt, rainy, _ = data
    code, out, err = run(capsys, "derain", rainy, "--weights", ckpt, "--output", tmp_path / "out", "--device", "cpu")
    assert code == 0, err
    assert "wrote 3 image(s)" in out
    assert "[1/3]" in err and "[3/3]" in err
    model = load_checkpoint(ckpt)  # what the command builds: the fast model
    for name, (h, w) in SIZES.items():
        png = tmp_path / "out" / (name.rsplit(".", 1)[0] + ".png")
        got = read_uint8(png)
        assert got.shape == (h, w, 3)
        expected = direct_derain(model, read_image(rainy / name)[None])[0].permute(1, 2, 0).numpy() * 255
        assert np.abs(got - expected).max() <= 0.5 + 1e-4  # the PNG holds the output rounded to uint8
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Rain-3.png", "rain-10.png", "rain-2.png"]


def test_derain_files_with_tiles(data, tmp_path, capsys):
    root, ckpt, rainy, _ = data
    code, _, err = run(capsys, "derain", rainy / "rain-2.png", rainy / "rain-10.jpg", "--weights", ckpt,
                       "--output", tmp_path, "--tile", 24, "--tile-overlap", 8)
    assert code == 0, err
    model = load_checkpoint(ckpt)  # what the command builds: the fast model
    for name in ("rain-2.png", "rain-10.jpg"):
        tiled = derain_tensor(model, read_image(rainy / name)[None], tile=24, tile_overlap=8)[0]
        expected = tiled.permute(1, 2, 0).numpy() * 255
        assert np.abs(read_uint8(tmp_path / (name.rsplit(".", 1)[0] + ".png")) - expected).max() <= 0.5 + 1e-4


def test_derain_user_errors(data, tmp_path, capsys):
    root, ckpt, rainy, _ = data
    out = tmp_path / "out"
    code, _, err = run(capsys, "derain", rainy, "--weights", tmp_path / "absent.pth", "--output", out)
    assert_user_error(code, err, "checkpoint not found", "absent.pth")

    bad = tmp_path / "bad.pth"
    sd = torch.load(ckpt, weights_only=True)["params"]
    del sd["output.weight"], sd["latent.0.ffn.project_out.weight"]
    torch.save({"params": sd}, bad)
    code, _, err = run(capsys, "derain", rainy, "--weights", bad, "--output", out)
    assert_user_error(code, err, "output.weight")

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00\x01 not a checkpoint")
    code, _, err = run(capsys, "derain", rainy, "--weights", junk, "--output", out)
    assert_user_error(code, err, "junk.pth is not a PyTorch checkpoint")
    text = tmp_path / "notes.pth"
    text.write_text("weights are elsewhere\n")
    code, _, err = run(capsys, "derain", rainy, "--weights", text, "--output", out)
    assert_user_error(code, err, "notes.pth is not a PyTorch checkpoint (it is text: 'weights are elsewhere'")
    assert "weights_only" not in err

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    code, _, err = run(capsys, "derain", broken, "--weights", ckpt, "--output", out)
    assert_user_error(code, err, "cannot read image", "broken.png")

    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "derain", empty, "--weights", ckpt, "--output", out)
    assert_user_error(code, err, "no images")

    code, _, err = run(capsys, "derain", rainy / "notes.txt", "--weights", ckpt, "--output", out)
    assert_user_error(code, err, "not a supported image type")

    code, _, err = run(capsys, "derain", rainy, "--weights", ckpt, "--output", out, "--tile", 20)
    assert_user_error(code, err, "multiple of 8", "20")

    code, _, err = run(capsys, "derain", rainy, "--weights", ckpt, "--output", out, "--device", "cpu",
                       "--precision", "fp16")
    assert_user_error(code, err, "fp16 needs a CUDA device")

    code, _, err = run(capsys, "derain", rainy, "--weights", ckpt, "--output", out, "--use-ema")
    assert_user_error(code, err, "params_ema")

    code, _, err = run(capsys, "derain", rainy, "--weights", ckpt, "--output", rainy)
    assert_user_error(code, err, "overwrite an input")
    assert not out.exists()  # every error above came before anything was written


def test_derain_refuses_two_inputs_with_one_output_name(data, tmp_path, capsys):
    root, ckpt, rainy, _ = data
    other = tmp_path / "other"
    other.mkdir()
    random_image(other / "rain-2.jpg", 16, 16, seed=9)
    code, _, err = run(capsys, "derain", rainy, other, "--weights", ckpt, "--output", tmp_path / "out")
    assert_user_error(code, err, "rain-2.png", "both")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_derain_cuda_without_a_gpu(data, tmp_path, capsys):
    root, ckpt, rainy, _ = data
    code, _, err = run(capsys, "derain", rainy, "--weights", ckpt, "--output", tmp_path, "--device", "cuda")
    assert_user_error(code, err, "no CUDA device")


def test_eval_reports_psnr_ssim_and_json(data, tmp_path, capsys):
    root, ckpt, rainy, clean = data
    report_path = tmp_path / "report.json"
    code, out, err = run(capsys, "eval", "--weights", ckpt, "--input", rainy, "--target", clean, "--json",
                         report_path, "--device", "cpu", "--protocol", "basicsr")  # the helpers compute BasicSR's
    assert code == 0, err
    first = err.splitlines()[0]
    assert first.startswith("drsformer-fast eval: ") and first.endswith(", protocol basicsr")
    report = json.loads(report_path.read_text())
    assert report["count"] == 3 and report["config"]["dim"] == 8 and report["precision"] == "fp32"
    assert report["protocol"] == "basicsr" and "BasicSR" in report["metrics"]
    assert [r["name"] for r in report["images"]] == ["rain-2.png", "Rain-3.BMP", "rain-10.jpg"]  # natural order
    model = load_checkpoint(ckpt)  # what the command builds: the fast model
    for row in report["images"]:
        restored = direct_derain(model, read_image(rainy / row["name"])[None])[0]
        restored = (restored * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        target = read_uint8(clean / row["target"])
        assert row["psnr"] == pytest.approx(psnr_y(restored, target), abs=1e-4)
        ya, yb = (rgb_to_y(a).astype(np.float64) for a in (restored, target))
        assert row["ssim"] == pytest.approx(ssim_direct(ya, yb), rel=1e-9)
    assert report["mean"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in report["images"]]), rel=1e-12)
    assert report["mean"]["ssim"] == pytest.approx(np.mean([r["ssim"] for r in report["images"]]), rel=1e-12)
    assert "parity" not in report
    assert "mean of 3" in out and "rain-10.jpg" in out


def test_eval_against_its_own_outputs_is_perfect(data, tmp_path, capsys):
    root, ckpt, rainy, _ = data
    assert run(capsys, "derain", rainy, "--weights", ckpt, "--output", tmp_path / "out")[0] == 0
    code, out, err = run(capsys, "eval", "--weights", ckpt, "--input", rainy, "--target", tmp_path / "out",
                         "--json", tmp_path / "r.json")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert all(r["psnr"] == "inf" and r["ssim"] == 1.0 for r in report["images"])
    assert report["mean"] == {"psnr": "inf", "ssim": 1.0}


def test_eval_compare_reference(data, tmp_path, capsys):
    root, ckpt, rainy, clean = data
    code, out, err = run(capsys, "eval", "--weights", ckpt, "--input", rainy, "--target", clean,
                         "--compare-reference", "--tile", 16, "--tile-overlap", 8, "--json", tmp_path / "r.json")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    diffs = [r["max_abs_diff"] for r in report["images"]]
    assert len(diffs) == 3 and all(0 <= d < 1e-4 for d in diffs)
    assert report["parity"]["max_abs_diff"] == max(diffs)
    assert report["parity"]["reference_model"] == "drsformer_fast.reference.DRSformer"
    assert report["tile"] == 16
    assert "parity: max |fast - reference (fp32)|" in out
    assert math.isfinite(report["mean"]["psnr"])


def test_eval_user_errors(data, tmp_path, capsys):
    root, ckpt, rainy, clean = data
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "rain-2.png").write_bytes((clean / "rain-2.png").read_bytes())
    code, _, err = run(capsys, "eval", "--weights", ckpt, "--input", rainy, "--target", partial)
    assert_user_error(code, err, "2 of 3 input images have no target", "rain-10.jpg", "Rain-3.BMP")

    code, _, err = run(capsys, "eval", "--weights", ckpt, "--input", rainy, "--target", clean, "--json",
                       tmp_path / "nowhere" / "r.json")
    assert_user_error(code, err, "folder of --json")

    code, out, err = run(capsys, "eval", "--weights", tmp_path / "absent.pth", "--input", rainy, "--target", clean,
                         "--json", tmp_path)  # refused before the checkpoint is even looked at
    assert (code, out, err) == (2, "", f"drsformer-fast: error: --json {tmp_path} is a folder; give a file path\n")

    code, _, err = run(capsys, "eval", "--weights", ckpt, "--input", rainy, "--target", tmp_path / "nowhere")
    assert_user_error(code, err, "target folder not found")

    code, _, err = run(capsys, "eval", "--weights", ckpt, "--input", tmp_path / "nowhere", "--target", clean)
    assert_user_error(code, err, "input folder not found")

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for name in ("rain-2", "rain-10", "Rain-3"):
        random_image(wrong / f"{name}.png", 30, 30, seed=1)
    code, _, err = run(capsys, "eval", "--weights", ckpt, "--input", rainy, "--target", wrong)
    assert_user_error(code, err, "its target", "30x30")


def test_selfcheck_and_bench_are_still_there():
    parser = cli.build_parser()
    assert parser.parse_args(["selfcheck"]).command == "selfcheck"
    assert parser.parse_args(["bench"]).command == "bench"


def help_text(capsys, *argv) -> str:
    """The --help of a subcommand, whitespace collapsed (argparse wraps the lines)."""
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--help"])
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_eval_help_names_the_default_protocol(capsys):
    text = help_text(capsys, "eval")
    assert "matlab-rain200 (default;" in text and "basicsr (default" not in text


def test_train_help(capsys):
    text = help_text(capsys, "train")
    assert "--compile train the model compiled with torch.compile" in text


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"drsformer-fast {importlib.metadata.version('drsformer-fast')}\n"


def test_version_without_installed_metadata(capsys, monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"$', pyproject, re.MULTILINE).group(1)
    assert capsys.readouterr().out == f"drsformer-fast {version}\n"


def test_python_dash_m_is_the_command(tmp_path):
    """`python -m drsformer_fast` runs cli.main: its output and exit codes, and --version loads no torch."""
    code = ("import runpy, sys; sys.argv = ['drsformer-fast', '--version']\n"
            "try:\n    runpy.run_module('drsformer_fast', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as exc:\n    print(exc.code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.stdout == f"drsformer-fast {importlib.metadata.version('drsformer-fast')}\n0 False\n", done.stderr
    done = subprocess.run([sys.executable, "-m", "drsformer_fast", "--version"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("drsformer-fast "), done.stderr
    done = subprocess.run([sys.executable, "-m", "drsformer_fast", "score", "nowhere", "nowhere"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("drsformer-fast: error: "), done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stdout == ""


def test_pyproject_license_and_classifiers():
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).parents[1]
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["license"] == "MIT"  # an SPDX expression (PEP 639); the table form is deprecated
    assert meta["build-system"]["requires"] == ["setuptools>=77"]  # the first to take the SPDX string
    assert project["license-files"] == ["LICENSE"]
    assert (root / "LICENSE").read_text().startswith("MIT License\n\nCopyright (c) the drsformer-fast authors\n")
    assert not any(c.startswith("License ::") for c in project["classifiers"])  # not with an SPDX license
    assert {"Programming Language :: Python :: 3.10", "Programming Language :: Python :: 3.12",
            "Topic :: Scientific/Engineering :: Image Processing"} <= set(project["classifiers"])
    assert project["urls"] == {"Upstream model": "https://github.com/cschenxiang/DRSformer"}


def test_derain_replays_cuda_graphs_where_the_device_has_them(data, tmp_path, capsys, monkeypatch):
    """On a GPU derain and eval call the model through ``graphs.graphed`` (tiles: one graph for all);
    here a stand-in capture backend serves the CPU, and the images equal eager mode's."""
    from test_graphs import StandIn

    from drsformer_fast import graphs

    root, ckpt, rainy, _ = data
    made = []

    def graphed(model):
        made.append(graphs.GraphedModule(model.eval(), backend=StandIn()))
        return made[-1]

    monkeypatch.setattr(cli, "_use_graphs", lambda device, args: not args.no_cuda_graphs)
    monkeypatch.setattr(graphs, "graphed", graphed)
    code, _, err = run(capsys, "derain", rainy / "rain-2.png", "--weights", ckpt, "--output", tmp_path / "g",
                       "--tile", 24, "--tile-overlap", 8)
    assert code == 0, err
    assert ", CUDA graphs" in err.splitlines()[0]
    assert len(made) == 1 and made[0].stats["captures"] == 1 and made[0].stats["replays"] >= 1
    code, _, err = run(capsys, "derain", rainy / "rain-2.png", "--weights", ckpt, "--output", tmp_path / "e",
                       "--tile", 24, "--tile-overlap", 8, "--no-cuda-graphs")
    assert code == 0, err
    assert "CUDA graphs" not in err and len(made) == 1
    assert np.array_equal(read_uint8(tmp_path / "g" / "rain-2.png"), read_uint8(tmp_path / "e" / "rain-2.png"))


def test_runner_is_graphed_on_cuda_only():
    from drsformer_fast.graphs import GraphedModule

    model = torch.nn.Conv2d(3, 3, 1)
    on, off = cli.build_parser().parse_args(["derain", "x", "-o", "y", "--weights", "w"]), \
        cli.build_parser().parse_args(["derain", "x", "-o", "y", "--weights", "w", "--no-cuda-graphs"])
    assert isinstance(cli._runner(model, torch.device("cuda"), on), GraphedModule)
    assert cli._runner(model, torch.device("cuda"), off) is model
    assert cli._runner(model, torch.device("cpu"), on) is model
