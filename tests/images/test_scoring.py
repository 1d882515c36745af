"""`drsformer-fast score` (existing results against targets, no model) and `eval --protocol`."""

import json
import math
import struct
import zlib

import numpy as np
import pytest
import torch
from imaging import direct_derain, random_image, tiny_checkpoint
from PIL import Image

from drsformer_fast import cli, load_checkpoint
from drsformer_fast.images.imageio import read_image
from drsformer_fast.images.metrics import PROTOCOLS, score_pair


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles, progress_before=False):
    """Exit code 2 and one line of error (after eval's progress lines when ``progress_before``)."""
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert (progress_before or len(lines) == 1) and lines[-1].startswith("drsformer-fast: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def _pair(folder_r, name_r, folder_t, name_t, h, w, seed):
    target = random_image(folder_t / name_t, h, w, seed=seed)
    noisy = np.clip(target.astype(int) + np.random.default_rng(seed + 50).integers(-9, 10, target.shape), 0, 255)
    Image.fromarray(noisy.astype(np.uint8)).save(folder_r / name_r)
    return noisy.astype(np.uint8), target


@pytest.fixture
def did_style(tmp_path):
    """results/<n>_DR.png against targets/<n>_GT.png (n = 1, 2, 10), odd sizes."""
    res, tgt = tmp_path / "results", tmp_path / "targets"
    res.mkdir()
    tgt.mkdir()
    arrays = {}
    for i, (n, (h, w)) in enumerate({"1": (23, 31), "2": (40, 17), "10": (12, 15)}.items()):
        arrays[f"{n}_DR.png"] = _pair(res, f"{n}_DR.png", tgt, f"{n}_GT.png", h, w, seed=i)
    (res / "notes.txt").write_text("not an image: ignored\n")
    return res, tgt, arrays


def test_protocol_choices_are_the_metrics_protocols():
    assert cli.PROTOCOL_CHOICES == tuple(PROTOCOLS)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_score_by_name_table_and_json(did_style, tmp_path, capsys, protocol):
    res, tgt, arrays = did_style
    path = tmp_path / "score.json"
    code, out, err = run(capsys, "score", res, tgt, "--protocol", protocol, "--json", path)
    assert code == 0, err
    report = json.loads(path.read_text())
    assert report["protocol"] == protocol
    assert [r["name"] for r in report["images"]] == ["1_DR.png", "2_DR.png", "10_DR.png"]
    for row in report["images"]:
        assert set(row) >= {"name", "psnr", "ssim"} and row["target"] == row["name"].replace("_DR", "_GT")
        want = score_pair(*arrays[row["name"]], protocol)
        assert (row["psnr"], row["ssim"]) == pytest.approx(want, rel=0, abs=1e-12)
    assert report["mean"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in report["images"]]), abs=1e-12)
    assert report["mean"]["ssim"] == pytest.approx(np.mean([r["ssim"] for r in report["images"]]), abs=1e-12)
    assert out.splitlines()[0].startswith(f"protocol: {protocol}: ")
    assert "mean of 3" in out and "10_DR.png" in out


def test_score_default_protocol_is_the_rain200_script(did_style, capsys):
    res, tgt, _ = did_style
    code, out, err = run(capsys, "score", res, tgt)
    assert code == 0, err
    assert out.startswith("protocol: matlab-rain200: evaluate_PSNR_SSIM.m")


def test_score_pair_by_order_follows_matlab_dir(tmp_path, capsys):
    res, tgt = tmp_path / "r", tmp_path / "t"
    res.mkdir()
    tgt.mkdir()
    # dir order: *.jpg first, then *.png, each by character code ('10' < '2', 'B' < 'a')
    arrays = {}
    for name_r, name_t, seed in (("2.png", "a.png", 1), ("10.png", "B.png", 2), ("z.jpg", "q.jpg", 3)):
        arrays[name_r] = _pair(res, name_r, tgt, name_t, 16, 21, seed)
        if name_r.endswith(".jpg"):  # JPEG is lossy: score what was stored
            arrays[name_r] = tuple(np.asarray(Image.open(d / n)) for d, n in ((res, name_r), (tgt, name_t)))
    path = tmp_path / "s.json"
    code, out, err = run(capsys, "score", res, tgt, "--pair-by", "order", "--protocol", "matlab-did", "--json", path)
    assert code == 0, err
    report = json.loads(path.read_text())
    assert [(r["name"], r["target"]) for r in report["images"]] == [("z.jpg", "q.jpg"), ("10.png", "B.png"),
                                                                     ("2.png", "a.png")]
    for row in report["images"]:
        assert (row["psnr"], row["ssim"]) == pytest.approx(score_pair(*arrays[row["name"]], "matlab-did"), abs=1e-12)
    code, _, err = run(capsys, "score", res, tgt)  # by name these do not pair
    assert_one_line_error(code, err, "3 of 3 results have no target", "--pair-by order")


def test_score_one_folder_with_dr_and_gt_as_the_did_script_reads(did_style, tmp_path, capsys):
    res, tgt, arrays = did_style
    for f in tgt.iterdir():
        f.rename(res / f.name)
    path = tmp_path / "s.json"
    code, out, err = run(capsys, "score", res, res, "--protocol", "matlab-did", "--json", path)
    assert code == 0, err
    report = json.loads(path.read_text())
    assert [(r["name"], r["target"]) for r in report["images"]] == [
        ("1_DR.png", "1_GT.png"), ("2_DR.png", "2_GT.png"), ("10_DR.png", "10_GT.png")]
    code, _, err = run(capsys, "score", res, res, "--pair-by", "order")
    assert code == 0, err
    (res / "extra.png").write_bytes((res / "1_DR.png").read_bytes())
    code, _, err = run(capsys, "score", res, res)
    assert_one_line_error(code, err, "one folder", "extra.png", "_DR", "_GT")


def test_score_small_image_reports_minus_inf_ssim_with_a_note(tmp_path, capsys):
    res, tgt = tmp_path / "r", tmp_path / "t"
    res.mkdir()
    tgt.mkdir()
    _pair(res, "a.png", tgt, "a.png", 10, 14, 4)
    _pair(res, "b.png", tgt, "b.png", 12, 12, 5)
    for protocol in ("matlab-rain200", "matlab-did"):
        path = tmp_path / f"{protocol}.json"
        code, out, err = run(capsys, "score", res, tgt, "--protocol", protocol, "--json", path)
        assert code == 0, err
        report = json.loads(path.read_text())
        assert report["images"][0]["ssim"] == "-inf" and report["mean"]["ssim"] == "-inf"
        assert math.isfinite(report["images"][0]["psnr"]) and math.isfinite(report["images"][1]["ssim"])
        assert "note: a.png: 10x14 is smaller than the 11x11 SSIM window" in err
        assert "-inf" in out
    code, _, err = run(capsys, "score", res, tgt, "--protocol", "basicsr")
    assert_one_line_error(code, err, "a.png", "smaller than the 11x11")


def test_score_identical_images(did_style, capsys, tmp_path):
    res, _, _ = did_style
    path = tmp_path / "s.json"
    code, out, err = run(capsys, "score", res, res.parent / "results", "--pair-by", "order", "--json", path)
    assert_one_line_error(code, err, "one folder", "holds no targets")  # one folder: _DR files need _GT partners
    other = tmp_path / "copy"
    other.mkdir()
    for f in res.glob("*.png"):
        (other / f.name).write_bytes(f.read_bytes())
    code, out, err = run(capsys, "score", res, other, "--json", path)
    assert code == 0, err
    report = json.loads(path.read_text())
    assert all(r["psnr"] == "inf" and r["ssim"] == 1.0 for r in report["images"])
    assert report["mean"] == {"psnr": "inf", "ssim": 1.0}


def test_score_rgba_drops_alpha_with_a_note_grey_and_palette_are_refused(did_style, tmp_path, capsys):
    res, tgt, arrays = did_style
    rgba = np.concatenate([arrays["2_DR.png"][0], np.full((40, 17, 1), 77, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(res / "2_DR.png")
    path = tmp_path / "s.json"
    code, out, err = run(capsys, "score", res, tgt, "--json", path)
    assert code == 0, err
    assert "note: 2_DR.png has an alpha channel: ignored" in err
    row = json.loads(path.read_text())["images"][1]
    assert (row["psnr"], row["ssim"]) == pytest.approx(score_pair(*arrays["2_DR.png"], "matlab-rain200"), abs=1e-12)

    Image.fromarray(arrays["1_DR.png"][1][..., 0]).save(tgt / "1_GT.png")  # grayscale target
    for protocol in ("matlab-rain200", "matlab-did"):
        code, _, err = run(capsys, "score", res, tgt, "--protocol", protocol)
        assert_one_line_error(code, err, "1_GT.png", "grayscale", "3-channel", "--protocol basicsr")
    code, _, err = run(capsys, "score", res, tgt, "--protocol", "basicsr")  # BasicSR repeats grey into RGB
    assert code == 0, err
    Image.fromarray(arrays["1_DR.png"][0]).convert("P").save(res / "1_DR.png")
    code, _, err = run(capsys, "score", res, tgt, "--protocol", "matlab-did")
    assert_one_line_error(code, err, "1_DR.png", "palette")
    Image.fromarray(arrays["1_DR.png"][1][..., 0].astype(np.uint16) * 257).save(res / "1_DR.png")  # 16-bit grey
    code, _, err = run(capsys, "score", res, tgt, "--protocol", "matlab-rain200")
    assert_one_line_error(code, err, "1_DR.png is a 16-bit grayscale image")
    _write_rgb16(res / "1_DR.png", arrays["1_DR.png"][1].astype(np.uint16) * 257)  # Pillow would read it as RGB
    code, _, err = run(capsys, "score", res, tgt, "--protocol", "matlab-rain200")
    assert_one_line_error(code, err, "1_DR.png is a 16-bit RGB image")


def _write_rgb16(path, arr):
    """A 16-bit RGB PNG (Pillow cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_score_user_errors(did_style, tmp_path, capsys):
    res, tgt, _ = did_style
    code, _, err = run(capsys, "score", tmp_path / "nowhere", tgt)
    assert_one_line_error(code, err, "results folder", "nowhere", "not found")
    code, _, err = run(capsys, "score", res, tmp_path / "nowhere")
    assert_one_line_error(code, err, "targets folder", "not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here\n")
    code, _, err = run(capsys, "score", empty, tgt)
    assert_one_line_error(code, err, "no images", "results folder", "empty")
    code, _, err = run(capsys, "score", res, res / "1_DR.png")
    assert_one_line_error(code, err, "is not a folder")

    (tgt / "10_GT.png").rename(tmp_path / "10_GT.png")  # a result without a target
    code, _, err = run(capsys, "score", res, tgt)
    assert_one_line_error(code, err, "1 of 3 results have no target", "10_DR.png")
    code, _, err = run(capsys, "score", res, tgt, "--pair-by", "order")
    assert_one_line_error(code, err, "3 results but 2 targets", "results without a target")
    (tmp_path / "10_GT.png").rename(tgt / "10_GT.png")
    (res / "2_DR.png").rename(tmp_path / "2_DR.png")  # a target without a result
    code, _, err = run(capsys, "score", res, tgt)
    assert_one_line_error(code, err, "1 of 3 targets have no result", "2_GT.png")
    (tmp_path / "2_DR.png").rename(res / "2_DR.png")

    (res / "2.png").write_bytes((res / "2_DR.png").read_bytes())  # two results pair with 2_GT
    code, _, err = run(capsys, "score", res, tgt)
    assert_one_line_error(code, err, "2.png", "2_DR.png", "both pair")
    (res / "2.png").unlink()

    random_image(tgt / "10_GT.png", 13, 15, seed=7)  # sizes differ
    code, _, err = run(capsys, "score", res, tgt, "--protocol", "matlab-did")
    assert_one_line_error(code, err, "10_DR.png is 12x15", "10_GT.png is 13x15")
    random_image(tgt / "10_GT.png", 12, 15, seed=7)

    (res / "2_DR.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png at all")  # not an image
    for protocol in PROTOCOLS:
        code, _, err = run(capsys, "score", res, tgt, "--protocol", protocol)
        assert_one_line_error(code, err, "cannot read image", "2_DR.png")
    random_image(res / "2_DR.png", 40, 17, seed=8)

    code, _, err = run(capsys, "score", res, tgt, "--json", tmp_path / "nowhere" / "s.json")
    assert_one_line_error(code, err, "folder of --json")
    code, out, err = run(capsys, "score", res, tgt, "--json", tmp_path)
    assert (code, out, err) == (2, "", f"drsformer-fast: error: --json {tmp_path} is a folder; give a file path\n")
    assert run(capsys, "score", res, tgt)[0] == 0  # everything restored


@pytest.mark.usefixtures("one_thread", "torch_path")
def test_eval_protocol(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "net.pth", seed=0)
    rainy, clean = tmp_path / "rainy", tmp_path / "clean"
    rainy.mkdir()
    clean.mkdir()
    for i, (h, w) in enumerate(((21, 26), (10, 13))):
        random_image(rainy / f"{i}.png", h, w, seed=i)
        random_image(clean / f"{i}.png", h, w, seed=10 + i)
    model = load_checkpoint(ckpt)
    for protocol in PROTOCOLS:
        path = tmp_path / f"{protocol}.json"
        code, out, err = run(capsys, "eval", "--weights", ckpt, "--input", rainy, "--target", clean,
                             "--protocol", protocol, "--json", path, "--device", "cpu")
        if protocol == "basicsr":  # BasicSR's SSIM has no value below 11x11
            assert_one_line_error(code, err, "1.png", "at least 11x11", progress_before=True)
            continue
        assert code == 0, err
        report = json.loads(path.read_text())
        assert report["protocol"] == protocol and PROTOCOLS[protocol] in report["metrics"]
        assert out.splitlines()[0] == f"protocol: {protocol}: {PROTOCOLS[protocol]}"
        assert "note: 1.png: 10x13 is smaller than the 11x11 SSIM window" in err
        for row in report["images"]:
            restored = direct_derain(model, read_image(rainy / row["name"])[None])[0]
            out8 = (restored * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            psnr, ssim = score_pair(out8, np.asarray(Image.open(clean / row["target"])), protocol)
            assert row["psnr"] == pytest.approx(psnr, abs=1e-4)
            assert row["ssim"] == ("-inf" if ssim == -math.inf else pytest.approx(ssim, abs=1e-6))
        assert report["mean"]["ssim"] == "-inf"
    (clean / "1.png").unlink()
    (rainy / "1.png").unlink()
    path = tmp_path / "default.json"
    code, out, err = run(capsys, "eval", "--weights", ckpt, "--input", rainy, "--target", clean, "--device", "cpu",
                         "--json", path)
    assert code == 0, err
    assert out.startswith("protocol: matlab-rain200: ")  # the paper's protocol, as score's default
    assert err.splitlines()[0].startswith("drsformer-fast eval: ")
    assert err.splitlines()[0].endswith(", protocol matlab-rain200")
    assert json.loads(path.read_text())["protocol"] == "matlab-rain200"
