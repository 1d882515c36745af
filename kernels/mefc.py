"""PLACEHOLDER for the fused MEFC forward (issue 10): plain PyTorch with the contract's signatures,
so that ``kernels/mefc_backward.py`` and its tests run on this branch. At merge the Triton forward
(branch ``mefck``) replaces this file; only its public contract functions are used elsewhere:

- ``sep_inner_fwd(s, dw1, w1) -> t [B, 4, C, H, W]`` in s's dtype, t[:, o] = relu(W1_o dw1_o(s));
- ``mefc_step_fwd(s, dw1, w1, dw2, dwd, m) -> s_out`` with m: [B, C, 8C] fp32 (see mefc_backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SEP_SIZES = (1, 3, 5, 7)
DIL_SIZES = (3, 5, 7)


def sep_inner_fwd(s: torch.Tensor, dw1, w1) -> torch.Tensor:
    B, C, H, W = s.shape
    sf = s.float()
    t = torch.empty((B, 4, C, H, W), device=s.device, dtype=s.dtype)
    for o, k in enumerate(SEP_SIZES):
        a = F.conv2d(sf, dw1[o].detach().float(), padding=k // 2, groups=C)
        t[:, o] = torch.relu(F.conv2d(a, w1[o].detach().float())).to(s.dtype)
    return t


def mefc_step_fwd(s: torch.Tensor, dw1, w1, dw2, dwd, m: torch.Tensor) -> torch.Tensor:
    B, C, H, W = s.shape
    sf = s.float()
    t = sep_inner_fwd(s, dw1, w1).float()
    z = [F.conv2d(t[:, o], dw2[o].detach().float(), padding=k // 2, groups=C) for o, k in enumerate(SEP_SIZES)]
    z += [F.conv2d(sf, dwd[j].detach().float(), padding=k - 1, dilation=2, groups=C) for j, k in enumerate(DIL_SIZES)]
    z.append(F.avg_pool2d(sf, 3, 1, 1, count_include_pad=False))
    pre = torch.einsum("bck,bkn->bcn", m.float(), torch.cat(z, 1).view(B, 8 * C, H * W)).view(B, C, H, W)
    return torch.relu(torch.relu(pre) + sf).to(s.dtype)
