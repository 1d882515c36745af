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


class MixedScaleFeedForward(_PathMixin, nn.Module):
    """Fast replacement of the original ``FeedForward(dim, ffn_expansion_factor, bias)`` (MSFN).

    Same submodules and parameter names as the original (``project_in``, ``dwconv3x3``,
    ``dwconv5x5``, ``dwconv3x3_1``, ``dwconv5x5_1``, ``project_out``; ``.bias`` only when
    ``bias=True``), so an original state dict loads unchanged. ``forward(x, residual=None)``
    returns ``ffn(x) + residual``, the residual added inside the last kernel.
    """

    def __init__(self, dim: int, ffn_expansion_factor: float = 2.66, bias: bool = False, *,
                 hidden_features: int | None = None, device=None, dtype=None):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor) if hidden_features is None else int(hidden_features)
        h2 = 2 * hidden
        kw = {"bias": bias, "device": device, "dtype": dtype}
        self.dim = dim
        self.hidden_features = hidden
        self.project_in = nn.Conv2d(dim, h2, kernel_size=1, **kw)
        self.dwconv3x3 = nn.Conv2d(h2, h2, kernel_size=3, stride=1, padding=1, groups=h2, **kw)
        self.dwconv5x5 = nn.Conv2d(h2, h2, kernel_size=5, stride=1, padding=2, groups=h2, **kw)
        self.dwconv3x3_1 = nn.Conv2d(h2, hidden, kernel_size=3, stride=1, padding=1, groups=hidden, **kw)
        self.dwconv5x5_1 = nn.Conv2d(h2, hidden, kernel_size=5, stride=1, padding=2, groups=hidden, **kw)
        self.project_out = nn.Conv2d(h2, dim, kernel_size=1, **kw)

    _CONVS = ("project_in", "dwconv3x3", "dwconv5x5", "dwconv3x3_1", "dwconv5x5_1", "project_out")

    @classmethod
    def from_original(cls, m: nn.Module) -> MixedScaleFeedForward:
        """A fast module that shares ``m``'s Parameter objects (no copies): training either one trains
        both. ``m`` is an original ``FeedForward`` (or anything with the same six convolutions)."""
        w_in = m.project_in.weight
        fast = cls(w_in.shape[1], bias=m.project_in.bias is not None, hidden_features=w_in.shape[0] // 2,
                   device="meta")
        for name in cls._CONVS:
            src, dst = getattr(m, name), getattr(fast, name)
            if dst.weight.shape != src.weight.shape:
                raise ValueError(f"{name}.weight has shape {tuple(src.weight.shape)}, expected "
                                 f"{tuple(dst.weight.shape)}")
            dst.weight = src.weight
            if (src.bias is None) != (dst.bias is None):
                raise ValueError(f"{name}: bias presence differs from project_in's")
            if src.bias is not None:
                dst.bias = src.bias
        return fast

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(f"MixedScaleFeedForward({self.dim}) expects [B, {self.dim}, H, W], got {tuple(x.shape)}")
        return ops.mixed_scale_feed_forward(
            x,
            self.project_in.weight, self.project_in.bias,
            self.dwconv3x3.weight, self.dwconv3x3.bias,
            self.dwconv5x5.weight, self.dwconv5x5.bias,
            self.dwconv3x3_1.weight, self.dwconv3x3_1.bias,
            self.dwconv5x5_1.weight, self.dwconv5x5_1.bias,
            self.project_out.weight, self.project_out.bias,
            residual=residual,
        )

    def extra_repr(self) -> str:
        return f"{self.dim}, hidden_features={self.hidden_features}, bias={self.project_in.bias is not None}"
