"""Microbenchmarks (pytest-benchmark). They need an NVIDIA GPU and skip cleanly without one.

    python -m pytest benchmarks --benchmark-json benchmarks/results/<date>-<gpu>-micro.json

Every suite uses the same shapes (``drsformer_fast.perf.benchmarking.block_shapes()`` for the blocks, its
``SCENARIOS`` for the whole model) and the same timing (:func:`run_cuda`: pytest-benchmark rounds,
the GPU synchronised inside each round, warm-up rounds excluded). Variants: the original in eager
mode, the original under ``torch.compile``, and the fused implementation; passes: forward
(``no_grad``) and forward+backward; precisions fp32 and bf16 (``torch.autocast``, as the model is
used). Each benchmark records in ``extra_info`` the shape, variant, pass and precision, and the
bytes it must move with the GB/s achieved: for the fused variant the compulsory bytes of its
kernels (the byte tables of the kernel docstrings), for the original in eager mode its op-by-op
traffic (each ATen op reading its inputs and writing its outputs once); see
``drsformer_fast/perf/accounting.py``. Select with ``-k``: e.g. ``-k "not compiled"`` leaves out the
slow-to-compile variant.

``DRSFORMER_FAST_BENCH_SMOKE=1`` runs every non-compiled benchmark on the CPU at tiny shapes, in
Triton's interpreter, for one round: a check that the suites run (``tests/perf/test_bench.py``), not a
measurement. It sets ``TRITON_INTERPRET`` before Triton is imported, like
``tests/conftest.py`` (the library never does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

SMOKE = os.environ.get("DRSFORMER_FAST_BENCH_SMOKE") == "1"
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from drsformer_fast.perf import accounting, benchmarking  # noqa: E402

HAS_GPU = torch.cuda.is_available() and not SMOKE
DEVICE = torch.device("cuda") if HAS_GPU else torch.device("cpu")
requires_gpu = pytest.mark.skipif(not (HAS_GPU or SMOKE), reason="benchmarks need an NVIDIA GPU")

VARIANTS = ("original", "original-compiled", "fused")
PASSES = ("forward", "forward-backward")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def block_shapes() -> list[benchmarking.BlockShape]:
    """The shared block shapes; in smoke mode one tiny shape per scenario (level-1 width, 8x8)."""
    shapes = benchmarking.block_shapes()
    if SMOKE:  # the first shape only (infer256, level 1), at batch 2 (batch > 1 takes other paths) and 8x8
        shapes = [dataclasses.replace(shapes[0], batch=2, height=8, width=8)]
    return shapes


def variants() -> list[str]:
    return [v for v in VARIANTS if not (SMOKE and v.endswith("compiled"))]


def dtypes() -> list[str]:
    # the interpreter has no bf16 arithmetic
    return ["fp32"] if SMOKE else list(DTYPES)


class Autocast(torch.nn.Module):
    """Runs ``module`` under ``torch.autocast`` at ``dtype`` (nothing for fp32)."""

    def __init__(self, module: torch.nn.Module, dtype: str):
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, x):
        ctx = (contextlib.nullcontext() if self.dtype == "fp32"
               else torch.autocast(x.device.type, dtype=DTYPES[self.dtype]))
        with ctx:
            return self.module(x)


def pass_fn(module: torch.nn.Module, x: torch.Tensor, pass_: str):
    """The callable a benchmark times: a ``no_grad`` forward, or forward + backward from a fixed
    upstream gradient (``autograd.grad``: nothing accumulates between rounds)."""
    if pass_ == "forward":
        def forward():
            with torch.no_grad():
                return module(x)

        return forward
    x = x.detach().requires_grad_()
    leaves = [x] + [p for p in module.parameters() if p.requires_grad]
    grad = torch.randn_like(x)

    def forward_backward():
        return torch.autograd.grad(module(x), leaves, grad, allow_unused=True)

    return forward_backward


def bytes_moved(module: torch.nn.Module, x: torch.Tensor, pass_: str, variant: str) -> tuple[int | None, str | None]:
    """(bytes, what they are) for the GB/s figure; None for compiled variants (inductor's own fusion)."""
    if variant.endswith("compiled"):
        return None, None
    prof = accounting.profile(module, x, backward=pass_ != "forward")
    records = prof.forward + prof.backward
    if variant == "fused":
        return (sum(r.read + r.written for r in records if r.kind == "fused"),
                "compulsory bytes of the fused kernels (kernel docstrings' byte tables)")
    return (accounting.Profile.bytes_of(records),
            "op by op: each ATen op reads its inputs and writes its outputs once")


def record(benchmark, **info) -> None:
    benchmark.extra_info.update({k: v for k, v in info.items() if v is not None})


def run_cuda(benchmark, fn, rounds: int = 20, warmup_rounds: int = 5, bytes_moved: int | None = None):
    """Time ``fn`` with pytest-benchmark, synchronising so the GPU work is inside each round; with
    ``bytes_moved``, record the GB/s of the median round in ``extra_info``."""

    if SMOKE:  # a check that the suite runs, not a measurement
        rounds, warmup_rounds = 1, 0

    def call():
        fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    result = benchmark.pedantic(call, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    stats = getattr(benchmark, "stats", None)
    if bytes_moved and stats is not None and stats.stats.median > 0:
        benchmark.extra_info["gbps"] = bytes_moved / stats.stats.median / 1e9
    return result


def maybe_compile(module: torch.nn.Module, variant: str) -> torch.nn.Module:
    if variant.endswith("compiled"):
        torch._dynamo.reset()  # every compiled benchmark compiles afresh: no cache-limit fallback to eager
        return torch.compile(module)
    return module


def bench_block(benchmark, module: torch.nn.Module, shape: benchmarking.BlockShape, variant: str, pass_: str,
                dtype: str, block: str, extra_info: dict | None = None):
    """The body of every block benchmark: ``module`` (original or fused) on ``shape``. Records the common
    ``extra_info`` (plus ``extra_info``), the peak memory of one call on a GPU, then times it."""
    torch.manual_seed(0)
    module = Autocast(module.to(DEVICE), dtype)
    x = torch.randn(shape.batch, shape.dim, shape.height, shape.width, device=DEVICE)
    nbytes, source = bytes_moved(module, x, pass_, variant)
    fn = pass_fn(maybe_compile(module, variant), x, pass_)
    if not SMOKE:
        fn()  # compile / first launch outside the peak-memory call
    record(benchmark, block=block, shape=shape.id, scenario=shape.scenario, level=shape.level,
           input=[shape.batch, shape.dim, shape.height, shape.width], heads=shape.heads, variant=variant,
           **{"pass": pass_}, dtype=dtype, bytes_moved=nbytes, bytes_source=source,
           peak_memory_bytes=benchmarking.peak_memory_bytes(fn) if DEVICE.type == "cuda" else None,
           **(extra_info or {}))
    run_cuda(benchmark, fn, bytes_moved=nbytes)
