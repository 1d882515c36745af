"""PLACEHOLDER for the fused MEFC forward kernels (replaced by the Triton file at merge).

Implements the contract of ``kernels/mefc.py`` with the plain-PyTorch step of
``drsformer_fast.ops.mefc`` so that the op layer, modules and tests can be built against it.
"""

from __future__ import annotations

import torch


def sep_inner_fwd(s, dw1, w1) -> torch.Tensor:
    """t: [B, 4, C, H, W] in s's dtype: relu(W1_o dw1_o(s)) of the four sep_convs."""
    from ..ops.mefc import sep_inner_torch

    return sep_inner_torch(s, dw1, w1)


def mefc_step_fwd(s, dw1, w1, dw2, dwd, m) -> torch.Tensor:
    """s_out: [B, C, H, W] in s's dtype: one MEFC step."""
    from ..ops.mefc import step_torch

    return step_torch(s, dw1, w1, dw2, dwd, m).to(s.dtype)


def traffic_bytes(batch: int, channels: int, height: int, width: int, elem_size: int = 4) -> int:
    """Compulsory bytes of one step forward, planned design: read s (C planes), write t (4C), read t
    (4C) and s (C), write s_out (C) = 11 C-planes."""
    return 11 * batch * channels * height * width * elem_size
