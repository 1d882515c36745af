"""The tolerance rule shared by the test suite and ``drsformer-fast selfcheck``.

A kernel computing in precision ``p`` is compared with a float64 reference. Its error may not
exceed ``mult`` times the error PyTorch's own implementation makes at the same precision (also
against the float64 reference), plus a floor:

    err(kernel, ref64) <= mult * err(torch_p, ref64) + floor_p

``mult`` is 4: the fused kernels sum in another order than PyTorch but at the same precision with
fp32 accumulation, so their error is of the same order. The floor covers the cases where PyTorch's
error happens to be ~0 (a pure copy, a lucky rounding): a few units of the precision's rounding,
fp32 2e-6, fp16 4e-3, bf16 3e-2 (unit roundoff 6e-8, 4.9e-4, 3.9e-3, times the ~sqrt(K) growth of
K-term reductions for K up to ~1e3).

Tensors of fewer than 16 elements (the scalar gradients of temperature and attn1..attn4) get 10x
the floor: each is ONE sample of PyTorch's rounding error, which can be lucky (1.5e-9 was seen),
and they are sums of B*C*C*N products (1e4 to 1e6 terms) whose fp32 error is of order
sqrt(K)*u ~ 1e-5.
"""

from __future__ import annotations

import torch

MULT = 4.0
FLOORS = {torch.float32: 2e-6, torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float64: 1e-12}
SMALL_TENSOR = 16
SMALL_TENSOR_FLOOR_FACTOR = 10.0


def floor_for(dtype: torch.dtype, numel: int) -> float:
    return FLOORS[dtype] * (SMALL_TENSOR_FLOOR_FACTOR if numel < SMALL_TENSOR else 1.0)


def bound(torch_error: float, dtype: torch.dtype, numel: int, mult: float = MULT) -> float:
    return mult * torch_error + floor_for(dtype, numel)


def relative_errors(actual: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(||a - r|| / ||r||, max|a - r| / max|r|), in float64; inf if ``actual`` has NaN/inf."""
    a = actual.detach().to(torch.float64).cpu()
    r = ref.detach().to(torch.float64).cpu()
    if not torch.isfinite(a).all():
        return float("inf"), float("inf")
    if r.numel() == 0:
        return 0.0, 0.0
    diff = (a - r).abs()
    return (a - r).norm().item() / (r.norm().item() or 1.0), diff.max().item() / (r.abs().max().item() or 1.0)
