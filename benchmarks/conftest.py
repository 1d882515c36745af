"""Microbenchmarks (pytest-benchmark). They need an NVIDIA GPU and skip cleanly without one.

    python -m pytest benchmarks --benchmark-json benchmarks/results/<date>-<gpu>.json

Each benchmark records in ``extra_info`` the shape, the variant (original eager, original under
torch.compile, fused) and, for fused kernels, the compulsory bytes moved, so GB/s can be read off.
"""

import pytest
import torch

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="benchmarks need an NVIDIA GPU")


def run_cuda(benchmark, fn, rounds: int = 20, warmup_rounds: int = 5):
    """Time ``fn`` with pytest-benchmark, synchronising so the GPU work is inside each round."""

    def call():
        fn()
        torch.cuda.synchronize()

    return benchmark.pedantic(call, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
