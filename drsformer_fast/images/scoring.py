"""Scoring folders of existing results against their targets (no model): pairing, reading, the table.

Pairing (``pair_by``):
- ``"name"``: by file stem, with a trailing ``_<tag>`` or ``-<tag>`` dropped (letter case ignored)
  on both sides, the tags being :data:`RESULT_TAGS` (``1_DR.png``) and :data:`TARGET_TAGS`
  (``1_GT.png``): ``1_DR.png`` pairs with ``1_GT.png``, ``1.png`` or ``1_DR.png``.
  Every result needs a target and every target a result. When RESULTS and TARGETS are the same
  folder (the DID script's layout: ``<i>_DR.png`` beside ``<i>_GT.png``), the files with a result
  tag are the results and those with a target tag the targets.
- ``"order"``: the i-th result with the i-th target, in the order the Rain200 script lists them:
  ``dir('*.jpg')`` then ``dir('*.png')``, each sorted by name by character code as MATLAB's and
  Octave's ``dir`` sort (``10.png`` before ``2.png``, capitals before small letters); other image
  files (.jpeg, .bmp), which that script would not see, come after them. MATLAB on Windows lists
  in NTFS order, the same for names of digits, '.', '_' and letters of one case.

Reading: the MATLAB protocols read like ``imread``: 8-bit RGB as stored (no EXIF rotation, which
``imread`` ignores); an alpha channel is dropped with a note (``imread`` returns it separately);
grayscale, palette and 16-bit images are refused, since the scripts score only 3-channel images
(``evaluate_PSNR_SSIM.m`` would take grey levels for Y, ``statistic.m`` stops on them). ``basicsr``
reads like BasicSR's ``cv2.imread``: EXIF rotation applied, grey repeated into RGB, alpha dropped
(:func:`drsformer_fast.images.imageio.read_image_uint8`). PNG decodes exactly everywhere; JPEG decoders
(Pillow's libjpeg-turbo, MATLAB's libjpeg) may differ by a level on some pixels.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .imageio import IMAGE_EXTENSIONS, ImageError, _natural_key, is_image_file, read_image_uint8
from .metrics import PROTOCOLS, score_pair, small_image_note

__all__ = ["RESULT_TAGS", "TARGET_TAGS", "PAIRINGS", "matlab_dir_order", "pair_images", "read_scored_image",
           "score_folders", "format_score_report", "json_ready"]

RESULT_TAGS = ("DR", "derained", "derain", "output", "out", "pred", "restored", "result")
TARGET_TAGS = ("GT", "target", "clean")
PAIRINGS = ("name", "order")


def json_ready(obj: Any) -> Any:
    """``obj`` with infinite floats (PSNR of identical images, SSIM below the window) written as the
    strings ``'inf'`` / ``'-inf'``, so that it is valid JSON."""
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def _split_tag(stem: str, tags: Sequence[str]) -> tuple[str, str | None]:
    """(stem without a trailing ``_tag``/``-tag`` of ``tags``, the tag or None)."""
    m = re.fullmatch(rf"(.+)[_-]({'|'.join(tags)})", stem, flags=re.IGNORECASE)
    return (m.group(1), m.group(2)) if m else (stem, None)


def matlab_dir_order(path: Path) -> tuple[int, str]:
    """Sort key of the Rain200 script's listing: .jpg files, then .png, then other images; by name
    (character codes) within each."""
    group = {".jpg": 0, ".png": 1}.get(path.suffix, 2)
    return group, path.name


def _list_images(folder: str | os.PathLike, what: str) -> list[Path]:
    path = Path(folder)
    if not path.exists():
        raise ImageError(f"{what} folder {path} not found")
    if not path.is_dir():
        raise ImageError(f"{what} {path} is not a folder")
    files = [p for p in path.iterdir() if p.is_file() and is_image_file(p)]
    if not files:
        raise ImageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {what} folder {path}")
    return files


def _shown(names: Sequence[str]) -> str:
    return ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")


def _keyed(files: Sequence[Path], tags: Sequence[str], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in sorted(files, key=_natural_key):
        key = _split_tag(f.stem, tags)[0]
        if key in out:
            raise ImageError(f"{what} {out[key].name} and {f.name} both pair by the name {key!r}; "
                             f"rename one, or use --pair-by order")
        out[key] = f
    return out


def pair_images(results: str | os.PathLike, targets: str | os.PathLike,
                pair_by: str = "name") -> list[tuple[Path, Path]]:
    """(result, target) pairs of the two folders (see the module notes); :class:`ImageError` for a
    missing or empty folder and for a result without a target or a target without a result."""
    if pair_by not in PAIRINGS:
        raise ValueError(f"pair_by must be one of {', '.join(PAIRINGS)}, got {pair_by!r}")
    res_files = _list_images(results, "results")
    tgt_files = _list_images(targets, "targets")
    if os.path.samefile(results, targets):  # one folder holding <i>_DR and <i>_GT, as the DID script reads
        res_files = [f for f in res_files if _split_tag(f.stem, RESULT_TAGS)[1]]
        tgt_files = [f for f in tgt_files if _split_tag(f.stem, TARGET_TAGS)[1]]
        paired = set(res_files) | set(tgt_files)
        other = [f.name for f in sorted(_list_images(results, "results"), key=_natural_key) if f not in paired]
        if other:
            raise ImageError(f"RESULTS and TARGETS are one folder, so each image needs a result suffix "
                             f"({', '.join('_' + t for t in RESULT_TAGS)}) or a target suffix "
                             f"({', '.join('_' + t for t in TARGET_TAGS)}); these have neither: {_shown(other)}")
        if not res_files or not tgt_files:
            what = "results" if not res_files else "targets"
            raise ImageError(f"RESULTS and TARGETS are one folder, {results}, and it holds no {what}")
    if pair_by == "order":
        res_files.sort(key=matlab_dir_order)
        tgt_files.sort(key=matlab_dir_order)
        if len(res_files) != len(tgt_files):
            more, fewer = ("results", "targets") if len(res_files) > len(tgt_files) else ("targets", "results")
            extra = (res_files if more == "results" else tgt_files)[min(len(res_files), len(tgt_files)):]
            raise ImageError(f"pairing by order: {len(res_files)} results but {len(tgt_files)} targets; {more} "
                             f"without a {fewer[:-1]}: {_shown([f.name for f in extra])}")
        return list(zip(res_files, tgt_files, strict=True))
    by_res = _keyed(res_files, RESULT_TAGS + TARGET_TAGS, "results")
    by_tgt = _keyed(tgt_files, RESULT_TAGS + TARGET_TAGS, "targets")
    for src, dst, what, where in ((by_res, by_tgt, "results have no target", targets),
                                  (by_tgt, by_res, "targets have no result", results)):
        missing = [f.name for k, f in src.items() if k not in dst]
        if missing:
            raise ImageError(f"{len(missing)} of {len(src)} {what} of the same name in {where}: {_shown(missing)}"
                             f" (names pair by stem, a suffix such as _DR/_GT dropped; or use --pair-by order)")
    return [(f, by_tgt[k]) for k, f in by_res.items()]


_REFUSED_MODES = {
    "L": "a grayscale image", "LA": "a grayscale image with alpha", "1": "a 1-bit image", "P": "a palette image",
    "PA": "a palette image with alpha", "I": "a 32-bit image", "F": "a 32-bit float image",
    "I;16": "a 16-bit grayscale image", "I;16B": "a 16-bit grayscale image", "I;16L": "a 16-bit grayscale image",
    "I;16N": "a 16-bit grayscale image", "RGB;16": "a 16-bit RGB image", "CMYK": "a CMYK image",
}


def _open_for_matlab(path: Path, read: bool) -> tuple[np.ndarray | None, tuple[int, int], str | None]:
    """(pixels or None, (H, W), note) as ``imread`` would give them to the scripts."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
            if mode in ("RGB", "RGBA") and im.format == "PNG" and any(";16" in str(t.args) for t in im.tile):
                mode = "RGB;16"  # Pillow opens 16-bit colour PNGs as 8-bit RGB (the high byte)
            if mode in _REFUSED_MODES or mode not in ("RGB", "RGBA"):
                what = _REFUSED_MODES.get(mode, f"an image of mode {mode!r}")
                raise ImageError(f"{path} is {what}; the paper's MATLAB scripts score only 3-channel 8-bit RGB "
                                 f"images: convert it to RGB, or use --protocol basicsr (which converts as "
                                 f"OpenCV reads)")
            note = f"{path.name} has an alpha channel: ignored, as MATLAB's imread returns it apart" \
                if mode == "RGBA" else None
            arr = np.array(im.convert("RGB"), dtype=np.uint8) if read else None
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot read image {path}: {exc}") from exc
    return arr, (h, w), note


def read_scored_image(path: str | os.PathLike, protocol: str) -> tuple[np.ndarray, str | None]:
    """The image at ``path`` as ``protocol`` reads it: ``[H, W, 3]`` uint8 RGB, and a note on what
    was done to it (or None)."""
    if protocol == "basicsr":
        return read_image_uint8(path), None
    arr, _, note = _open_for_matlab(Path(path), read=True)
    return arr, note


def _probe(path: Path, protocol: str) -> tuple[int, int]:
    if protocol == "basicsr":
        from .imageio import probe_image

        return probe_image(path)
    return _open_for_matlab(path, read=False)[1]


ProgressFn = Callable[[int, int, dict], None]


def score_folders(results: str | os.PathLike, targets: str | os.PathLike, *, protocol: str = "matlab-rain200",
                  pair_by: str = "name", progress: ProgressFn | None = None,
                  note: Callable[[str], None] | None = None) -> dict[str, Any]:
    """PSNR and SSIM of every result against its target under ``protocol``.

    Returns ``{'protocol', 'description', 'pair_by', 'results', 'targets', 'count', 'images':
    [{'name', 'target', 'psnr', 'ssim'}], 'mean': {'psnr', 'ssim'}}``; the means are the plain means
    the scripts print (infinite when a value is). Every pair's header is checked (readable, its
    mode, equal sizes) before any is scored. ``note(text)`` receives what was done to an image
    (alpha dropped, SSIM -inf below the window); ``progress(i, n, row)`` follows each image."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    pairs = pair_images(results, targets, pair_by)
    for res, tgt in pairs:
        (h, w), (th, tw) = _probe(res, protocol), _probe(tgt, protocol)
        if (h, w) != (th, tw):
            raise ImageError(f"{res} is {h}x{w} but its target {tgt} is {th}x{tw}")
        small = small_image_note(h, w, protocol)
        if small and protocol == "basicsr":
            raise ImageError(f"{res}: {small}; the MATLAB protocols score it with SSIM -inf")
    rows = []
    for i, (res, tgt) in enumerate(pairs, 1):
        a, note_a = read_scored_image(res, protocol)
        b, note_b = read_scored_image(tgt, protocol)
        if a.shape != b.shape:  # a header that lied about the size
            raise ImageError(f"{res} is {a.shape[0]}x{a.shape[1]} but its target {tgt} is {b.shape[0]}x{b.shape[1]}")
        small = small_image_note(a.shape[0], a.shape[1], protocol)
        for text in (note_a, note_b, small and f"{res.name}: {small}"):
            if text and note is not None:
                note(text)
        psnr, ssim = score_pair(a, b, protocol)
        rows.append({"name": res.name, "target": tgt.name, "psnr": psnr, "ssim": ssim})
        if progress is not None:
            progress(i, len(pairs), rows[-1])
    return {
        "protocol": protocol,
        "description": PROTOCOLS[protocol],
        "pair_by": pair_by,
        "results": str(results),
        "targets": str(targets),
        "count": len(rows),
        "images": rows,
        "mean": {"psnr": sum(r["psnr"] for r in rows) / len(rows), "ssim": sum(r["ssim"] for r in rows) / len(rows)},
    }


def _fmt(v: float, digits: int) -> str:
    return f"{v:.{digits}f}" if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def format_score_report(report: dict[str, Any]) -> str:
    """The report of :func:`score_folders` as text: the protocol, one row per image, the means."""
    width = max([24, *(len(r["name"]) for r in report["images"])])
    twidth = max([12, *(len(r["target"]) for r in report["images"])])
    lines = [f"protocol: {report['protocol']}: {report['description']}",
             f"{'image':<{width}} {'target':<{twidth}} {'PSNR(Y)':>9} {'SSIM(Y)':>8}"]
    lines += [f"{r['name']:<{width}} {r['target']:<{twidth}} {_fmt(r['psnr'], 4):>9} {_fmt(r['ssim'], 4):>8}"
              for r in report["images"]]
    mean = report["mean"]
    lines.append(f"{'mean of ' + str(report['count']):<{width}} {'':<{twidth}} {_fmt(mean['psnr'], 4):>9} "
                 f"{_fmt(mean['ssim'], 4):>8}")
    return "\n".join(lines)
