"""Shapes and the timing helper shared by the microbenchmarks (``benchmarks/``) and ``drsformer-fast bench``.

Shapes are those DRSformer really runs (default config: dim 48, heads 1/2/4/8, the decoder's level
1 at 96 channels with 1 head): inference on a 256x256 image (batch 1, each level at its own
resolution) and a training step on 4x128x128 crops (the original recipe).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

# (name, channels, heads, downsampling factor of the level)
LEVELS = (
    ("enc1", 48, 1, 1),
    ("enc2", 96, 2, 2),
    ("enc3", 192, 4, 4),
    ("latent", 384, 8, 8),
    ("dec1", 96, 1, 1),
)
SCENARIOS = (("infer256", 1, 256), ("train4x128", 4, 128))


@dataclass(frozen=True)
class BlockShape:
    level: str
    scenario: str
    dim: int
    heads: int
    batch: int
    height: int
    width: int

    @property
    def id(self) -> str:
        return f"{self.scenario}-{self.level}-{self.batch}x{self.dim}x{self.height}x{self.width}"


def block_shapes() -> list[BlockShape]:
    """Every transformer-block shape of the default model, for both scenarios."""
    return [
        BlockShape(level, scen, dim, heads, batch, size // f, size // f)
        for scen, batch, size in SCENARIOS
        for level, dim, heads, f in LEVELS
    ]


# the MEFC compensators of the default model: encoder_level0 at dim, refinement at 2 dim (full resolution)
MEFC_LEVELS = (("enc0", 48), ("refinement", 96))


def mefc_shapes() -> list[BlockShape]:
    """Every MEFC shape of the default model, for both scenarios (``heads`` is 0: MEFC has none)."""
    return [BlockShape(level, scen, dim, 0, batch, size, size)
            for scen, batch, size in SCENARIOS for level, dim in MEFC_LEVELS]


def ffn_hidden(dim: int, ffn_expansion_factor: float = 2.66) -> int:
    return int(dim * ffn_expansion_factor)


def cuda_time_ms(fn: Callable[[], object], *, warmup: int = 5, repeats: int = 20) -> dict:
    """Median (and min, max) milliseconds of ``fn()`` on the current CUDA stream, from CUDA events.

    Warm-up calls (compilation, autotuning, allocator growth) are excluded.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "repeats": repeats}


def peak_memory_bytes(fn: Callable[[], object]) -> int:
    """Peak CUDA memory allocated during one call of ``fn`` (above what was allocated before)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base
