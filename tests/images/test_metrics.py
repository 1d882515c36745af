"""PSNR / SSIM on the Y channel (BasicSR conventions) against independent computations."""

import math

import numpy as np
import pytest
from imaging import psnr_y, ssim_direct, y_channel

from drsformer_fast.images.metrics import calculate_psnr, calculate_ssim, gaussian_window, rgb_to_y


def rand_img(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_y_channel_coefficients_apply_to_r_g_b_in_that_order():
    img = np.zeros((1, 4, 3), dtype=np.uint8)
    img[0, 0] = (255, 0, 0)
    img[0, 1] = (0, 255, 0)
    img[0, 2] = (0, 0, 255)
    img[0, 3] = (255, 255, 255)
    np.testing.assert_allclose(rgb_to_y(img)[0], [16 + 65.481, 16 + 128.553, 16 + 24.966, 235.0], rtol=1e-6)
    assert rgb_to_y(img).dtype == np.float32  # BasicSR's to_y_channel returns float32
    rand = rand_img(9, 7, 0)
    np.testing.assert_allclose(rgb_to_y(rand), y_channel(rand), rtol=1e-6)


def test_psnr_of_a_known_mse():
    a = np.full((8, 8, 3), 100, dtype=np.uint8)
    b = a.copy()
    b[:4] += 10  # half the pixels are 10 grey levels brighter: Y differs by 10 * 219 / 255
    mse = 0.5 * (10 * 219 / 255) ** 2
    assert calculate_psnr(a, b) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-5)
    assert calculate_psnr(a, b, test_y_channel=False) == pytest.approx(10 * math.log10(255**2 / 50.0), abs=1e-12)


def test_psnr_random_images_and_identical_images():
    a, b = rand_img(23, 17, 1), rand_img(23, 17, 2)
    assert calculate_psnr(a, b) == pytest.approx(psnr_y(a, b), abs=1e-5)
    assert calculate_psnr(a, a) == math.inf
    assert calculate_psnr(a.astype(np.float64), b.astype(np.float64)) == calculate_psnr(a, b)


def test_gaussian_window_is_opencvs():
    g = gaussian_window()
    x = np.arange(11) - 5.0
    e = np.exp(-(x**2) / 4.5)
    np.testing.assert_allclose(g, e / e.sum(), rtol=1e-15)
    assert g.sum() == pytest.approx(1.0, abs=1e-15)
    assert g[5] == pytest.approx(0.2660117, abs=1e-7)


def test_ssim_of_identical_images_is_one():
    a = rand_img(20, 15, 3)
    assert calculate_ssim(a, a) == 1.0


def test_ssim_matches_a_direct_window_by_window_computation():
    a, b = rand_img(16, 14, 4), rand_img(16, 14, 5)
    b = ((a.astype(int) + b) // 2).astype(np.uint8)  # correlated, so SSIM is well away from 0
    expected = ssim_direct(rgb_to_y(a).astype(np.float64), rgb_to_y(b).astype(np.float64))
    assert calculate_ssim(a, b) == pytest.approx(expected, rel=1e-9)
    expected_rgb = np.mean([ssim_direct(a[..., c].astype(float), b[..., c].astype(float)) for c in range(3)])
    assert calculate_ssim(a, b, test_y_channel=False) == pytest.approx(expected_rgb, rel=1e-9)


def test_ssim_of_flat_images_has_a_closed_form():
    a = np.full((12, 13, 3), 60, dtype=np.uint8)
    b = np.full((12, 13, 3), 90, dtype=np.uint8)
    ya, yb = float(rgb_to_y(a)[0, 0]), float(rgb_to_y(b)[0, 0])
    c1 = (0.01 * 255) ** 2
    assert calculate_ssim(a, b) == pytest.approx((2 * ya * yb + c1) / (ya**2 + yb**2 + c1), rel=1e-12)


def test_crop_border_and_errors():
    a, b = rand_img(30, 30, 6), rand_img(30, 30, 7)
    assert calculate_psnr(a, b, crop_border=4) == calculate_psnr(a[4:-4, 4:-4], b[4:-4, 4:-4])
    assert calculate_ssim(a, b, crop_border=4) == calculate_ssim(a[4:-4, 4:-4], b[4:-4, 4:-4])
    with pytest.raises(ValueError, match="shapes differ"):
        calculate_psnr(a, b[:-1])
    with pytest.raises(ValueError, match="at least 11x11"):
        calculate_ssim(a[:10], b[:10])
