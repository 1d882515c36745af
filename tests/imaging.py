"""Helpers of the inference, metrics and command-line tests: a tiny random DRSformer, images, and
straightforward (slow, independent) versions of what the package computes."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from helpers import make_generator
from PIL import Image

from drsformer_fast import reference as R
from drsformer_fast import save_checkpoint

TINY = dict(dim=8, num_blocks=[1, 1, 1, 1], heads=[1, 2, 2, 4])


def tiny_model(seed: int = 0, mefc: bool = True) -> torch.nn.Module:
    """Reference DRSformer, dim 8, one block per level, weights drawn from ``seed`` alone (every
    parameter random, so every parameter matters)."""
    model = R.DRSformer(**TINY, mefc=mefc)
    g = make_generator(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith("temperature"):
                p.copy_(0.5 + 0.5 * r.abs())
            elif p.dim() >= 2:
                p.copy_(r / math.sqrt(p[0].numel()))
            elif ".norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * r)
            elif re.search(r"attn\d$", name):
                p.copy_(0.2 + 0.05 * r)
            else:
                p.copy_(0.05 * r)
    return model.eval()


def tiny_checkpoint(path: Path, seed: int = 0, mefc: bool = True) -> Path:
    save_checkpoint(tiny_model(seed, mefc), path)
    return path


def random_image(path: Path, h: int, w: int, seed: int) -> np.ndarray:
    """A smooth-ish random RGB image (so that JPEG keeps it close), written with Pillow."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 80 * np.sin(xx[..., None] / 5.0 + np.array([0, 1, 2])) * np.cos(yy[..., None] / 7.0)
    arr = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def read_uint8(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def direct_derain(model, img: torch.Tensor) -> torch.Tensor:
    """The original test script without tiling, written out: reflect pad to 8, run, clamp, crop."""
    h, w = img.shape[-2:]
    padh = (8 - h % 8) % 8
    padw = (8 - w % 8) % 8
    x = F.pad(img, (0, padw, 0, padh), "reflect")
    with torch.no_grad():
        out = model(x)
    return torch.clamp(out, 0, 1)[:, :, :h, :w]


def y_channel(img: np.ndarray) -> np.ndarray:
    """BT.601 luma on the [16, 235] scale of an RGB [0, 255] image, in float64 (no float32 step)."""
    x = img.astype(np.float64) / 255.0
    return 16.0 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]


def psnr_y(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((y_channel(a) - y_channel(b)) ** 2)
    return math.inf if mse == 0 else 20 * math.log10(255.0 / math.sqrt(mse))


def ssim_direct(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two 2-d float arrays, window by window with the full 11x11 Gaussian (sigma 1.5)."""
    x = np.arange(11) - 5.0
    g = np.exp(-(x**2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = (win * pa).sum(), (win * pb).sum()
            va = (win * (pa - ma) ** 2).sum()
            vb = (win * (pb - mb) ** 2).sum()
            cov = (win * (pa - ma) * (pb - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))
