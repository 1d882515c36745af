"""PSNR and SSIM with BasicSR's conventions (``basicsr.metrics.calculate_psnr`` / ``calculate_ssim``),
in numpy, without OpenCV.

Deraining papers, DRSformer included, report both on the Y channel of YCbCr
(``test_y_channel=True``) with ``crop_border=0``. Images are ``[H, W, 3]`` RGB arrays on the
[0, 255] scale (uint8, or floats such as a model output times 255).

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

import math

import numpy as np

__all__ = ["rgb_to_y", "calculate_psnr", "calculate_ssim", "gaussian_window"]

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
