"""Channel LayerNorm as a custom op: ``drsformer_fast::layer_norm`` (+ its backward op)."""

from __future__ import annotations

import torch

from .. import reference
from .._dispatch import uses_triton
from .._validation import SUPPORTED_DTYPES, check_params, check_tensor
from ._eager import call


@torch.library.custom_op("drsformer_fast::layer_norm_fwd", mutates_args=())
def _layer_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from ..kernels.layernorm import layer_norm_fwd

    return layer_norm_fwd(x, weight, bias)


@_layer_norm_fwd.register_fake
def _(x, weight, bias):
    B, C, H, W = x.shape
    stat = x.new_empty((B, H * W), dtype=torch.float32)
    return x.new_empty((B, C, H, W)), stat, torch.empty_like(stat)


@torch.library.custom_op("drsformer_fast::layer_norm_bwd", mutates_args=())
def _layer_norm_bwd(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, has_bias: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from ..kernels.layernorm import layer_norm_bwd

    dx, dw, db = layer_norm_bwd(dy, x, weight, mean, rstd, has_bias)
    return dx, dw, (db if db is not None else dw.new_empty(0))


@_layer_norm_bwd.register_fake
def _(dy, x, weight, mean, rstd, has_bias):
    C = x.shape[1]
    dw = x.new_empty((C,), dtype=torch.float32)
    return torch.empty_like(x, memory_format=torch.contiguous_format), dw, dw.new_empty((C if has_bias else 0,))


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    _, mean, rstd = output
    # mean and rstd are saved for the backward, not differentiable outputs; and no gradient is filled in
    # with zeros for them (the autograd engine's default: two [B, H*W] memsets per call)
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.has_bias = bias is not None
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    if dy is None:  # (y reached the loss through no differentiable path: its gradient is zero)
        dy = torch.zeros_like(x, memory_format=torch.contiguous_format)
    dx, dw, db = call(_layer_norm_bwd, dy, x, weight, mean, rstd, ctx.has_bias)
    return dx, dw.to(weight.dtype), (db.to(ctx.bias_dtype) if ctx.has_bias else None)


_layer_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Channel LayerNorm of ``x: [B, C, H, W]`` (``bias=None``: BiasFree). Triton on CUDA or under
    the interpreter, plain PyTorch otherwise; differentiable either way."""
    check_tensor("x", x, ndim=4, dtypes=SUPPORTED_DTYPES)
    if uses_triton(x):  # the launcher checks the parameters too (kernels.layernorm.layer_norm_fwd)
        return call(_layer_norm_fwd, x, weight, bias, validate=lambda: check_params(x, weight=weight, bias=bias))[0]
    check_params(x, weight=weight, bias=bias)
    return reference.channel_layer_norm(x, weight, bias)
