"""PLACEHOLDER for the fused MEFC backward kernels (replaced by the Triton file at merge).

Implements the contract of ``kernels/mefc_backward.py`` with the plain-PyTorch recompute of
``drsformer_fast.ops.mefc``.
"""

from __future__ import annotations


def mefc_step_bwd(g, s, s_out, dw1, w1, dw2, dwd, m, needs_input_grad=True):
    """(ds or None, d_dw1, d_w1, d_dw2, d_dwd, dm): weight gradients and dm fp32, ds in s's dtype."""
    from ..ops.mefc import step_torch_bwd

    return step_torch_bwd(g, s, dw1, w1, dw2, dwd, m, needs_input_grad)


def traffic_bytes(batch: int, channels: int, height: int, width: int, elem_size: int = 4) -> int:
    """Estimated compulsory bytes of one step backward, in C-planes: recompute t (read s, write 4C:
    5), ReLU masks, dm partials and dt (read g, s_out, s, t; write dt and a partial ds: 12), dW1 and
    du (read dt, s; write du: 9), ds (read du and the partial ds, write ds: 6) = 32 C-planes."""
    return 32 * batch * channels * height * width * elem_size
