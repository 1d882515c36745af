"""Deraining images with a loaded DRSformer, as the original test script does.

:func:`derain_tensor` reproduces ``test.py`` of the original release: the image (values in [0, 1]) is
reflect-padded on the bottom and right to a multiple of 8, run whole or in overlapping tiles whose
outputs are averaged, cropped back and clamped to [0, 1]. The model is any ``nn.Module`` mapping
``[B, 3, H, W]`` to ``[B, 3, H, W]`` (the reference or the fused DRSformer).

Tiling, as the original: tiles of ``tile`` pixels (a multiple of 8) start every ``tile - overlap``
pixels, ``starts = list(range(0, size - tile, stride)) + [size - tile]`` on each axis, every output
pixel is the mean of the tiles covering it (sum ``E``, count ``W``, ``E / W``). One difference: the
original shrinks the tile to a square of ``min(tile, H, W)`` (of the padded image); here each axis is
clamped separately (``min(tile, H)`` rows, ``min(tile, W)`` columns), so a tile at least as large as
the image means no tiling at all. The two agree whenever ``tile <= min(H, W)`` or the image is square.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .imageio import ImageError, read_image, write_png

__all__ = ["InferenceError", "PRECISIONS", "PAD_MULTIPLE", "derain_tensor", "pad_to_multiple", "tile_starts",
           "check_tiling", "check_precision", "resolve_device", "plan_outputs", "derain_image", "derain_files",
           "write_png_atomic"]

PAD_MULTIPLE = 8
TileFn = Callable[[int, int], None]
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class InferenceError(ValueError):
    """Settings or inputs the deraining cannot run with; the message says which and why."""


# --------------------------------------------------------------------------------------------
# Padding and tiling
# --------------------------------------------------------------------------------------------


def pad_to_multiple(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Reflect-pad the bottom and right of ``x: [B, C, H, W]`` to multiples of ``multiple``
    (``F.pad(x, (0, padw, 0, padh), 'reflect')``, as the original). Reflection needs the padding to
    be smaller than the side, so a side that is not a multiple of 8 must be at least 5 pixels."""
    h, w = x.shape[-2:]
    padh, padw = (-h) % multiple, (-w) % multiple
    if padh >= h or padw >= w:
        raise InferenceError(
            f"image of {h}x{w} pixels is too small: reflect padding to a multiple of {multiple} needs every side "
            f"to be a multiple of {multiple} or more than {multiple // 2} pixels"
        )
    if padh == 0 and padw == 0:
        return x
    return F.pad(x, (0, padw, 0, padh), mode="reflect")


def check_tiling(tile: int | None, tile_overlap: int) -> None:
    """Raise :class:`InferenceError` unless ``tile`` is None or a positive multiple of 8 larger than
    ``tile_overlap`` (>= 0)."""
    if tile is None:
        return
    if isinstance(tile, bool) or not isinstance(tile, int) or tile <= 0 or tile % PAD_MULTIPLE:
        raise InferenceError(f"tile size must be a positive multiple of {PAD_MULTIPLE}, got {tile}")
    if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, int) or tile_overlap < 0:
        raise InferenceError(f"tile overlap must be a non-negative integer, got {tile_overlap}")
    if tile_overlap >= tile:
        raise InferenceError(f"tile overlap ({tile_overlap}) must be smaller than the tile size ({tile})")


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the tiles along an axis of ``size`` pixels (the original's rule); one tile
    at 0 when ``tile >= size``."""
    if tile >= size:
        return [0]
    return list(range(0, size - tile, tile - overlap)) + [size - tile]


# --------------------------------------------------------------------------------------------
# Devices and precision
# --------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``'auto'`` (CUDA when available, else CPU), ``'cpu'`` or ``'cuda'`` / ``'cuda:N'``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise InferenceError(f"unknown device {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError("--device cuda was asked for but PyTorch sees no CUDA device (use --device cpu or auto)")
    return device


def _autocast(device: torch.device, precision: str):
    if precision not in PRECISIONS:
        raise InferenceError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise InferenceError("bf16 is not supported by this GPU; use fp16 or fp32")
        return torch.autocast("cuda", dtype=PRECISIONS[precision])
    if device.type == "cpu":
        if precision == "fp16":
            raise InferenceError("fp16 needs a CUDA device; on the CPU use fp32 or bf16")
        return torch.autocast("cpu", dtype=torch.bfloat16)
    raise InferenceError(f"{precision} is not supported on {device.type}; use fp32")


def check_precision(device: torch.device, precision: str) -> None:
    """Raise :class:`InferenceError` unless ``precision`` can run on ``device``."""
    _autocast(torch.device(device), precision)


def _model_device_dtype(model: nn.Module, img: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return img.device, torch.float32


# --------------------------------------------------------------------------------------------
# Deraining
# --------------------------------------------------------------------------------------------


def derain_tensor(
    model: nn.Module,
    img: torch.Tensor,
    *,
    tile: int | None = None,
    tile_overlap: int = 32,
    precision: str = "fp32",
    on_tile: TileFn | None = None,
) -> torch.Tensor:
    """Derain ``img: [B, 3, H, W]`` (values in [0, 1]) as the original test script does; returns
    ``[B, 3, H, W]`` in [0, 1] on ``img``'s device, in the model's parameter dtype (float32 for a
    loaded checkpoint).

    tile: None runs the whole (padded) image at once; else tiles of ``tile`` pixels (a multiple of 8)
        overlapping by ``tile_overlap``, averaged (see the module docstring).
    precision: 'fp32', or 'fp16' / 'bf16' under ``torch.autocast`` (CUDA; the CPU has bf16 only).
    on_tile: ``on_tile(done, total)`` after each tile, when the image runs in more than one tile.
    """
    check_tiling(tile, tile_overlap)
    if img.dim() != 4 or not img.is_floating_point():
        raise InferenceError(f"expected a floating-point [B, C, H, W] image tensor, got {img.dtype} "
                             f"{list(img.shape)}")
    device, dtype = _model_device_dtype(model, img)
    autocast = _autocast(device, precision)
    h, w = img.shape[-2:]
    x = pad_to_multiple(img.to(device=device, dtype=dtype))
    with torch.no_grad(), autocast:
        if tile is None:
            restored = model(x).to(dtype)
        else:
            restored = _tiled(model, x, tile, tile_overlap, dtype, on_tile)
    restored = torch.clamp(restored, 0, 1)[..., :h, :w]
    return restored.to(img.device)


def _tiled(model: nn.Module, x: torch.Tensor, tile: int, overlap: int, dtype: torch.dtype,
           on_tile: TileFn | None = None) -> torch.Tensor:
    h, w = x.shape[-2:]
    th, tw = min(tile, h), min(tile, w)
    hs, ws = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    if len(hs) == 1 and len(ws) == 1:
        return model(x).to(dtype)
    acc = weight = None
    done, total = 0, len(hs) * len(ws)
    for i in hs:
        for j in ws:
            out = model(x[..., i:i + th, j:j + tw].contiguous()).to(dtype)
            if acc is None:
                acc = torch.zeros(*out.shape[:-2], h, w, dtype=dtype, device=x.device)
                weight = torch.zeros_like(acc)
            acc[..., i:i + th, j:j + tw].add_(out)
            weight[..., i:i + th, j:j + tw].add_(1.0)
            done += 1
            if on_tile is not None:
                on_tile(done, total)
    return acc.div_(weight)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def plan_outputs(files: Sequence[Path], output_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(input, output) pairs: ``output_dir / (stem + '.png')``. Raises :class:`ImageError` when two
    inputs would write the same file, or an output would overwrite an input."""
    out_dir = Path(output_dir)
    pairs = [(Path(f), out_dir / (Path(f).stem + ".png")) for f in files]
    seen: dict[Path, Path] = {}
    inputs = {p.resolve() for p, _ in pairs}
    for src, dst in pairs:
        key = dst.resolve()
        if key in seen:
            raise ImageError(f"{seen[key]} and {src} would both be written to {dst}: rename one of them")
        if key in inputs:
            raise ImageError(f"writing {dst} would overwrite an input image: choose another --output folder")
        seen[key] = src
    return pairs


def write_png_atomic(path: str | os.PathLike, img) -> None:
    """:func:`write_png` of ``img`` (what it takes) through a temporary file in the same folder,
    renamed over ``path``: ``path`` is either absent or complete (an interrupted run leaves no
    truncated PNG). Creates the folder (and its parents) when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_png(tmp, img)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def derain_image(
    model: nn.Module,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    tile: int | None = None,
    tile_overlap: int = 32,
    precision: str = "fp32",
    on_tile: TileFn | None = None,
) -> Path:
    """Derain the image at ``src`` and write it as the PNG ``dst`` (:func:`write_png_atomic`);
    returns ``dst``. Errors of the image name ``src``."""
    img = read_image(src)
    try:
        restored = derain_tensor(model, img[None], tile=tile, tile_overlap=tile_overlap, precision=precision,
                                 on_tile=on_tile)
    except InferenceError as exc:
        raise InferenceError(f"{src}: {exc}") from exc
    write_png_atomic(dst, restored[0])
    return Path(dst)


ProgressFn = Callable[[int, int, Path, Path, float], None]


def derain_files(
    model: nn.Module,
    files: Sequence[Path],
    output_dir: str | os.PathLike,
    *,
    tile: int | None = None,
    tile_overlap: int = 32,
    precision: str = "fp32",
    progress: ProgressFn | None = None,
) -> list[Path]:
    """Derain every image in ``files`` and write ``output_dir / (stem + '.png')``
    (:func:`derain_image`); returns the written paths. The folder is created with the first image
    written. ``progress(i, n, src, dst, seconds)`` is called after each image."""
    check_tiling(tile, tile_overlap)
    check_precision(_model_device_dtype(model, torch.empty(0))[0], precision)
    pairs = plan_outputs(files, output_dir)
    written = []
    for i, (src, dst) in enumerate(pairs, 1):
        start = time.perf_counter()
        written.append(derain_image(model, src, dst, tile=tile, tile_overlap=tile_overlap, precision=precision))
        if progress is not None:
            progress(i, len(pairs), src, dst, time.perf_counter() - start)
    return written
