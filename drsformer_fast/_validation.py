"""Input checks shared by the ops (before dispatch) and the kernel launchers (before launch)."""

from __future__ import annotations

import torch

# Half-precision inputs are computed with fp32 accumulation; these are the dtypes the fused ops take.
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _dtype_name(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


def check_tensor(name: str, t, *, ndim: int | None = None, dtypes=None, device=None, shape=None) -> None:
    """Raise a clear error naming what is wrong: type, rank, dtype, device or shape."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(_dtype_name(d) for d in dtypes)
        raise TypeError(f"{name} has dtype {_dtype_name(t.dtype)}; supported: {names}")
    if device is not None and t.device != torch.device(device):
        raise ValueError(f"{name} is on {t.device} but the input is on {device}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_params(x: torch.Tensor, **params) -> None:
    """Every given parameter (None allowed) is a tensor on x's device of a floating dtype."""
    for name, p in params.items():
        if p is None:
            continue
        check_tensor(name, p, device=x.device)
        if not p.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {_dtype_name(p.dtype)}")
