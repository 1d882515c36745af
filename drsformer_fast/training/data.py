"""Training and validation data as the original's ``Dataset_PairedImage`` + ``EnlargedSampler``.

Pairs: every image of ``dataroot_gt`` (png/jpg/jpeg/bmp, natural order) is paired with the input of
``dataroot_lq`` whose stem is ``filename_tmpl.format(<gt stem>)`` (any image extension). A target
without an input, an input without a target, or two sizes that differ are errors naming the file.

Order, as ``EnlargedSampler``: in epoch ``e`` a permutation of ``total = ceil(N * ratio / world) *
world`` positions (``torch.randperm`` with a generator seeded with ``e``; ``use_shuffle: false``
keeps them in order, the original always shuffles), image ``perm[p] % N`` at position ``p``, rank
``r`` taking positions ``r, r + world, ...``, batches of ``batch_size_per_gpu`` with the last
partial batch dropped.

Crops and flips, as ``paired_random_crop`` + ``random_augmentation``: the same ``gt_size`` window of
both images (top, then left, uniform over the positions that fit), then one of the 8 modes of
``data_augmentation`` (identity; flip up-down; rotate 90; rotate 90 + flip; 180; 180 + flip; 270;
270 + flip) when ``geometric_augs``. Unlike the original (each worker's global RNG), the randomness of
a sample comes from a NumPy generator seeded with ``(manual_seed, epoch, position)``: the data are
a function of the options alone, whatever the number of workers, and a resumed run sees exactly
the crops the uninterrupted run saw. Images smaller than ``gt_size`` are an error here (the
original reflect-pads them).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ..images.imageio import IMAGE_EXTENSIONS, ImageError, find_images, probe_image, read_image
from .options import OptionsError

__all__ = ["pair_files", "check_dataset", "epoch_positions", "TrainPairs", "augment", "ValPairs"]


def pair_files(gt_dir: str, lq_dir: str, tmpl: str, where: str) -> list[tuple[Path, Path]]:
    """``[(lq, gt), ...]`` of the two folders (see the module docstring); errors name the key."""
    for key, folder in (("dataroot_gt", gt_dir), ("dataroot_lq", lq_dir)):
        if not os.path.isdir(folder):
            raise OptionsError(f"options: {where}.{key}: folder not found: {folder}")
    try:
        gts = find_images([gt_dir])
    except ImageError as exc:
        raise OptionsError(f"options: {where}.dataroot_gt: {exc}") from exc
    try:
        lqs = find_images([lq_dir])
    except ImageError as exc:
        raise OptionsError(f"options: {where}.dataroot_lq: {exc}") from exc
    by_stem: dict[str, Path] = {}
    for p in lqs:
        if p.stem in by_stem:
            raise OptionsError(f"options: {where}.dataroot_lq: two inputs named {p.stem}: {by_stem[p.stem]} and {p}")
        by_stem[p.stem] = p
    pairs, used = [], set()
    for g in gts:
        stem = tmpl.format(g.stem)
        lq = by_stem.get(stem)
        if lq is None:
            raise OptionsError(f"options: {where}: target {g} has no input {stem}.* in {lq_dir} "
                               f"(filename_tmpl {tmpl!r}; extensions {', '.join(IMAGE_EXTENSIONS)})")
        used.add(stem)
        pairs.append((lq, g))
    extra = [p for s, p in by_stem.items() if s not in used]
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise OptionsError(f"options: {where}: input {extra[0]}{more} has no target in {gt_dir}")
    return pairs


def check_dataset(pairs, where: str, min_size: int | None = None) -> None:
    """Every pair readable (header), both images of the same size, at least ``min_size`` on each side."""
    for lq, gt in pairs:
        try:
            h_lq, w_lq = probe_image(lq)
            h_gt, w_gt = probe_image(gt)
        except ImageError as exc:
            raise OptionsError(f"options: {where}: {exc}") from exc
        if (h_lq, w_lq) != (h_gt, w_gt):
            raise OptionsError(f"options: {where}: input {lq} is {h_lq}x{w_lq} but its target {gt} is {h_gt}x{w_gt}")
        if min_size is not None and (h_gt < min_size or w_gt < min_size):
            raise OptionsError(f"options: {where}.gt_size: image {gt} ({h_gt}x{w_gt}) is smaller than "
                               f"gt_size {min_size}")


def epoch_positions(n: int, world: int, rank: int, ratio: int, epoch: int, shuffle: bool) -> list[tuple[int, int]]:
    """``[(image index, global position), ...]`` of rank ``rank`` in epoch ``epoch`` (EnlargedSampler's order)."""
    num_samples = math.ceil(n * ratio / world)
    total = num_samples * world
    if shuffle:
        g = torch.Generator()
        g.manual_seed(epoch)
        perm = torch.randperm(total, generator=g).tolist()
    else:
        perm = list(range(total))
    return [(perm[p] % n, p) for p in range(rank, total, world)]


def augment(img: torch.Tensor, mode: int) -> torch.Tensor:
    """``data_augmentation(img, mode)`` of the original for a ``[C, H, W]`` tensor (numpy's ``flipud``
    is a flip of H, ``rot90(k)`` a rotation from H towards W)."""
    k, flip = (0, mode == 1) if mode < 2 else ((mode - 2) // 2 + 1, mode % 2 == 1)
    if k:
        img = torch.rot90(img, k, dims=(1, 2))
    if flip:
        img = torch.flip(img, dims=(1,))
    return img.contiguous()


class TrainPairs(torch.utils.data.Dataset):
    """Random ``gt_size`` crops of the pairs; item keys are ``(index, epoch, position)``."""

    def __init__(self, pairs, gt_size: int, geometric_augs: bool, seed: int):
        self.pairs = list(pairs)
        self.gt_size = gt_size
        self.geometric_augs = geometric_augs
        self.seed = seed

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, key):
        index, epoch, position = key
        lq_path, gt_path = self.pairs[index]
        lq, gt = read_image(lq_path), read_image(gt_path)
        if lq.shape != gt.shape:
            raise ImageError(f"input {lq_path} and target {gt_path} differ in size")
        rng = np.random.default_rng([self.seed, epoch, position])
        p = self.gt_size
        h, w = gt.shape[1:]
        if h < p or w < p:
            raise ImageError(f"image {gt_path} ({h}x{w}) is smaller than gt_size {p}")
        top = int(rng.integers(0, h - p + 1))
        left = int(rng.integers(0, w - p + 1))
        lq, gt = lq[:, top:top + p, left:left + p], gt[:, top:top + p, left:left + p]
        if self.geometric_augs:
            mode = int(rng.integers(0, 8))
            lq, gt = augment(lq, mode), augment(gt, mode)
        return {"lq": lq.contiguous(), "gt": gt.contiguous()}


class ValPairs(torch.utils.data.Dataset):
    """Whole images for validation (batch 1, in order)."""

    def __init__(self, pairs):
        self.pairs = list(pairs)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        lq_path, gt_path = self.pairs[index]
        return {"lq": read_image(lq_path), "gt": read_image(gt_path), "name": lq_path.stem}


def seed_worker(worker_id: int, *, base: int) -> None:
    """Seeds of a data-loader worker (the original's ``worker_init_fn``: seed + rank * workers + id).
    The crops do not depend on them (see the module docstring); other libraries' randomness would."""
    import random

    seed = base + worker_id
    np.random.seed(seed % 2**32)
    random.seed(seed)
    torch.manual_seed(seed)
