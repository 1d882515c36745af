"""Triton kernels of drsformer-fast (installed as ``drsformer_fast.kernels``).

One file per op: ``@triton.jit`` kernels and their launchers (tensors in, tensors out, no
autograd). The autograd wiring, custom ops and modules live in ``drsformer_fast``.
"""

from . import attention, dwconv, feedforward, layernorm, mefc, mefc_backward

KERNEL_MODULES = (layernorm, attention, dwconv, feedforward, mefc, mefc_backward)

__all__ = ["attention", "dwconv", "feedforward", "layernorm", "mefc", "mefc_backward", "KERNEL_MODULES"]
