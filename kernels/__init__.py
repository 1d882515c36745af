"""Triton kernels of drsformer-fast (installed as ``drsformer_fast.kernels``).

One file per op: ``@triton.jit`` kernels and their launchers (tensors in, tensors out, no
autograd). The autograd wiring, custom ops and modules live in ``drsformer_fast``.
"""

from . import dwconv, feedforward, layernorm

KERNEL_MODULES = (layernorm, dwconv, feedforward)

__all__ = ["dwconv", "feedforward", "layernorm", "KERNEL_MODULES"]
