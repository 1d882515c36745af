"""The paper's MATLAB protocols (``matlab-rain200``, ``matlab-did``) against GNU Octave running the
upstream scripts (figures in tests/data/matlab_reference.json, made once by
scripts/octave_reference.py) and against independent direct computations."""

import json
import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from matlab_images import reference_pairs, tie_colours
from PIL import Image

from drsformer_fast.images import metrics as M

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = json.loads((ROOT / "tests" / "data" / "matlab_reference.json").read_text())
PSNR_TOL, SSIM_TOL = 1e-4, 1e-5  # dB; SSIM units
MATLAB = ("matlab-rain200", "matlab-did")


def _value(v) -> float:
    return float(v)  # "Inf" / "-Inf" as Octave printed them


def _rand(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def pairs():
    return reference_pairs()


def test_generated_pairs_cover_what_can_go_wrong(pairs):
    assert set(pairs) == set(REFERENCE["images"])  # every generated pair has Octave figures
    shapes = {name: r.shape[:2] for name, (r, _) in pairs.items()}
    assert {M.downsampling_factor(*s) for s in shapes.values()} == {1, 2, 3}
    assert (11, 11) in shapes.values() and (10, 10) in shapes.values()
    assert any(h % 2 and w % 2 and M.downsampling_factor(h, w) > 1 for h, w in shapes.values())
    r, t = pairs["ties_20x20"]
    ties = {tuple(c) for c in tie_colours()}
    assert len(ties) == 194 and ties <= {tuple(c) for c in r.reshape(-1, 3)} & {tuple(c) for c in t.reshape(-1, 3)}
    for name, (r, t) in pairs.items():
        assert r.dtype == t.dtype == np.uint8 and REFERENCE["images"][name]["shape"] == list(r.shape[:2])


def test_generated_pairs_agree_with_octave(pairs):
    worst = {p: [0.0, 0.0] for p in MATLAB}
    failures = []
    for name, (result, target) in pairs.items():
        for protocol in MATLAB:
            ref = REFERENCE["images"][name][protocol]
            psnr, ssim = M.score_pair(result, target, protocol)
            if "error" in ref:
                # evaluate_PSNR_SSIM.m stops below 11x11: SSIM_index never sets its output
                assert protocol == "matlab-rain200" and "mssim" in ref["error"] and min(result.shape[:2]) < 11
                assert ssim == -math.inf and "stops with an error" in M.small_image_note(*result.shape[:2], protocol)
                continue
            for what, got, want, tol in (("psnr", psnr, _value(ref["psnr"]), PSNR_TOL),
                                         ("ssim", ssim, _value(ref["ssim"]), SSIM_TOL)):
                if math.isinf(want) or math.isinf(got):
                    ok, err = got == want, 0.0
                else:
                    err = abs(got - want)
                    ok = err <= tol
                    worst[protocol][what == "ssim"] = max(worst[protocol][what == "ssim"], err)
                if not ok:
                    failures.append(f"{name} {protocol} {what}: ours {got!r}, Octave {want!r}")
    print("max |dPSNR|, |dSSIM| vs Octave:", worst)
    assert not failures, "\n".join(failures)


def _shared_samples() -> Path | None:
    # beside the checkout (../shared), or beside the folder of git worktrees
    for base in (ROOT.parent, ROOT.parent.parent):
        if (base / "shared" / "upstream-samples" / "README.md").is_file():
            return base / "shared" / "upstream-samples"
    return None


def _readme_figures(folder: Path) -> list[tuple[Path, Path, list[float]]]:
    rows = []
    for line in (folder / "README.md").read_text().splitlines():
        m = re.fullmatch(r"\| (.+?) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", line.strip())
        if not m:
            continue
        label, figures = m.group(1), [float(m.group(i)) for i in range(2, 6)]
        if m2 := re.fullmatch(r"(Rain200H|Rain200L|SPA-Data) (\d+)\.png", label):
            d = folder / "rain200-protocol" / m2.group(1)
            rows.append((d / "results" / f"{m2.group(2)}.png", d / "targets" / f"{m2.group(2)}.png", figures))
        elif m2 := re.fullmatch(r"DID (\d+)_DR vs \d+_GT", label):
            d = folder / "did-protocol" / "results"
            rows.append((d / f"{m2.group(1)}_DR.png", d / f"{m2.group(1)}_GT.png", figures))
        elif m2 := re.fullmatch(r"Rain200H test input (\d+) vs target \d+", label):
            d = folder / "rain200h-test"
            rows.append((d / "input" / f"{m2.group(1)}.png", d / "target" / f"{m2.group(1)}.png", figures))
    return rows


@pytest.mark.skipif(_shared_samples() is None,
                    reason="the shared upstream samples (../shared/upstream-samples beside the checkout) are not here")
def test_shared_upstream_samples_agree_with_the_readme_figures():
    rows = _readme_figures(_shared_samples())
    assert len(rows) == 15
    worst = [0.0, 0.0]
    for result, target, (p_rain, s_rain, p_did, s_did) in rows:
        a, b = np.asarray(Image.open(result)), np.asarray(Image.open(target))
        for protocol, p_want, s_want in (("matlab-rain200", p_rain, s_rain), ("matlab-did", p_did, s_did)):
            psnr, ssim = M.score_pair(a, b, protocol)
            # the README prints 8 decimals: up to 5e-9 of its own rounding
            assert abs(psnr - p_want) <= PSNR_TOL, (result, protocol, psnr, p_want)
            assert abs(ssim - s_want) <= SSIM_TOL, (result, protocol, ssim, s_want)
            worst = [max(worst[0], abs(psnr - p_want)), max(worst[1], abs(ssim - s_want))]
    print("max |dPSNR|, |dSSIM| vs the README figures (8 decimals):", worst)


def test_uint8_y_is_the_exact_value_rounded_half_away_from_zero():
    img = _rand(13, 17, 0)
    got = M.matlab_rgb2y_uint8(img)
    assert got.dtype == np.uint8 and got.shape == (13, 17)
    for (i, j), y in np.ndenumerate(got):
        r, g, b = map(int, img[i, j])
        exact = 16 + Fraction(65481 * r + 128553 * g + 24966 * b, 255000)
        if exact.denominator != 2:  # not a tie: no freedom
            assert y == math.floor(exact + Fraction(1, 2)), (i, j, img[i, j])
    flat = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    assert M.matlab_rgb2y_uint8(flat).tolist() == [[16, 235, 81, 145, 41]]  # 16 + 65.481 -> 81, 16 + 24.966 -> 41


def test_tie_colours_round_as_octave_computes_them():
    ties = tie_colours()
    y = M.matlab_rgb2y_uint8(ties[None]).astype(int)[0]
    exact_up = np.array([16 + (65481 * int(r) + 128553 * int(g) + 24966 * int(b) + 127500) // 255000
                         for r, g, b in ties])
    down = ties[y != exact_up]
    assert np.all((y == exact_up) | (y == exact_up - 1))
    assert len(down) == 4  # Octave 7.3 + OpenBLAS (FMA): 4 of the 194 round down; ties_20x20 checks them


def test_double_y_is_im2double_then_bt601():
    img = _rand(5, 6, 1)
    x = img.astype(np.float64) / 255
    want = (16 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255
    np.testing.assert_allclose(M.matlab_rgb2y_double(img), want, rtol=0, atol=1e-15)


def test_downsampling_factor_rounds_halves_up():
    assert [M.downsampling_factor(n, 1000) for n in (11, 383, 384, 639, 640, 895, 896)] == [1, 1, 2, 2, 3, 3, 4]
    assert M.downsampling_factor(1000, 384) == 2


def _mirror(i: int, n: int) -> int:
    """MATLAB 'symmetric' padding: ... 1 0 | 0 1 ... n-1 | n-1 n-2 ..."""
    while i < 0 or i >= n:
        i = -1 - i if i < 0 else 2 * n - 1 - i
    return i


@pytest.mark.parametrize("f", [2, 3, 4])
def test_box_filter_is_imfilter_symmetric_same_with_matlab_centring(f):
    img = np.random.default_rng(f).normal(size=(7, 9)) * 50
    centre = (f + 1) // 2 - 1  # MATLAB's kernel centre floor((f + 1) / 2), 0-based
    want = np.zeros_like(img)
    for i in range(7):
        for j in range(9):
            want[i, j] = np.mean([img[_mirror(i + di - centre, 7), _mirror(j + dj - centre, 9)]
                                  for di in range(f) for dj in range(f)])
    np.testing.assert_allclose(M.imfilter_box_symmetric(img, f), want, rtol=0, atol=1e-12)


def test_gaussian_window_and_filter2_valid():
    h = M.fspecial_gaussian()
    g = M.gaussian_window()
    np.testing.assert_allclose(h, np.outer(g, g), rtol=0, atol=1e-17)
    assert h.sum() == pytest.approx(1, abs=1e-15)
    img = np.random.default_rng(2).normal(size=(14, 12))
    want = np.array([[np.sum(h * img[i:i + 11, j:j + 11]) for j in range(2)] for i in range(4)])
    np.testing.assert_allclose(M.filter2_valid(img), want, rtol=0, atol=1e-13)


def test_ssim_auto_downsample_is_the_gaussian_ssim_of_the_subsampled_box_filtered_images():
    rng = np.random.default_rng(3)
    a = rng.normal(120, 30, (390, 397))
    b = a + rng.normal(0, 10, a.shape)
    f = 2
    want = M.ssim_index_2003(M.imfilter_box_symmetric(a, f)[::f, ::f], M.imfilter_box_symmetric(b, f)[::f, ::f])
    assert M.ssim_auto_downsample(a, b) == want
    assert M.ssim_auto_downsample(a[:383], b[:383]) == M.ssim_index_2003(a[:383], b[:383])  # f = 1


def test_small_images_give_minus_inf_ssim_and_say_so():
    a, b = _rand(10, 30, 4), _rand(10, 30, 5)
    for protocol in MATLAB:
        psnr, ssim = M.score_pair(a, b, protocol)
        assert ssim == -math.inf and math.isfinite(psnr)
        assert "-Inf" in M.small_image_note(10, 30, protocol)
    assert M.small_image_note(11, 11, "matlab-did") is None
    with pytest.raises(ValueError, match="at least 11x11"):
        M.score_pair(a, b, "basicsr")


def test_identical_images_and_psnr_peaks():
    a = _rand(12, 12, 6)
    for protocol in M.PROTOCOLS:
        assert M.score_pair(a, a, protocol) == (math.inf, 1.0)
    b = a.copy()
    b[..., :] = np.clip(a.astype(int) + 1, 0, 255)  # not every pixel: the clipped ones stay
    ya, yb = M.matlab_rgb2y_double(a), M.matlab_rgb2y_double(b)
    assert M.psnr_matlab_did(b, a) == pytest.approx(10 * math.log10(1 / np.mean((ya - yb) ** 2)), abs=1e-12)
    ua, ub = M.matlab_rgb2y_uint8(a).astype(float), M.matlab_rgb2y_uint8(b).astype(float)
    assert M.psnr_matlab_rain200(b, a) == pytest.approx(10 * math.log10(255**2 / np.mean((ua - ub) ** 2)), abs=1e-12)


def test_basicsr_protocol_is_the_existing_metrics():
    a, b = _rand(16, 15, 7), _rand(16, 15, 8)
    assert M.score_pair(a, b, "basicsr") == (M.calculate_psnr(a, b), M.calculate_ssim(a, b))


def test_bad_inputs():
    a = _rand(12, 12, 9)
    with pytest.raises(ValueError, match="8-bit RGB"):
        M.score_pair(a.astype(np.float64), a, "matlab-rain200")
    with pytest.raises(ValueError, match="8-bit RGB"):
        M.score_pair(a[..., 0], a[..., 0], "matlab-did")
    with pytest.raises(ValueError, match="shapes differ"):
        M.score_pair(a, a[:-1], "matlab-did")
    with pytest.raises(ValueError, match="unknown protocol"):
        M.score_pair(a, a, "matlab")
