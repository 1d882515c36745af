"""Shared test helpers: random inputs, the tolerance rule, comparisons that say where and by how much.

The tolerance rule itself lives in ``drsformer_fast.perf.tolerance`` (the self-check uses it too):

    err(kernel, ref64) <= 4 * err(torch at the same precision, ref64) + floor(precision)

Errors are measured two ways, both must pass: relative Frobenius norm ``||a - r|| / ||r||`` and a
relative max ``max|a - r| / max|r|`` (the max catches a small wrong tile the norm would average
away). See that module for the floors and why.
"""

from __future__ import annotations

import contextlib

import torch

from drsformer_fast.perf.tolerance import (
    FLOORS,
    MULT,
    SMALL_TENSOR,
    SMALL_TENSOR_FLOOR_FACTOR,
    floor_for,
    relative_errors,
)

__all__ = ["FLOORS", "launch_tiles", "make_generator", "randn", "non_contiguous", "assert_close", "assert_golden",
           "rel_err", "describe_mismatch", "golden_bound", "assert_close_rms"]


def launch_tiles(kind: str):
    """Which tiles the launchers take for a kernel test: "gpu", the GPU's own (the interpreter runs
    them too, so that what an H100 runs is checked), or "interpreter", the interpreter's larger ones
    (the default there: fewer programs). A GPU always takes its own."""
    if kind not in ("gpu", "interpreter"):
        raise ValueError(f"tiles must be 'gpu' or 'interpreter', got {kind!r}")
    if kind == "interpreter":
        return contextlib.nullcontext()
    from drsformer_fast.kernels._utils import gpu_tiles

    return gpu_tiles()


def make_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int, dtype=torch.float32, device="cpu", scale: float = 1.0) -> torch.Tensor:
    """Random normal values drawn on the CPU in float64 (so every dtype/device sees the same draw)."""
    t = torch.randn(*shape, generator=make_generator(seed), dtype=torch.float64) * scale
    return t.to(device=device, dtype=dtype)


def non_contiguous(t: torch.Tensor, kind: str = "pad") -> torch.Tensor:
    """The same values in a non-contiguous layout.

    ``pad``: a view into a larger buffer (every stride differs from the dense one);
    ``channels_last``: NHWC storage; ``transpose``: H and W swapped in storage.
    """
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "transpose":
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if kind == "pad":
        shape = list(t.shape)
        big = torch.full([s + 2 for s in shape[:-1]] + [shape[-1] * 2 + 3], float("nan"), dtype=t.dtype,
                         device=t.device)
        idx = tuple(slice(1, 1 + s) for s in shape[:-1]) + (slice(2, 2 + 2 * shape[-1], 2),)
        view = big[idx]
        view.copy_(t)
        return view
    raise ValueError(kind)


_errors = relative_errors


def describe_mismatch(actual: torch.Tensor, ref: torch.Tensor) -> str:
    a = actual.detach().to(torch.float64).cpu()
    r = ref.detach().to(torch.float64).cpu()
    bad = ~torch.isfinite(a)
    if bad.any():
        idx = bad.nonzero()
        return f"{int(bad.sum())} non-finite values (unwritten?), first at {tuple(idx[0].tolist())}"
    diff = (a - r).abs()
    flat = int(diff.argmax())
    where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
    return (f"max |diff| {diff.max().item():.3e} at {where}: got {a[where].item():.6e}, "
            f"expected {r[where].item():.6e}; mean |diff| {diff.mean().item():.3e}")


def assert_close(name: str, actual: torch.Tensor, ref64: torch.Tensor, torch_lp: torch.Tensor | None = None, *,
                 dtype: torch.dtype | None = None, mult: float = MULT, floor: float | None = None) -> None:
    """Assert ``actual`` is as close to the float64 ``ref64`` as the tolerance rule allows.

    ``torch_lp`` is PyTorch's own result at the precision under test (None: only the floor).
    """
    if actual.shape != ref64.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(ref64.shape)}")
    dtype = dtype or actual.dtype
    if floor is None:
        floor = floor_for(dtype, actual.numel())
    k_norm, k_max = _errors(actual, ref64)
    t_norm, t_max = _errors(torch_lp, ref64) if torch_lp is not None else (0.0, 0.0)
    bound_norm, bound_max = mult * t_norm + floor, mult * t_max + floor
    if not (k_norm <= bound_norm and k_max <= bound_max):
        raise AssertionError(
            f"{name}: relative error norm {k_norm:.3e} (bound {bound_norm:.3e}), max {k_max:.3e} "
            f"(bound {bound_max:.3e}); PyTorch's own error at {dtype}: norm {t_norm:.3e}, max {t_max:.3e}. "
            + describe_mismatch(actual, ref64)
        )


def assert_close_rms(names, actuals, refs64, torch_lps, *, dtype: torch.dtype, mult: float = MULT,
                     ceiling: float = 1.0) -> None:
    """The tolerance rule applied to the root-mean-square of per-tensor relative errors (norm-wise)
    over many tensors, e.g. every parameter gradient of a whole model in half precision.

    Why an aggregate there: each gradient's error against float64 is ONE sample of accumulated
    rounding through the whole network; at fp16 PyTorch's own per-tensor errors range over two
    orders of magnitude (1e-4 to 1e-1 across the parameters of one tiny model), so a per-tensor
    "4x PyTorch" compares against a lucky draw and fails at random. The RMS over ~80 tensors is a
    stable statistic. ``ceiling`` still fails any single tensor whose relative error reaches 1,
    i.e. a gradient that is wrong rather than noisy (the fp32 tests check every tensor on its own).
    """
    errs = [_errors(a, r)[0] for a, r in zip(actuals, refs64)]
    terrs = [_errors(t, r)[0] for t, r in zip(torch_lps, refs64)]
    rms = (sum(e * e for e in errs) / len(errs)) ** 0.5
    trms = (sum(e * e for e in terrs) / len(terrs)) ** 0.5
    bound = mult * trms + FLOORS[dtype]
    worst = max(range(len(errs)), key=lambda i: errs[i])
    report = ", ".join(f"{n} {e:.2e} (PyTorch {t:.2e})" for n, e, t in
                       sorted(zip(names, errs, terrs), key=lambda z: -z[1])[:5])
    if not rms <= bound:
        raise AssertionError(f"RMS relative error {rms:.3e} > bound {bound:.3e} ({mult} x PyTorch's {trms:.3e} at "
                             f"{dtype} + floor); worst: {report}")
    if not errs[worst] < ceiling:
        raise AssertionError(f"{names[worst]}: relative error {errs[worst]:.3e} >= {ceiling}: wrong, not noisy. "
                             + describe_mismatch(actuals[worst], refs64[worst]))


def golden_bound(fp32_err: float, mult: float = 4.0, floor: float = 1e-6) -> float:
    """Golden-file rule: a float32 result may land ``mult`` times as far from the float64 golden
    values as the original code does in float32, plus a floor of a few fp32 roundings."""
    return mult * fp32_err + floor


def assert_golden(name: str, actual: torch.Tensor, golden: torch.Tensor, fp32_err: float, *, mult: float = 4.0,
                  floor: float = 1e-6) -> None:
    err, _ = _errors(actual, golden)
    if actual.numel() < SMALL_TENSOR:  # one sample of rounding in a long sum: drsformer_fast.perf.tolerance
        floor *= SMALL_TENSOR_FLOOR_FACTOR
    bound = golden_bound(fp32_err, mult, floor)
    if not err <= bound:
        raise AssertionError(
            f"{name}: relative error {err:.3e} > bound {bound:.3e} ({mult} x original fp32 error {fp32_err:.3e} "
            f"+ {floor:.0e}). " + describe_mismatch(actual, golden)
        )


def rel_err(actual: torch.Tensor, ref: torch.Tensor) -> float:
    return _errors(actual, ref)[0]
