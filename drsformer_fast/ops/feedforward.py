"""Mixed-Scale Feed-Forward Network as custom ops: ``drsformer_fast::ffn_fwd`` and ``drsformer_fast::ffn_bwd``.

The forward saves only x and the parameters: the backward recomputes ``project_in(x)`` and the
stage-1 outputs (see ``drsformer_fast.kernels.feedforward`` for the kernels and their bytes).
"""

from __future__ import annotations

import torch

from .. import reference
from .._dispatch import uses_triton
from .._validation import FFN_PARAM_NAMES as PARAM_NAMES
from .._validation import SUPPORTED_DTYPES, check_feed_forward_inputs, check_tensor
from ._eager import call


def _params(*tensors) -> dict[str, torch.Tensor | None]:
    return dict(zip(PARAM_NAMES, tensors))


@torch.library.custom_op("drsformer_fast::ffn_fwd", mutates_args=())
def _ffn_fwd(
    x: torch.Tensor,
    in_weight: torch.Tensor, in_bias: torch.Tensor | None,
    dw3_weight: torch.Tensor, dw3_bias: torch.Tensor | None,
    dw5_weight: torch.Tensor, dw5_bias: torch.Tensor | None,
    g3_weight: torch.Tensor, g3_bias: torch.Tensor | None,
    g5_weight: torch.Tensor, g5_bias: torch.Tensor | None,
    out_weight: torch.Tensor, out_bias: torch.Tensor | None,
    residual: torch.Tensor | None,
) -> torch.Tensor:
    from ..kernels.feedforward import ffn_fwd

    params = _params(in_weight, in_bias, dw3_weight, dw3_bias, dw5_weight, dw5_bias,
                     g3_weight, g3_bias, g5_weight, g5_bias, out_weight, out_bias)
    return ffn_fwd(x, params, residual)


@_ffn_fwd.register_fake
def _(x, *args):
    return x.new_empty(x.shape)


@torch.library.custom_op("drsformer_fast::ffn_bwd", mutates_args=())
def _ffn_bwd(
    dout: torch.Tensor,
    x: torch.Tensor,
    in_weight: torch.Tensor, in_bias: torch.Tensor | None,
    dw3_weight: torch.Tensor, dw3_bias: torch.Tensor | None,
    dw5_weight: torch.Tensor, dw5_bias: torch.Tensor | None,
    g3_weight: torch.Tensor, g3_bias: torch.Tensor | None,
    g5_weight: torch.Tensor, g5_bias: torch.Tensor | None,
    out_weight: torch.Tensor, out_bias: torch.Tensor | None,
    need_input_grad: bool,
) -> list[torch.Tensor]:
    """[dx (empty when not needed), then one fp32 gradient per parameter (empty for absent biases)]."""
    from ..kernels.feedforward import ffn_bwd

    params = _params(in_weight, in_bias, dw3_weight, dw3_bias, dw5_weight, dw5_bias,
                     g3_weight, g3_bias, g5_weight, g5_bias, out_weight, out_bias)
    dx, grads = ffn_bwd(dout, x, params, need_input_grad)
    # absent gradients as distinct empty tensors: outputs of a custom op may not alias each other
    return [dx if dx is not None else x.new_empty(0)] + [
        grads[n] if grads[n] is not None else x.new_empty(0, dtype=torch.float32) for n in PARAM_NAMES]


@_ffn_bwd.register_fake
def _(dout, x, *rest):
    *params, need_input_grad = rest
    dx = torch.empty_like(x, memory_format=torch.contiguous_format) if need_input_grad else x.new_empty(0)
    return [dx] + [x.new_empty(p.shape if p is not None else (0,), dtype=torch.float32) for p in params]


def _setup_context(ctx, inputs, output):
    x, *params, residual = inputs
    ctx.present = [p is not None for p in params]
    ctx.dtypes = [p.dtype if p is not None else None for p in params]
    ctx.has_residual = residual is not None
    ctx.save_for_backward(x, *[p for p in params if p is not None])


def _backward(ctx, dout):
    x, *saved = ctx.saved_tensors
    it = iter(saved)
    params = [next(it) if present else None for present in ctx.present]
    outs = call(_ffn_bwd, dout, x, *params, ctx.needs_input_grad[0])
    dx = outs[0] if ctx.needs_input_grad[0] else None
    grads = [g.to(dt) if (present and need) else None
             for g, present, dt, need in zip(outs[1:], ctx.present, ctx.dtypes, ctx.needs_input_grad[1:13])]
    d_residual = dout if ctx.has_residual and ctx.needs_input_grad[13] else None
    return (dx, *grads, d_residual)


_ffn_fwd.register_autograd(_backward, setup_context=_setup_context)


def mixed_scale_feed_forward(
    x: torch.Tensor,
    in_weight: torch.Tensor, in_bias: torch.Tensor | None,
    dw3_weight: torch.Tensor, dw3_bias: torch.Tensor | None,
    dw5_weight: torch.Tensor, dw5_bias: torch.Tensor | None,
    g3_weight: torch.Tensor, g3_bias: torch.Tensor | None,
    g5_weight: torch.Tensor, g5_bias: torch.Tensor | None,
    out_weight: torch.Tensor, out_bias: torch.Tensor | None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """DRSformer's MSFN of ``x: [B, d, H, W]`` (``FeedForward.forward`` with its parameters as
    arguments, original shapes; biases may be None), plus ``residual`` ([B, d, H, W]) when given.
    Triton on CUDA or under the interpreter, plain PyTorch otherwise; differentiable either way."""
    params = _params(in_weight, in_bias, dw3_weight, dw3_bias, dw5_weight, dw5_bias,
                     g3_weight, g3_bias, g5_weight, g5_bias, out_weight, out_bias)
    check_tensor("x", x, ndim=4, dtypes=SUPPORTED_DTYPES)
    if uses_triton(x):  # the launcher checks the same (kernels.feedforward.check_inputs)
        return call(_ffn_fwd, x, *params.values(), residual,
                    validate=lambda: check_feed_forward_inputs(x, params, residual))
    check_feed_forward_inputs(x, params, residual)
    cast = [p.to(x.dtype) if p is not None else None for p in params.values()]
    out = reference.mixed_scale_feed_forward(x, *cast)
    return out + residual if residual is not None else out
