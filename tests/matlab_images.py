"""Deterministic (result, target) image pairs for checking the MATLAB protocols of
``drsformer_fast.images.metrics`` against GNU Octave running the paper's scripts.

The same function makes the pairs for the tests (in memory) and for the one-off Octave run
(``scripts/octave_reference.py``, which writes them as PNGs: lossless, so Octave reads exactly these
arrays). Sizes chosen for what can go wrong: odd sizes, exactly the 11x11 SSIM window, below it
(10x10), ``ssim.m``'s downsampling factor f = round(min(M, N) / 256) on both sides of its
switches (383 px: f = 1; 384 px: 1.5 rounds to 2; 640 px: 2.5 rounds to 3) with odd sides (so
``1:f:end`` keeps the last row or column), very wide, identical images, and every RGB colour
whose exact Y lies halfway between two integers (ties of the 8-bit rounding).
"""

from __future__ import annotations

import numpy as np

# name -> (height, width, noise sigma of the result, seed)
SIZES = {
    "odd_37x53": (37, 53, 12.0, 1),
    "window_11x11": (11, 11, 10.0, 2),
    "small_10x10": (10, 10, 10.0, 3),
    "wide_13x301": (13, 301, 6.0, 4),
    "f1_383x389": (383, 389, 8.0, 5),
    "f2_384x401": (384, 401, 5.0, 6),
    "f2_odd_391x517": (391, 517, 2.0, 7),
    "f3_640x641": (640, 641, 4.0, 8),
    "clean_29x31": (29, 31, 0.7, 9),
}


def tie_colours() -> np.ndarray:
    """The RGB colours (uint8, ``[194, 3]``) whose exact Y = 16 + (65.481 R + 128.553 G + 24.966 B)
    / 255 ends in .5 (``65481 R + 128553 G + 24966 B = 127500 mod 255000``)."""
    v = np.arange(256, dtype=np.int64)
    found = []
    for r in range(256):
        n = 65481 * r + 128553 * v[:, None] + 24966 * v[None, :]
        g, b = np.nonzero(n % 255000 == 127500)
        found.append(np.stack([np.full_like(g, r), g, b], axis=1))
    return np.concatenate(found).astype(np.uint8)


def _target(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth scene with edges and texture, like a photograph (not white noise)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, 3)
    img = 120 + 70 * np.sin(xx[..., None] / (4 + w / 9) + phase) * np.cos(yy[..., None] / (3 + h / 7) + phase[::-1])
    img += 40 * ((xx // max(3, w // 6) + yy // max(3, h // 5)) % 2)[..., None]  # blocks: sharp edges
    img += rng.normal(0, 6, (h, w, 3))  # texture
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _degrade(target: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A "derained result": the target with a slight global shift, faint streaks and noise."""
    h, w, _ = target.shape
    streaks = 12.0 * (rng.random((1, w, 1)) < 0.08) * (rng.random((h, 1, 1)) < 0.7)
    out = target.astype(np.float64) * 0.98 + 2.0 + streaks + rng.normal(0, sigma, target.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def reference_pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (result, target), ``[H, W, 3]`` uint8 RGB arrays, the same on every run."""
    pairs = {}
    for name, (h, w, sigma, seed) in SIZES.items():
        rng = np.random.default_rng(seed)
        target = _target(h, w, rng)
        pairs[name] = (_degrade(target, sigma, rng), target)
    rng = np.random.default_rng(10)
    target = _target(24, 19, rng)
    pairs["identical_24x19"] = (target.copy(), target)
    # 20x20 = 400 pixels, shuffled: 194 where the target has a tie colour and the result that colour
    # with B one level away (Y 0.098 away: no tie), so the pixel differs by 0 or 1 level of Y
    # depending on how the tie rounds; 194 the other way round; 12 random colours.
    ties = tie_colours().astype(np.int64)
    near = ties.copy()
    near[:, 2] += np.where(ties[:, 2] < 255, 1, -1)
    rng = np.random.default_rng(11)
    fill = rng.integers(0, 256, (400 - 2 * len(ties), 3))
    result = np.concatenate([near, ties, fill])
    target = np.concatenate([ties, near, fill])
    order = rng.permutation(400)
    pairs["ties_20x20"] = (result[order].reshape(20, 20, 3).astype(np.uint8),
                           target[order].reshape(20, 20, 3).astype(np.uint8))
    return pairs
