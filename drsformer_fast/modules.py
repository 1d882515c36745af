"""Drop-in ``nn.Module`` s backed by the fused ops, with the original parameter names and shapes.

Each module runs Triton kernels for CUDA tensors (or under Triton's interpreter) and plain PyTorch
math otherwise; :meth:`kernel_path` says which one a given input takes.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import ops
from ._dispatch import kernel_path


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the fused blocks compute in: the autocast dtype under autocast, else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _check_channels(module: nn.Module, x, channels: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{type(module).__name__}({channels} channels) expects [B, {channels}, H, W], got {shape}")


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

    @classmethod
    def from_original(cls, m: nn.Module) -> ChannelLayerNorm:
        """A fast module around the original's ``body`` (same Parameter objects, no copies)."""
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast.dim = m.body.weight.shape[0]
        fast.body = m.body
        return fast

    @property
    def with_bias(self) -> bool:
        return getattr(self.body, "bias", None) is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(self, x, self.dim)
        return ops.layer_norm(x, self.body.weight, getattr(self.body, "bias", None))

    def extra_repr(self) -> str:
        return f"{self.dim}, LayerNorm_type={'WithBias' if self.with_bias else 'BiasFree'}"


class TopKSparseAttention(_PathMixin, nn.Module):
    """Fast replacement of the original top-k sparse ``Attention(dim, num_heads, bias)``.

    Same parameters and names (``temperature``, ``qkv``, ``qkv_dwconv``, ``project_out``,
    ``attn1``..``attn4``), so ``load_state_dict`` of an original block works. ``forward(x, residual)``
    returns ``residual + attn(x)`` with the add fused into the last kernel.
    Ties in the top-k selection go to the lower channel index (the original's torch.topk leaves
    them unspecified; without ties the two agree).
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} does not split into num_heads={num_heads} heads")
        self.dim = dim
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, stride=1, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self.attn1 = nn.Parameter(torch.tensor([0.2]))
        self.attn2 = nn.Parameter(torch.tensor([0.2]))
        self.attn3 = nn.Parameter(torch.tensor([0.2]))
        self.attn4 = nn.Parameter(torch.tensor([0.2]))

    @classmethod
    def from_original(cls, m: nn.Module) -> TopKSparseAttention:
        """A fast module that shares ``m``'s Parameter objects (no copies): optimizers built on the
        original keep working and the state dict is unchanged."""
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast.dim = m.qkv.in_channels
        fast.num_heads = m.temperature.shape[0]
        for name in ("temperature", "attn1", "attn2", "attn3", "attn4"):
            setattr(fast, name, getattr(m, name))
        for name in ("qkv", "qkv_dwconv", "project_out"):
            setattr(fast, name, getattr(m, name))
        return fast

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        _check_channels(self, x, self.dim)
        dtype = _compute_dtype(x)
        return ops.topk_sparse_attention(
            x.to(dtype), self.qkv.weight, self.qkv.bias, self.qkv_dwconv.weight, self.qkv_dwconv.bias,
            self.temperature, (self.attn1, self.attn2, self.attn3, self.attn4), self.project_out.weight,
            self.project_out.bias, self.num_heads, residual,
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, bias={self.qkv.bias is not None}"


class FastTransformerBlock(nn.Module):
    """Fast replacement of the original ``TransformerBlock``: ``x + attn(norm1(x))`` then
    ``x + ffn(norm2(x))``, with both residual adds fused into the last kernel of each branch.

    Children keep the original names (``norm1``, ``attn``, ``norm2``, ``ffn``): same state dict.

    Not fused (yet): each LayerNorm into the 1x1 convolution after it. It would spare one write and
    one read of the normalised tensor (2 of the block's ~48 forward planes, ~4% of its bytes at
    level 1, 256x256) and one saved d-plane per branch (25 of 89 MB saved by a level-1 block), but it
    needs a Triton matmul with a LayerNorm prologue in place of cuBLAS for qkv and project_in, forward
    and backward, which is worth building only once a GPU shows where the block's time goes.
    """

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool,
                 LayerNorm_type: str):  # noqa: N803 (original keyword)
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, LayerNorm_type)
        self.attn = TopKSparseAttention(dim, num_heads, bias)
        self.norm2 = ChannelLayerNorm(dim, LayerNorm_type)
        self.ffn = MixedScaleFeedForward(dim, ffn_expansion_factor, bias)

    @classmethod
    def from_children(cls, norm1: nn.Module, attn: nn.Module, norm2: nn.Module, ffn: nn.Module):
        """A block around existing (fast) children, sharing their parameters."""
        block = cls.__new__(cls)
        nn.Module.__init__(block)
        block.norm1, block.attn, block.norm2, block.ffn = norm1, attn, norm2, ffn
        return block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x), residual=x)
        return self.ffn(self.norm2(x), residual=x)


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
        _check_channels(self, x, self.dim)
        return ops.mixed_scale_feed_forward(
            x.to(_compute_dtype(x)),
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
