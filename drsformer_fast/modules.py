"""Drop-in ``nn.Module`` s backed by the fused ops, with the original parameter names and shapes.

Each module runs Triton kernels for CUDA tensors (or under Triton's interpreter) and plain PyTorch
math otherwise; :meth:`kernel_path` says which one a given input takes.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import ops
from ._dispatch import kernel_path


class _PathMixin:
    @staticmethod
    def kernel_path(x: torch.Tensor) -> str:
        """``"triton"``, ``"triton-interpreter"`` or ``"torch"``: the path ``forward(x)`` runs."""
        return kernel_path(x)


class _LayerNormBody(nn.Module):
    """Holds ``weight`` (and ``bias`` for WithBias) under the original's ``body.`` prefix."""

    def __init__(self, dim: int, with_bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        if with_bias:
            self.bias = nn.Parameter(torch.zeros(dim))
        else:
            self.register_parameter("bias", None)


class ChannelLayerNorm(_PathMixin, nn.Module):
    """Fast replacement of the original ``LayerNorm(dim, LayerNorm_type)`` of NCHW tensors.

    State-dict keys: ``body.weight`` (+ ``body.bias`` unless ``LayerNorm_type == 'BiasFree'``).
    """

    def __init__(self, dim: int, LayerNorm_type: str = "WithBias"):  # noqa: N803 (original keyword)
        super().__init__()
        self.dim = dim
        self.body = _LayerNormBody(dim, with_bias=LayerNorm_type != "BiasFree")

    @property
    def with_bias(self) -> bool:
        return self.body.bias is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(f"ChannelLayerNorm({self.dim}) expects [B, {self.dim}, H, W], got {tuple(x.shape)}")
        return ops.layer_norm(x, self.body.weight, self.body.bias)

    def extra_repr(self) -> str:
        return f"{self.dim}, LayerNorm_type={'WithBias' if self.with_bias else 'BiasFree'}"
