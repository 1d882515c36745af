"""PSNR and SSIM as deraining papers compute them, in numpy: three protocols.

``basicsr`` (:func:`calculate_psnr`, :func:`calculate_ssim`): BasicSR's ``calculate_psnr`` /
``calculate_ssim`` with ``test_y_channel=True``, ``crop_border=0``, what ``drsformer-fast eval``
reports by default. Images are ``[H, W, 3]`` RGB arrays on the [0, 255] scale (uint8, or floats
such as a model output times 255).

``matlab-rain200`` and ``matlab-did``: the two MATLAB scripts of the original DRSformer repository
that produced the paper's table (see :data:`PROTOCOLS` and the functions of each protocol below).
They take 8-bit ``[H, W, 3]`` RGB images (uint8), as the scripts read them with ``imread``.

BasicSR's conventions
---------------------
Y channel, as BasicSR's ``to_y_channel``: ``x = float32(img) / 255``, then
``Y = 16 + (65.481 R + 128.553 G + 24.966 B)`` (ITU-R BT.601, the coefficients of MATLAB's
``rgb2ycbcr``), computed in float64, stored as float32 ``Y / 255`` and scaled back by 255. BasicSR
reads images with OpenCV in BGR order and applies ``bgr2ycbcr`` (the same coefficients in the order
B, G, R); these images are RGB, so the coefficients are applied to R, G, B. The float32 roundings are
BasicSR's too.

PSNR: ``10 log10(255^2 / mse)`` in float64 (``inf`` for identical images).
SSIM: BasicSR's ``_ssim``: an 11x11 Gaussian window (sigma 1.5, the outer product of
``cv2.getGaussianKernel(11, 1.5)``), statistics over the window positions that fit inside the image
(``filter2D(...)[5:-5, 5:-5]``), ``C1 = (0.01 * 255)^2``, ``C2 = (0.03 * 255)^2``, the mean of the
SSIM map; averaged over channels when not on the Y channel.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np

__all__ = [
    "PROTOCOLS", "rgb_to_y", "calculate_psnr", "calculate_ssim", "gaussian_window",
    "matlab_rgb2y_uint8", "matlab_rgb2y_double", "fspecial_gaussian", "filter2_valid", "imfilter_box_symmetric",
    "ssim_index_2003", "ssim_auto_downsample", "downsampling_factor",
    "psnr_matlab_rain200", "ssim_matlab_rain200", "psnr_matlab_did", "ssim_matlab_did",
    "score_pair", "small_image_note",
]

_Y_COEFFS_RGB = (65.481, 128.553, 24.966)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _as_hwc(img, name: str) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected an [H, W, C] image, got shape {list(arr.shape)}")
    return arr


def rgb_to_y(img) -> np.ndarray:
    """Y of YCbCr (BT.601, range [16, 235]) of an ``[H, W, 3]`` RGB image on the [0, 255] scale,
    exactly as BasicSR's ``to_y_channel`` (float32 result, ``[H, W]``)."""
    arr = _as_hwc(img, "image")
    if arr.shape[2] != 3:
        raise ValueError(f"rgb_to_y needs 3 channels, got {arr.shape[2]}")
    x = arr.astype(np.float32) / np.float32(255.0)
    r, g, b = (x[..., i].astype(np.float64) for i in range(3))
    # BasicSR: np.dot(bgr, [24.966, 128.553, 65.481]) + 16.0, then /255 in float64, cast to float32, * 255
    y = b * _Y_COEFFS_RGB[2] + g * _Y_COEFFS_RGB[1] + r * _Y_COEFFS_RGB[0] + 16.0
    return (y / 255.0).astype(np.float32) * np.float32(255.0)


def _prepare(img, img2, crop_border: int, test_y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_hwc(img, "img"), _as_hwc(img2, "img2")
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {list(a.shape)} vs {list(b.shape)}")
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    if test_y_channel and a.shape[2] == 3:
        a, b = rgb_to_y(a)[..., None], rgb_to_y(b)[..., None]
    return a.astype(np.float64), b.astype(np.float64)


def calculate_psnr(img, img2, *, crop_border: int = 0, test_y_channel: bool = True) -> float:
    """PSNR in dB of two ``[H, W, 3]`` RGB images on the [0, 255] scale (BasicSR's ``calculate_psnr``)."""
    a, b = _prepare(img, img2, crop_border, test_y_channel)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return math.inf
    return float(10.0 * np.log10(255.0 * 255.0 / mse))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The 1-d Gaussian of ``cv2.getGaussianKernel(size, sigma)`` (float64, sums to 1)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) * 0.5
    g = np.exp((-0.5 / (sigma * sigma)) * x * x)
    return g * (1.0 / g.sum())


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Correlation of a 2-d float64 image with ``outer(g, g)`` over the positions where the window fits."""
    k = g.shape[0]
    rows = np.lib.stride_tricks.sliding_window_view(img, k, axis=0) @ g  # [H-k+1, W]
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=1) @ g  # [H-k+1, W-k+1]


def _ssim(img: np.ndarray, img2: np.ndarray) -> float:
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    g = gaussian_window()
    mu1 = _filter_valid(img, g)
    mu2 = _filter_valid(img2, g)
    mu1_sq, mu2_sq, mu1_mu2 = mu1**2, mu2**2, mu1 * mu2
    sigma1_sq = _filter_valid(img**2, g) - mu1_sq
    sigma2_sq = _filter_valid(img2**2, g) - mu2_sq
    sigma12 = _filter_valid(img * img2, g) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
    return float(ssim_map.mean())


def calculate_ssim(img, img2, *, crop_border: int = 0, test_y_channel: bool = True) -> float:
    """SSIM of two ``[H, W, 3]`` RGB images on the [0, 255] scale (BasicSR's ``calculate_ssim``).
    Both sides must be at least 11 pixels (after ``crop_border``)."""
    a, b = _prepare(img, img2, crop_border, test_y_channel)
    if a.shape[0] < SSIM_WINDOW or a.shape[1] < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, "
                         f"got {a.shape[0]}x{a.shape[1]}")
    return float(np.mean([_ssim(a[..., c], b[..., c]) for c in range(a.shape[2])]))


# ------------------------------------------------------------------------------------------------
# The paper's two MATLAB protocols
# ------------------------------------------------------------------------------------------------
#
# ``matlab-rain200``: ``evaluations/Evalution_Rain200L_Rain200H_SPA-Data/evaluate_PSNR_SSIM.m`` of
# the original repository (Rain200L, Rain200H, SPA-Data). For each pair read with ``imread`` (uint8):
# ``rgb2ycbcr`` on the uint8 image, whose Y channel is therefore rounded to 8 bits; PSNR
# ``20 log10(255 / rmse)`` of the two Y channels; SSIM by ``SSIM_index`` (Zhou Wang's 2003 code:
# 11x11 Gaussian window of sigma 1.5 from ``fspecial``, K = [0.01 0.03], L = 255, statistics by
# ``filter2(window, ., 'valid')``, ``mean2`` of the map). Results and targets are paired in the order
# of ``dir``: the .jpg files, then the .png files, each sorted by name.
#
# ``matlab-did``: ``evaluations/Evaluation_DID-Data_DDN-Data/statistic.m`` with its ``psnr.m`` and
# ``ssim.m`` (DID-Data, DDN-Data). ``im2double`` (uint8 / 255), then ``rgb2ycbcr`` on doubles (Y not
# rounded, on [16/255, 235/255]); PSNR by ``psnr.m``: peak 1 (its 8-bit peak applies only when the
# first image exceeds 2, never the case for Y on [0, 1]); SSIM by ``ssim.m`` ("SSIM Index with
# automatic downsampling", 2009) on ``Y * 255``: ``f = max(1, round(min(M, N) / 256))``; when f > 1
# both images are filtered by an f x f box (``imfilter(., ones(f)/f^2, 'symmetric', 'same')``) and
# every f-th pixel is kept from the first (``1:f:end``), then the same Gaussian SSIM. The script
# pairs ``<i>_DR.png`` with ``<i>_GT.png``.
#
# Both scripts (and this module) give SSIM = -Inf below 11 x 11 pixels: ``ssim.m`` returns -Inf;
# ``SSIM_index`` assigns -Inf to a variable that is not its output, so ``evaluate_PSNR_SSIM.m`` stops
# there with an error ("output not assigned") instead.

PROTOCOLS = {
    "matlab-rain200": "evaluate_PSNR_SSIM.m of the paper (Rain200L, Rain200H, SPA-Data): Y of rgb2ycbcr on "
                      "uint8 (rounded to 8 bits), PSNR peak 255, SSIM_index (2003)",
    "matlab-did": "statistic.m of the paper (DID-Data, DDN-Data): Y of rgb2ycbcr on im2double (not rounded), "
                  "PSNR peak 1, ssim.m with automatic downsampling",
    "basicsr": "BasicSR calculate_psnr/calculate_ssim (test_y_channel=True, crop_border=0)",
}

# ITU-R BT.601 as the image package of GNU Octave writes rgb2ycbcr (Kg = (1 - Kr) - Kb; Y on [0, 1] is
# Kr R + Kg G + Kb B, then scaled by 219/255 and shifted by 16/255): the same numbers as MATLAB's
# 65.481, 128.553, 24.966 (= 219 Kr, 219 Kg, 219 Kb) on [0, 255].
_KR, _KB = 0.299, 0.114
_KG = 1 - _KR - _KB


def _uint8_rgb(img, name: str) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{name}: the MATLAB protocols take 8-bit RGB images ([H, W, 3] uint8, as imread "
                         f"returns them), got {arr.dtype} {list(arr.shape)}")
    return arr


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {list(a.shape)} vs {list(b.shape)}")


@functools.cache
def _tie_rounds_up(r: int, g: int, b: int) -> bool:
    """For a colour whose exact Y lies halfway between two integers: does the floating-point
    computation of the reference (GNU Octave's rgb2ycbcr: ``im2double``, a BLAS matrix product that
    accumulates R, G, B in that order with fused multiply-adds, ``* 219 / 255 + 16 / 255``, then
    ``im2uint8``: ``* 255``, rounded half away from zero) land at or above the half?"""

    def fma(x: float, y: float, z: float) -> float:  # x * y + z rounded once, as the hardware's FMA
        return float(Fraction(x) * Fraction(y) + Fraction(z))

    y = fma(b / 255, _KB, fma(g / 255, _KG, (r / 255) * _KR))
    u = ((y * 219) / 255 + 16 / 255) * 255
    return u - math.floor(u) >= 0.5


def matlab_rgb2y_uint8(img) -> np.ndarray:
    """Y channel of MATLAB's ``rgb2ycbcr`` on an ``[H, W, 3]`` uint8 RGB image: ``[H, W]`` uint8,
    ``round(16 + (65.481 R + 128.553 G + 24.966 B) / 255)``, rounded half away from zero as MATLAB
    converts doubles to uint8.

    Computed exactly in integers (``255000 (Y - 16) = 65481 R + 128553 G + 24966 B``), so every pixel
    whose exact Y is not a tie is right whatever the floating-point order. For the 194 colours
    whose exact Y ends in .5, the floating-point path of the implementation decides: we follow GNU
    Octave 7.3 with its image package 2.14 on OpenBLAS with fused multiply-adds (the tool that
    produced this package's reference figures; 4 of the 194 round down there). MATLAB's own path
    could not be checked here; at most these colours can differ, by one level of Y.
    """
    arr = _uint8_rgb(img, "image")
    r, g, b = (arr[..., i].astype(np.int64) for i in range(3))
    q, rem = np.divmod(65481 * r + 128553 * g + 24966 * b, 255000)
    y = 16 + q + (rem > 127500)
    ties = rem == 127500
    if ties.any():
        colours, inverse = np.unique(arr[ties], axis=0, return_inverse=True)
        up = np.array([_tie_rounds_up(*map(int, c)) for c in colours], dtype=np.int64)
        y[ties] += up[inverse.reshape(-1)]
    return y.astype(np.uint8)


def matlab_rgb2y_double(img) -> np.ndarray:
    """Y channel of ``rgb2ycbcr(im2double(img))`` for an ``[H, W, 3]`` uint8 RGB image: ``[H, W]``
    float64 on [16/255, 235/255], not rounded (the DID script's Y)."""
    x = _uint8_rgb(img, "image").astype(np.float64) / 255.0  # im2double
    y = x[..., 0] * _KR + x[..., 1] * _KG + x[..., 2] * _KB
    return (y * 219) / 255 + 16 / 255


def fspecial_gaussian(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """``fspecial('gaussian', size, sigma)``: the ``[size, size]`` Gaussian, values below ``eps``
    times the largest set to 0 (none for 11 and 1.5), normalised to sum 1. It is the outer product
    of :func:`gaussian_window` with itself (to rounding), which is how the SSIM functions apply it."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    h = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma * sigma))
    h[h < np.finfo(np.float64).eps * h.max()] = 0
    return h / h.sum()


def filter2_valid(img: np.ndarray, g: np.ndarray | None = None) -> np.ndarray:
    """``filter2(outer(g, g), img, 'valid')`` (a correlation over the positions where the window
    fits) for a 2-d float64 image; ``g`` defaults to the 1-d factor of the 11x11 Gaussian."""
    return _filter_valid(np.asarray(img, dtype=np.float64), gaussian_window() if g is None else g)


def imfilter_box_symmetric(img: np.ndarray, f: int) -> np.ndarray:
    """``imfilter(img, ones(f, f) / f^2, 'symmetric', 'same')`` of a 2-d float64 image.

    MATLAB centres a kernel at element ``floor((f + 1) / 2)``: for even ``f`` the window reaches one
    pixel further after the pixel than before it (f = 2: the pixel and its successor). 'symmetric'
    mirrors the image including its edge row/column (``numpy.pad(mode='symmetric')``)."""
    if f < 1:
        raise ValueError(f"box size must be at least 1, got {f}")
    before = (f - 1) // 2
    after = f - 1 - before
    p = np.pad(np.asarray(img, dtype=np.float64), ((before, after), (before, after)), mode="symmetric")
    rows = np.lib.stride_tricks.sliding_window_view(p, f, axis=0).sum(axis=-1)
    return np.lib.stride_tricks.sliding_window_view(rows, f, axis=1).sum(axis=-1) / (f * f)


def downsampling_factor(h: int, w: int) -> int:
    """``ssim.m``'s ``f = max(1, round(min(M, N) / 256))``, rounding halves up as MATLAB does
    (384 px gives 2, 640 px gives 3)."""
    return max(1, math.floor(min(h, w) / 256 + 0.5))


def _ssim_pair(img1, img2) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Both SSIM scripts' inputs as float64 2-d images of one shape; (None, None) below the 11x11
    window, where both give -inf."""
    a, b = np.asarray(img1, dtype=np.float64), np.asarray(img2, dtype=np.float64)
    _same_shape(a, b)
    if a.ndim != 2:
        raise ValueError(f"expected 2-d images, got shape {list(a.shape)}")
    if a.shape[0] < SSIM_WINDOW or a.shape[1] < SSIM_WINDOW:
        return None, None
    return a, b


def ssim_index_2003(img1: np.ndarray, img2: np.ndarray) -> float:
    """``SSIM_index(img1, img2)`` of the Rain200 script (2003) on two 2-d images on [0, 255]: the
    mean of the SSIM map over the ``filter2 'valid'`` positions of the 11x11 Gaussian, K = [0.01
    0.03], L = 255. ``-inf`` when a side is below 11 (the value the script intends; see the module
    notes)."""
    a, b = _ssim_pair(img1, img2)
    if a is None:
        return -math.inf
    return _ssim(a, b)


def ssim_auto_downsample(img1: np.ndarray, img2: np.ndarray) -> float:
    """``ssim(img1, img2)`` of the DID script's ``ssim.m`` (2009, automatic downsampling) on two 2-d
    images on [0, 255]: -inf below 11 pixels on a side (checked before downsampling), else with
    ``f = downsampling_factor(M, N)`` > 1 both are box-filtered (:func:`imfilter_box_symmetric`) and
    subsampled from the first pixel every ``f`` (``1:f:end``), then :func:`ssim_index_2003`."""
    a, b = _ssim_pair(img1, img2)
    if a is None:
        return -math.inf
    f = downsampling_factor(*a.shape)
    if f > 1:
        a = imfilter_box_symmetric(a, f)[::f, ::f]
        b = imfilter_box_symmetric(b, f)[::f, ::f]
    return _ssim(a, b)


def psnr_matlab_rain200(result, target) -> float:
    """PSNR of the Rain200/SPA script: ``20 log10(255 / rmse)`` of the uint8 Y channels
    (:func:`matlab_rgb2y_uint8`); ``inf`` for identical Y."""
    a, b = _uint8_rgb(result, "result"), _uint8_rgb(target, "target")
    _same_shape(a, b)
    d = matlab_rgb2y_uint8(a).astype(np.float64) - matlab_rgb2y_uint8(b).astype(np.float64)
    rmse = math.sqrt(float(np.mean(d * d)))
    return math.inf if rmse == 0 else 20 * math.log10(255 / rmse)


def ssim_matlab_rain200(result, target) -> float:
    """SSIM of the Rain200/SPA script: :func:`ssim_index_2003` of the uint8 Y channels."""
    a, b = _uint8_rgb(result, "result"), _uint8_rgb(target, "target")
    _same_shape(a, b)
    return ssim_index_2003(matlab_rgb2y_uint8(a), matlab_rgb2y_uint8(b))


def psnr_matlab_did(result, target) -> float:
    """PSNR of the DID/DDN script (``psnr.m``): ``10 log10(1 / mse)`` of the double Y channels
    (:func:`matlab_rgb2y_double`); ``inf`` for identical Y."""
    a, b = _uint8_rgb(result, "result"), _uint8_rgb(target, "target")
    _same_shape(a, b)
    d = matlab_rgb2y_double(a) - matlab_rgb2y_double(b)
    mse = float(np.sum(d * d)) / d.size
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim_matlab_did(result, target) -> float:
    """SSIM of the DID/DDN script: :func:`ssim_auto_downsample` of ``Y * 255`` (double Y)."""
    a, b = _uint8_rgb(result, "result"), _uint8_rgb(target, "target")
    _same_shape(a, b)
    return ssim_auto_downsample(matlab_rgb2y_double(a) * 255, matlab_rgb2y_double(b) * 255)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def score_pair(result, target, protocol: str) -> tuple[float, float]:
    """(PSNR, SSIM) of a result against its target under ``protocol`` (a key of :data:`PROTOCOLS`).
    The MATLAB protocols take uint8 ``[H, W, 3]`` RGB and give SSIM -inf below 11x11
    (:func:`small_image_note`); ``basicsr`` raises ``ValueError`` there."""
    _check_protocol(protocol)
    if protocol == "matlab-rain200":
        return psnr_matlab_rain200(result, target), ssim_matlab_rain200(result, target)
    if protocol == "matlab-did":
        return psnr_matlab_did(result, target), ssim_matlab_did(result, target)
    return calculate_psnr(result, target), calculate_ssim(result, target)


def small_image_note(h: int, w: int, protocol: str) -> str | None:
    """What ``protocol`` does with an ``h x w`` image smaller than the SSIM window (None otherwise)."""
    _check_protocol(protocol)
    if h >= SSIM_WINDOW and w >= SSIM_WINDOW:
        return None
    size = f"{h}x{w} is smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM window"
    if protocol == "matlab-did":
        return f"{size}: SSIM is -Inf, as ssim.m returns (and so is the mean)"
    if protocol == "matlab-rain200":
        return (f"{size}: SSIM is -Inf, the value SSIM_index means (evaluate_PSNR_SSIM.m itself stops with an "
                f"error there), and so is the mean")
    return f"{size}: BasicSR's SSIM is undefined"
