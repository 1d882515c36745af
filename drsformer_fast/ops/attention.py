"""Top-k sparse channel attention as custom ops (``drsformer_fast::topk_attention_fwd`` / ``_bwd``),
and the same fused algebra in plain PyTorch for CPUs without Triton's interpreter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import reference
from .._dispatch import uses_triton
from .._validation import SUPPORTED_DTYPES, check_attention_inputs, check_tensor
from ._eager import call

L2_EPS = 1e-12


@torch.library.custom_op("drsformer_fast::topk_attention_fwd", mutates_args=())
def _attention_fwd(
    x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor | None, dw_weight: torch.Tensor,
    dw_bias: torch.Tensor | None, temperature: torch.Tensor, attn1: torch.Tensor, attn2: torch.Tensor,
    attn3: torch.Tensor, attn4: torch.Tensor, proj_weight: torch.Tensor, proj_bias: torch.Tensor | None,
    residual: torch.Tensor | None, num_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from ..kernels.attention import attention_fwd

    return attention_fwd(x, qkv_weight, qkv_bias, dw_weight, dw_bias, temperature, (attn1, attn2, attn3, attn4),
                         proj_weight, proj_bias, num_heads, residual)


@_attention_fwd.register_fake
def _(x, qkv_weight, qkv_bias, dw_weight, dw_bias, temperature, attn1, attn2, attn3, attn4, proj_weight, proj_bias,
      residual, num_heads):
    B, D, H, W = x.shape
    C = D // num_heads
    out_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    f32 = dict(device=x.device, dtype=torch.float32)
    return (x.new_empty((B, D, H, W), dtype=out_dtype), x.new_empty((B, 3 * D, H, W)),
            torch.empty((B * num_heads, C, C), **f32), torch.empty((B * num_heads, 2, C), **f32),
            torch.empty((B * num_heads, C, C), **f32))


@torch.library.custom_op("drsformer_fast::topk_attention_bwd", mutates_args=())
def _attention_bwd(
    dout: torch.Tensor, x: torch.Tensor, t0: torch.Tensor, ghat: torch.Tensor, norms: torch.Tensor,
    p: torch.Tensor, qkv_weight: torch.Tensor, dw_weight: torch.Tensor, dw_bias: torch.Tensor | None,
    temperature: torch.Tensor, attn1: torch.Tensor, attn2: torch.Tensor, attn3: torch.Tensor, attn4: torch.Tensor,
    proj_weight: torch.Tensor, num_heads: int, needs_input_grad: bool,
) -> list[torch.Tensor]:
    from ..kernels.attention import attention_bwd

    dx, dqw, dqb, ddw, ddb, dtemp, dattn, dpw, dpb = attention_bwd(
        dout, x, t0, ghat, norms, p, qkv_weight, dw_weight, dw_bias, temperature, (attn1, attn2, attn3, attn4),
        proj_weight, num_heads, needs_input_grad,
    )

    def or_empty(t):  # custom ops return tensors, each its own (no aliasing between outputs)
        return t if t is not None else dqw.new_empty(0)

    return [or_empty(t) for t in (dx, dqw, dqb, ddw, ddb, dtemp, dattn, dpw, dpb)]


@_attention_bwd.register_fake
def _(dout, x, t0, ghat, norms, p, qkv_weight, dw_weight, dw_bias, temperature, attn1, attn2, attn3, attn4,
      proj_weight, num_heads, needs_input_grad):
    B, D, H, W = x.shape
    f32 = dict(device=x.device, dtype=torch.float32)
    has_bias = dw_bias is not None
    dx = x.new_empty((B, D, H, W) if needs_input_grad else (0,))
    return [dx, torch.empty((3 * D, D, 1, 1), **f32), torch.empty((3 * D if has_bias else 0,), **f32),
            torch.empty((3 * D, 1, 3, 3), **f32), torch.empty((3 * D if has_bias else 0,), **f32),
            torch.empty((num_heads, 1, 1), **f32), torch.empty((4,), **f32),
            torch.empty((D, D, 1, 1), **f32), torch.empty((D if has_bias else 0,), **f32)]


_PARAM_INPUTS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)  # qkv_w .. proj_b in _attention_fwd's signature


def _setup_context(ctx, inputs, output):
    (x, qkv_weight, qkv_bias, dw_weight, dw_bias, temperature, a1, a2, a3, a4, proj_weight, proj_bias, residual,
     num_heads) = inputs
    out, t0, ghat, norms, p = output
    # t0, ghat, norms and p are saved for the backward, not differentiable outputs; and no gradient is
    # filled in with zeros for them (the autograd engine's default: a memset of 3d planes for t0 alone)
    ctx.mark_non_differentiable(t0, ghat, norms, p)
    ctx.set_materialize_grads(False)
    ctx.out_dtype = out.dtype
    ctx.save_for_backward(x, t0, ghat, norms, p, qkv_weight, dw_weight, dw_bias, temperature, a1, a2, a3, a4,
                          proj_weight)
    ctx.num_heads = num_heads
    ctx.has_residual = residual is not None
    ctx.residual_dtype = residual.dtype if residual is not None else None
    ctx.param_dtypes = [inputs[i].dtype if inputs[i] is not None else None for i in _PARAM_INPUTS]


def _backward(ctx, dout, _dt0, _dghat, _dnorms, _dp):
    x, t0, ghat, norms, p, qkv_weight, dw_weight, dw_bias, temperature, a1, a2, a3, a4, proj_weight = (
        ctx.saved_tensors)
    if dout is None:  # (the output reached the loss through no differentiable path: its gradient is zero)
        dout = x.new_zeros(x.shape, dtype=ctx.out_dtype)
    grads = call(_attention_bwd, dout, x, t0, ghat, norms, p, qkv_weight, dw_weight, dw_bias, temperature, a1, a2, a3,
                 a4, proj_weight, ctx.num_heads, ctx.needs_input_grad[0])
    dx = grads[0] if ctx.needs_input_grad[0] else None
    dqw, dqb, ddw, ddb, dtemp, dattn, dpw, dpb = grads[1:]
    flat = [dqw, dqb, ddw, ddb, dtemp, *dattn.split(1), dpw, dpb]
    params = [g.to(dt) if dt is not None else None for g, dt in zip(flat, ctx.param_dtypes)]
    dres = dout.to(ctx.residual_dtype) if ctx.has_residual else None
    return (dx, *params, dres, None)


_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# plain PyTorch: the same fused algebra (and the same tie rule) for CPUs without the interpreter
# ----------------------------------------------------------------------------------------------


def topk_ranks(a: torch.Tensor) -> torch.Tensor:
    """Descending rank of every entry within its row (last dim); ties go to the lower index."""
    order = torch.sort(a, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(a.shape[-1], device=a.device).expand_as(order)
    return ranks.scatter_(-1, order, positions)


def _attention_torch(x, qkv_weight, qkv_bias, dw_weight, dw_bias, temperature, attn_weights, proj_weight, proj_bias,
                     num_heads, residual):
    B, D, H, W = x.shape
    C = D // num_heads
    t = F.conv2d(F.conv2d(x, qkv_weight.to(x.dtype), None if qkv_bias is None else qkv_bias.to(x.dtype)),
                 dw_weight.to(x.dtype), None if dw_bias is None else dw_bias.to(x.dtype), padding=1, groups=3 * D)
    q, k, v = t.reshape(B, 3, num_heads, C, H * W).unbind(1)
    acc = torch.promote_types(x.dtype, torch.float32)  # fp32 accumulation for half inputs
    qf, kf = q.to(acc), k.to(acc)
    nq = qf.norm(dim=-1).clamp_min(L2_EPS)
    nk = kf.norm(dim=-1).clamp_min(L2_EPS)
    a = (qf @ kf.transpose(-1, -2)) / (nq[..., :, None] * nk[..., None, :]) * temperature.to(acc)
    with torch.no_grad():
        rank = topk_ranks(a)
    e = torch.exp(a - a.amax(dim=-1, keepdim=True).detach())
    p = 0
    for kk, wgt in zip(reference.topk_counts(C), attn_weights):
        s = torch.where(rank < kk, e, 0.0)
        p = p + wgt.to(acc) * (s / s.sum(dim=-1, keepdim=True))
    out = (p.to(v.dtype) @ v).reshape(B, D, H, W)
    out = F.conv2d(out, proj_weight.to(x.dtype), None if proj_bias is None else proj_bias.to(x.dtype))
    return out if residual is None else residual + out


def topk_sparse_attention(
    x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor | None, dw_weight: torch.Tensor,
    dw_bias: torch.Tensor | None, temperature: torch.Tensor, attn_weights, proj_weight: torch.Tensor,
    proj_bias: torch.Tensor | None, num_heads: int, residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """The original ``Attention`` forward (+ ``residual`` when given), fused.

    x: [B, d, H, W] fp32/fp16/bf16 (the compute dtype; weights are cast to it for the 1x1 convs),
    any strides. Triton on CUDA or under the interpreter, plain PyTorch otherwise.
    """
    def validate():
        check_attention_inputs(x, qkv_weight, qkv_bias, dw_weight, dw_bias, temperature, attn_weights, proj_weight,
                               proj_bias, num_heads, residual)

    check_tensor("x", x, ndim=4, dtypes=SUPPORTED_DTYPES)
    if uses_triton(x) and isinstance(attn_weights, (list, tuple)) and len(attn_weights) == 4:
        # the launcher checks the same (kernels.attention.attention_fwd)
        return call(_attention_fwd, x, qkv_weight, qkv_bias, dw_weight, dw_bias, temperature, *attn_weights,
                    proj_weight, proj_bias, residual, num_heads, validate=validate)[0]
    validate()
    return _attention_torch(x, qkv_weight, qkv_bias, dw_weight, dw_bias, temperature, attn_weights, proj_weight,
                            proj_bias, num_heads, residual)
