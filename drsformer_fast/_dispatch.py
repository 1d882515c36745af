"""Which implementation runs for a tensor: Triton on a GPU, Triton's interpreter, or PyTorch.

The library never sets ``TRITON_INTERPRET``: the tests and the command line's no-GPU self-check
choose the interpreter by setting it before Triton is imported. Without it, CPU tensors take the
plain-PyTorch path (the same fused algebra, written with torch ops).
"""

from __future__ import annotations

import torch

TRITON = "triton"
INTERPRETER = "triton-interpreter"
TORCH = "torch"


_STATE: tuple[bool, bool, str] | None = None


@torch.compiler.assume_constant_result  # a process-wide constant: torch.compile reads it, no tracing
def _kernels_state() -> tuple[bool, bool, str]:
    """(importable, interpreted, reason) of ``drsformer_fast.kernels``, decided once per process."""
    global _STATE
    if _STATE is None:
        try:
            from .kernels._utils import is_interpreter

            _STATE = (True, is_interpreter(), "")
        except Exception as exc:  # no triton on this platform, or a broken install: say so when asked
            _STATE = (False, False, f"{type(exc).__name__}: {exc}")
    return _STATE


def kernel_path(x: torch.Tensor | torch.device | str) -> str:
    """The path the fast modules take for a tensor on this device: ``"triton"`` (CUDA),
    ``"triton-interpreter"`` (Triton's CPU interpreter, chosen by ``TRITON_INTERPRET=1``), or
    ``"torch"`` (plain PyTorch math).
    """
    device = x.device if isinstance(x, torch.Tensor) else torch.device(x)
    available, interpreted, _ = _kernels_state()
    if not available:
        return TORCH
    if interpreted and device.type in ("cpu", "cuda"):
        return INTERPRETER
    if device.type == "cuda" and torch.version.cuda is not None:
        return TRITON
    return TORCH


def uses_triton(x: torch.Tensor) -> bool:
    return kernel_path(x) != TORCH


def kernels_unavailable_reason() -> str:
    """Why the Triton kernels cannot be imported ('' when they can)."""
    return _kernels_state()[2]
