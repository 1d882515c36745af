"""Reading and writing images for the command line (Pillow), with the original test script's conventions.

The original reads with OpenCV (``cv2.imread``, 8-bit, converted to RGB, EXIF orientation applied) and
writes PNGs of ``skimage.img_as_ubyte(x)``, i.e. ``rint(x * 255)`` in float32. Here: any Pillow
image becomes 8-bit RGB (grey replicated, alpha dropped, 16-bit grey reduced to its high byte like
OpenCV), EXIF orientation is applied, and PNGs are written as ``round(x * 255)`` (round half to even).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: scoring images needs only numpy and Pillow
    import torch

__all__ = ["IMAGE_EXTENSIONS", "ImageError", "find_images", "is_image_file", "probe_image", "read_image",
           "read_image_uint8", "to_uint8", "write_png"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


class ImageError(ValueError):
    """An image (or image folder) that cannot be used; the message names the file."""


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def find_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The image files named by ``inputs``: files as given, folders listed (not recursively) for
    png/jpg/jpeg/bmp files in any letter case, in natural order (``2.png`` before ``10.png``).
    Raises :class:`ImageError` for a path that does not exist, a file of another type, or when
    no image is found at all."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted((p for p in path.iterdir() if p.is_file() and is_image_file(p)), key=_natural_key))
        elif path.is_file():
            if not is_image_file(path):
                raise ImageError(f"{path}: not a supported image type (supported: {', '.join(IMAGE_EXTENSIONS)})")
            found.append(path)
        else:
            raise ImageError(f"{path}: no such file or folder")
    if not found:
        names = ", ".join(str(p) for p in inputs)
        raise ImageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {names}")
    return found


def probe_image(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of the image at ``path`` from its header (cheap); :class:`ImageError` if
    Pillow cannot identify it. Decoding errors of a damaged body show up only when it is read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot read image {path}: {exc}") from exc
    return h, w


def read_image_uint8(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` as an ``[H, W, 3]`` uint8 RGB array; :class:`ImageError` if unreadable."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                arr = (np.array(im, dtype=np.uint16) >> 8).astype(np.uint8)
            elif im.mode in ("I", "F"):
                raise ImageError(f"{path}: unsupported image mode {im.mode!r} (32-bit)")
            else:
                arr = np.array(im.convert("RGB"), dtype=np.uint8)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot read image {path}: {exc}") from exc
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """The image at ``path`` as a ``[3, H, W]`` float32 RGB tensor in [0, 1] (uint8 / 255)."""
    import torch

    arr = read_image_uint8(path)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div(255.0)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` (or ``[1, 3, H, W]``) values in [0, 1] -> ``[H, W, 3]`` uint8, as the original's
    ``img_as_ubyte``: ``rint(x * 255)`` in float32 (values outside [0, 1] are clamped first)."""
    import torch

    if img.dim() == 4:
        if img.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {img.shape[0]}")
        img = img[0]
    if img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] image, got shape {list(img.shape)}")
    x = img.detach().to("cpu", torch.float32).clamp(0, 1).mul(255.0).round()
    return x.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def write_png(path: str | os.PathLike, img: torch.Tensor | np.ndarray) -> None:
    """Write ``img`` (a [3, H, W] tensor in [0, 1], or an [H, W, 3] uint8 array) as an RGB PNG."""
    from PIL import Image

    arr = img if isinstance(img, np.ndarray) else to_uint8(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] uint8 array, got {arr.dtype} {list(arr.shape)}")
    Image.fromarray(arr).save(path, format="PNG")
