"""Evaluating a checkpoint on a folder of rainy images against their clean targets.

Each input is derained (:func:`drsformer_fast.images.inference.derain_tensor`), quantised to 8 bits as the
original test script saves it, and scored against the target with the same stem: PSNR and SSIM on
the Y channel under a protocol of :data:`drsformer_fast.images.metrics.PROTOCOLS`: BasicSR's conventions
by default, or one of the paper's two MATLAB scripts. The reported means are means of the
per-image values, as BasicSR and the scripts report them.

With a second (reference) model, the fast model's float output is compared with the reference's
for every image: the parity report (max absolute difference, on the [0, 1] scale).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch.nn as nn

from .imageio import ImageError, find_images, is_image_file, read_image, read_image_uint8, to_uint8
from .inference import InferenceError, TileFn, check_tiling, derain_tensor, write_png_atomic
from .metrics import PROTOCOLS, SSIM_WINDOW, score_pair, small_image_note
from .scoring import json_ready, read_scored_image

__all__ = ["match_targets", "check_pair", "evaluate_pair", "summarize", "evaluate", "format_report", "json_ready"]


def _by_stem(files: Sequence[Path], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            raise ImageError(f"two {what} images share the name {f.stem!r}: {out[f.stem]} and {f}")
        out[f.stem] = f
    return out


def match_targets(inputs: Sequence[Path], target_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(input, target) pairs, matched by file stem (``rain/12.jpg`` with ``clean/12.png``). Raises
    :class:`ImageError` naming every input without a target."""
    target_dir = Path(target_dir)
    if not target_dir.is_dir():
        raise ImageError(f"{target_dir}: target folder not found")
    by_stem_in = _by_stem(inputs, "input")
    targets = [p for p in target_dir.iterdir() if p.is_file() and is_image_file(p)]
    by_stem_t = _by_stem(targets, "target")
    missing = [str(f.name) for stem, f in by_stem_in.items() if stem not in by_stem_t]
    if missing:
        shown = ", ".join(missing[:8]) + (f", ... ({len(missing) - 8} more)" if len(missing) > 8 else "")
        raise ImageError(f"{len(missing)} of {len(inputs)} input images have no target of the same name in "
                         f"{target_dir}: {shown}")
    return [(f, by_stem_t[f.stem]) for f in inputs]


ProgressFn = Callable[[int, int, dict], None]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)  # infinite when a value is (PSNR of an exact output, SSIM -inf)


def check_pair(src: str | os.PathLike, tgt: str | os.PathLike, protocol: str) -> None:
    """Check an input and its target from their headers, before any model runs: both readable (the
    target as ``protocol`` reads it), the same size, and (``basicsr``) at least the SSIM window.
    Raises :class:`ImageError` naming the file and the problem."""
    from .imageio import probe_image
    from .scoring import _probe

    h, w = probe_image(src)
    th, tw = _probe(Path(tgt), protocol)
    if (h, w) != (th, tw):
        raise ImageError(f"{src} is {h}x{w} but its target {tgt} is {th}x{tw}")
    small = small_image_note(h, w, protocol)
    if small and protocol == "basicsr":
        raise ImageError(f"{src}: {small} (SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels); the MATLAB "
                         "protocols score it with SSIM -inf")


def evaluate_pair(
    model: nn.Module,
    src: Path,
    tgt: Path,
    *,
    tile: int | None = None,
    tile_overlap: int = 32,
    precision: str = "fp32",
    reference_model: nn.Module | None = None,
    protocol: str = "basicsr",
    note: Callable[[str], None] | None = None,
    output: str | os.PathLike | None = None,
    on_tile: TileFn | None = None,
) -> dict[str, Any]:
    """Derain ``src``, score it against ``tgt``: the row ``{'name', 'target', 'psnr', 'ssim',
    'seconds'[, 'max_abs_diff']}`` of :func:`evaluate`. ``output``: also write the derained image
    there as a PNG, as ``derain`` writes it. ``on_tile(done, total)`` follows each tile."""
    start = time.perf_counter()
    src, tgt = Path(src), Path(tgt)
    img = read_image(src)
    if protocol == "basicsr":
        target = read_image_uint8(tgt)
    else:
        target, text = read_scored_image(tgt, protocol)
        if text and note is not None:
            note(text)
    if target.shape[:2] != tuple(img.shape[-2:]):
        raise ImageError(f"{src} is {img.shape[-2]}x{img.shape[-1]} but its target {tgt} is "
                         f"{target.shape[0]}x{target.shape[1]}")
    try:
        restored = derain_tensor(model, img[None], tile=tile, tile_overlap=tile_overlap, precision=precision,
                                 on_tile=on_tile)
        ref = None
        if reference_model is not None:
            ref = derain_tensor(reference_model, img[None], tile=tile, tile_overlap=tile_overlap, precision="fp32")
        out = to_uint8(restored[0])
        if output is not None:
            write_png_atomic(output, out)
        small = small_image_note(out.shape[0], out.shape[1], protocol)
        if small and protocol != "basicsr" and note is not None:
            note(f"{src.name}: {small}")
        psnr, ssim = score_pair(out, target, protocol)
        row = {"name": src.name, "target": tgt.name, "psnr": psnr, "ssim": ssim}
    except (InferenceError, ValueError) as exc:
        raise InferenceError(f"{src}: {exc}") from exc
    if ref is not None:
        row["max_abs_diff"] = float((restored.float() - ref.float().to(restored.device)).abs().max())
    row["seconds"] = time.perf_counter() - start
    return row


def summarize(rows: Sequence[dict], protocol: str, parity: bool = False) -> dict[str, Any]:
    """The report of :func:`evaluate` from its rows; the means are None when there is no row."""
    report: dict[str, Any] = {
        "protocol": protocol,
        "count": len(rows),
        "images": list(rows),
        "mean": {"psnr": _mean([r["psnr"] for r in rows]) if rows else None,
                 "ssim": _mean([r["ssim"] for r in rows]) if rows else None},
    }
    if parity:
        diffs = [r["max_abs_diff"] for r in rows]
        report["parity"] = {"max_abs_diff": max(diffs) if diffs else None,
                            "mean_max_abs_diff": sum(diffs) / len(diffs) if diffs else None}
    return report


def evaluate(
    model: nn.Module,
    input_dir: str | os.PathLike,
    target_dir: str | os.PathLike,
    *,
    tile: int | None = None,
    tile_overlap: int = 32,
    precision: str = "fp32",
    reference_model: nn.Module | None = None,
    progress: ProgressFn | None = None,
    protocol: str = "basicsr",
    note: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Derain every image of ``input_dir`` and score it against ``target_dir``.

    Returns ``{'protocol', 'images': [{'name', 'target', 'psnr', 'ssim', 'seconds'[, 'max_abs_diff']}],
    'mean': {'psnr', 'ssim'}, 'count'}``, plus ``'parity': {'max_abs_diff', 'mean_max_abs_diff'}``
    when a ``reference_model`` is given (run in fp32 with the same tiling; differences of the
    clamped float outputs). ``protocol``: a key of :data:`drsformer_fast.images.metrics.PROTOCOLS`; the
    MATLAB ones read targets as ``imread`` does (:func:`drsformer_fast.images.scoring.read_scored_image`:
    3-channel RGB only) and give SSIM -inf below 11x11, with a ``note(text)``.
    ``progress(i, n, row)`` is called after each image (:func:`evaluate_pair`).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    check_tiling(tile, tile_overlap)
    pairs = match_targets(find_images([input_dir]), target_dir)
    rows = []
    for i, (src, tgt) in enumerate(pairs, 1):
        rows.append(evaluate_pair(model, src, tgt, tile=tile, tile_overlap=tile_overlap, precision=precision,
                                  reference_model=reference_model, protocol=protocol, note=note))
        if progress is not None:
            progress(i, len(pairs), rows[-1])
    return summarize(rows, protocol, parity=reference_model is not None)


def _fmt(v: float, digits: int) -> str:
    return f"{v:.{digits}f}" if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def format_row(row: dict) -> str:
    text = f"{row['name']:<24} {_fmt(row['psnr'], 4):>9} {_fmt(row['ssim'], 4):>7}"
    if "max_abs_diff" in row:
        text += f" {row['max_abs_diff']:>14.3e}"
    return text


def format_report(report: dict[str, Any]) -> str:
    """The report of :func:`evaluate` as a text table (one row per image, then the means)."""
    parity = "parity" in report
    lines = [f"protocol: {report['protocol']}: {PROTOCOLS[report['protocol']]}"] if "protocol" in report else []
    lines += [f"{'image':<24} {'PSNR(Y)':>9} {'SSIM(Y)':>7}" + (f" {'max|fast-ref|':>14}" if parity else "")]
    lines += [format_row(r) for r in report["images"]]
    mean = report["mean"]
    lines.append(f"{'mean of ' + str(report['count']):<24} {_fmt(mean['psnr'], 4):>9} {_fmt(mean['ssim'], 4):>7}"
                 + (f" {report['parity']['max_abs_diff']:>14.3e}" if parity else ""))
    return "\n".join(lines)

