"""MEFC (DRSformer's mixture-of-experts feature compensator) as custom ops:
``drsformer_fast::mefc_mixing``, ``drsformer_fast::mefc_step_fwd`` and ``drsformer_fast::mefc_step_bwd``.

The original ``subnet`` (``reference.subnet``: an ``OALayer`` then a ``GroupOLs``) computes, per
sample, routing weights ``w = softmax(MLP(avgpool(x)))`` ([B, steps, 8]), ``s = relu(W_pre x)``, then
``steps`` times ``s = relu(relu(W_out cat_o(w_o * op_o(s))) + s)`` over eight operations (sep_conv
1/3/5/7, dil_conv 3/5/7, avg_pool 3x3). Everything after the ops' inner ReLUs is linear, so per
sample and step the concatenation, the eight scalings, each op's last 1x1 ``L_o`` and ``W_out``
collapse into ONE matrix ``m = [w_0 W_out,0 L_0 | ... | w_7 W_out,7]`` ([C, 8C]) applied to what the
ops produce before their last 1x1:

    z_o = dw2_o(relu(W1_o dw1_o(s)))   (o < 4, sep_conv k = 1, 3, 5, 7)
    z_o = dwd_o(s)                     (o = 4..6, dil_conv k = 3, 5, 7, dilation 2)
    z_7 = avgpool3x3(s)                (count_include_pad=False)
    s_out = relu(relu(sum_o m_o z_o) + s)

This file:

* :func:`routing_weights`: the routing (avgpool -> MLP -> softmax) in plain PyTorch autograd, fp32.
* ``drsformer_fast::mefc_mixing`` (:func:`mixing_matrices`): the per-sample matrices of all steps at
  once, fp32 (a few kilobytes per sample), from the stacked weights: one Triton launch on CUDA or
  under the interpreter, else a batched einsum; its backward is a few small fp32 einsums.
* ``drsformer_fast::mefc_step_fwd`` / ``mefc_step_bwd``: one step, ``(s, dw1, w1, dw2, dwd, m) ->
  s_out``. They run the Triton kernels (``kernels/mefc.py``, ``kernels/mefc_backward.py``) on CUDA or
  under Triton's interpreter, else the same algebra in plain PyTorch (:func:`step_torch`, whose
  backward recomputes the step under autograd). The forward saves only its inputs ``s``, ``m``, the
  weights (Parameters) and its output ``s_out`` (the next step's input: the same storage), so a
  whole MEFC keeps ``steps + 1`` C-channel planes for backward plus the preprocess input.
* :func:`feature_compensation`: preprocess 1x1 + ReLU (cuBLAS/cuDNN), mixing matrices, the steps.

Weights reach the ops as the ORIGINAL parameter tensors (``dw1``/``dw2``: the four sep_convs'
``op.0``/``op.3`` [C, 1, k, k]; ``w1``: their ``op.1`` [C, C, 1, 1]; ``dwd``: the dil_convs' ``op.0``),
any floating dtype; the kernels compute in fp32 whatever ``s``'s dtype (fp32/fp16/bf16).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

from .._dispatch import uses_triton
from .._validation import _TENSOR_TYPES, SUPPORTED_DTYPES, check_tensor
from ._eager import call

NUM_OPS = 8
SEP_SIZES = (1, 3, 5, 7)
DIL_SIZES = (3, 5, 7)
DILATION = 2


def _fp32(x: torch.Tensor):
    """Autocast off: the routing and mixing matrices (tiny) stay fp32, and the step ops compute in
    fp32 whatever autocast context they are called (or their backward runs) in."""
    if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# one step in plain PyTorch (the CPU path without Triton, and the kernels' ground truth)
# --------------------------------------------------------------------------------------------


def sep_inner_torch(s: torch.Tensor, dw1, w1) -> torch.Tensor:
    """``t: [B, 4, C, H, W]`` (s's dtype): ``relu(W1_o dw1_o(s))`` of the four sep_convs, fp32 math."""
    x = s.float()
    C = x.shape[1]
    with _fp32(s):
        ts = [F.relu(F.conv2d(F.conv2d(x, a.float(), padding=k // 2, groups=C), b.float()))
              for k, a, b in zip(SEP_SIZES, dw1, w1)]
        return torch.stack(ts, 1).to(s.dtype)


def _recompute(s, dw1, w1, dw2, dwd, m):
    """Forward intermediates in fp32: (x, u, v, t_rounded, z [B, 8C, H, W], pre, out)."""
    with _fp32(s):  # the ops may be called under autocast (the backward runs in the forward's context)
        return _recompute_fp32(s, dw1, w1, dw2, dwd, m)


def _recompute_fp32(s, dw1, w1, dw2, dwd, m):
    x = s.float()
    C = x.shape[1]
    u = [F.conv2d(x, a.float(), padding=k // 2, groups=C) for k, a in zip(SEP_SIZES, dw1)]
    v = [F.conv2d(ui, b.float()) for ui, b in zip(u, w1)]
    t = [F.relu(vi).to(s.dtype).float() for vi in v]  # rounded to s's dtype, as the kernels store t
    z = [F.conv2d(ti, c.float(), padding=k // 2, groups=C) for k, ti, c in zip(SEP_SIZES, t, dw2)]
    z += [F.conv2d(x, d.float(), padding=k - 1, dilation=DILATION, groups=C) for k, d in zip(DIL_SIZES, dwd)]
    z.append(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
    z = torch.cat(z, 1)
    pre = torch.einsum("bij,bjhw->bihw", m.float(), z)
    out = F.relu(F.relu(pre) + x)
    return x, u, v, t, z, pre, out


def step_torch(s: torch.Tensor, dw1, w1, dw2, dwd, m: torch.Tensor) -> torch.Tensor:
    """One MEFC step (see the module docstring) in fp32 math; returns fp32 ``s_out: [B, C, H, W]``.
    ``t`` is rounded to ``s``'s dtype as the kernels store it."""
    return _recompute(s, dw1, w1, dw2, dwd, m)[-1]


def _conv_bwd(grad, inp, weight, padding: int, dilation: int, groups: int, need_input: bool = True):
    """(d input or None, d weight) of ``F.conv2d(inp, weight, padding=, dilation=, groups=)``."""
    di, dw, _ = torch.ops.aten.convolution_backward(
        grad, inp, weight, None, [1, 1], [padding, padding], [dilation, dilation], False, [0, 0], groups,
        [need_input, True, False])
    return di, dw


def step_torch_bwd(g, s, dw1, w1, dw2, dwd, m, needs_input_grad: bool = True):
    """Gradients of :func:`step_torch`, recomputing the step (no autograd: this runs inside a custom
    op): ``(ds or None, d_dw1, d_w1, d_dw2, d_dwd, dm)``, weight gradients and ``dm`` fp32, ``ds`` in
    s's dtype. The ReLU masks come from the same fp32 recomputation as the forward's."""
    with _fp32(s):
        return _step_bwd_fp32(g, s, dw1, w1, dw2, dwd, m, needs_input_grad)


def _step_bwd_fp32(g, s, dw1, w1, dw2, dwd, m, needs_input_grad):
    x, u, v, t, z, pre, out = _recompute_fp32(s, dw1, w1, dw2, dwd, m)
    C = x.shape[1]
    gy = g.float() * (out > 0)
    gpre = gy * (pre > 0)
    dm = torch.einsum("bihw,bjhw->bij", gpre, z)
    dz = torch.einsum("bij,bihw->bjhw", m.float(), gpre).split(C, 1)
    d_dw1, d_w1, d_dw2, d_dwd = [], [], [], []
    ds = gy if needs_input_grad else None
    for i, k in enumerate(SEP_SIZES):
        dt, dc = _conv_bwd(dz[i], t[i], dw2[i].float(), k // 2, 1, C)
        du, db = _conv_bwd(dt * (v[i] > 0), u[i], w1[i].float(), 0, 1, 1)
        dx, da = _conv_bwd(du, x, dw1[i].float(), k // 2, 1, C, needs_input_grad)
        d_dw1.append(da), d_w1.append(db), d_dw2.append(dc)
        ds = ds + dx if needs_input_grad else None
    for i, k in enumerate(DIL_SIZES):
        dx, dd = _conv_bwd(dz[len(SEP_SIZES) + i], x, dwd[i].float(), k - 1, DILATION, C, needs_input_grad)
        d_dwd.append(dd)
        ds = ds + dx if needs_input_grad else None
    if needs_input_grad:
        ds = ds + torch.ops.aten.avg_pool2d_backward(dz[-1], x, [3, 3], [1, 1], [1, 1], False, False, None)
        ds = ds.to(s.dtype)
    return ds, tuple(d_dw1), tuple(d_w1), tuple(d_dw2), tuple(d_dwd), dm


# --------------------------------------------------------------------------------------------
# the custom ops
# --------------------------------------------------------------------------------------------


def use_kernels(s: torch.Tensor) -> bool:
    """Whether a step on ``s`` runs the Triton kernels: on CUDA or under the interpreter, for the
    channel counts the kernels hold in one tile (C <= 128: 48 and 96 in every released model); a
    wider MEFC runs the PyTorch step (``FeatureCompensator.kernel_path`` says so)."""
    if not uses_triton(s):
        return False
    from ..kernels.mefc import MAX_CHANNELS

    return s.shape[1] <= MAX_CHANNELS


@torch.library.custom_op("drsformer_fast::mefc_step_fwd", mutates_args=())
def _mefc_step_fwd(s: torch.Tensor, dw1: list[torch.Tensor], w1: list[torch.Tensor], dw2: list[torch.Tensor],
                   dwd: list[torch.Tensor], m: torch.Tensor) -> torch.Tensor:
    with _fp32(s):
        if use_kernels(s):
            from ..kernels.mefc import mefc_step_fwd

            out = mefc_step_fwd(s, tuple(dw1), tuple(w1), tuple(dw2), tuple(dwd), m)
        else:
            out = step_torch(s, dw1, w1, dw2, dwd, m).to(s.dtype)
    return out.contiguous()  # the layout the fake promises (a no-op for the kernels' outputs)


@_mefc_step_fwd.register_fake
def _(s, dw1, w1, dw2, dwd, m):
    return s.new_empty(s.shape)


@torch.library.custom_op("drsformer_fast::mefc_step_bwd", mutates_args=())
def _mefc_step_bwd(g: torch.Tensor, s: torch.Tensor, s_out: torch.Tensor, dw1: list[torch.Tensor],
                   w1: list[torch.Tensor], dw2: list[torch.Tensor], dwd: list[torch.Tensor], m: torch.Tensor,
                   needs_input_grad: bool) -> list[torch.Tensor]:
    """[ds (empty when not needed), 4 d_dw1, 4 d_w1, 4 d_dw2, 3 d_dwd, dm]: all fp32 but ds."""
    with _fp32(s):
        if use_kernels(s):
            from ..kernels.mefc_backward import mefc_step_bwd

            ds, d_dw1, d_w1, d_dw2, d_dwd, dm = mefc_step_bwd(g, s, s_out, tuple(dw1), tuple(w1), tuple(dw2),
                                                              tuple(dwd), m, needs_input_grad=needs_input_grad)
        else:
            ds, d_dw1, d_w1, d_dw2, d_dwd, dm = step_torch_bwd(g, s, dw1, w1, dw2, dwd, m, needs_input_grad)
    ds = ds.contiguous() if (needs_input_grad and ds is not None) else s.new_empty(0)
    # contiguous: the layout the fake promises; distinct tensors: outputs of a custom op may not alias
    return [ds] + [t.contiguous() for t in (*d_dw1, *d_w1, *d_dw2, *d_dwd, dm)]


@_mefc_step_bwd.register_fake
def _(g, s, s_out, dw1, w1, dw2, dwd, m, needs_input_grad):
    ds = s.new_empty(s.shape) if needs_input_grad else s.new_empty(0)
    return [ds] + [s.new_empty(p.shape, dtype=torch.float32) for p in (*dw1, *w1, *dw2, *dwd, m)]


def _setup_context(ctx, inputs, output):
    s, dw1, w1, dw2, dwd, m = inputs
    # the step's inputs and its output: the output is the next step's input (one storage)
    ctx.save_for_backward(s, output, m, *dw1, *w1, *dw2, *dwd)


def _backward(ctx, g):
    s, s_out, m, *ws = ctx.saved_tensors
    need = ctx.needs_input_grad  # (bool, [4], [4], [4], [3], bool)
    outs = call(_mefc_step_bwd, g, s, s_out, ws[0:4], ws[4:8], ws[8:12], ws[12:15], m, bool(need[0]))
    ds = outs[0] if need[0] else None
    grads = [d.to(p.dtype) for d, p in zip(outs[1:16], ws)]
    dm = outs[16] if need[5] else None
    return ds, grads[0:4], grads[4:8], grads[8:12], grads[12:15], dm


_mefc_step_fwd.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _step_shapes(C: int) -> tuple:
    """The weight shapes of a step on C channels: dw1 and dw2, w1, dwd."""
    sep = tuple((C, 1, k, k) for k in SEP_SIZES)
    return sep, ((C, C, 1, 1),) * len(SEP_SIZES), tuple((C, 1, k, k) for k in DIL_SIZES)


def _weights_ok(ws, shapes, dev) -> bool:
    """Whether ``ws`` is a list or tuple of plain tensors of ``shapes`` on ``dev`` in a supported
    dtype (the common case of :func:`check_step_inputs`, without building its messages)."""
    return (type(ws) in (list, tuple) and len(ws) == len(shapes)
            and all(type(w) in _TENSOR_TYPES and w.device == dev and w.dtype in SUPPORTED_DTYPES and w.shape == shape
                    for w, shape in zip(ws, shapes)))


def check_step_inputs(s, dw1, w1, dw2, dwd, m) -> None:
    """Clear errors, before dispatch, for the inputs of one step."""
    if type(s) in _TENSOR_TYPES and s.dim() == 4 and s.dtype in SUPPORTED_DTYPES:
        B, C = s.shape[:2]
        dev = s.device
        sep, pointwise, dil = _step_shapes(C)
        if (_weights_ok(dw1, sep, dev) and _weights_ok(w1, pointwise, dev) and _weights_ok(dw2, sep, dev)
                and _weights_ok(dwd, dil, dev) and type(m) in _TENSOR_TYPES and m.device == dev
                and m.shape == (B, C, NUM_OPS * C) and m.dtype == torch.float32):
            return
    check_tensor("s", s, ndim=4, dtypes=SUPPORTED_DTYPES)
    B, C = s.shape[:2]
    dev = s.device
    for name, ws, n in (("dw1", dw1, 4), ("w1", w1, 4), ("dw2", dw2, 4), ("dwd", dwd, 3)):
        if not isinstance(ws, (list, tuple)) or len(ws) != n:
            raise ValueError(f"{name} must be a list of {n} weight tensors, got {type(ws).__name__}"
                             + (f" of length {len(ws)}" if isinstance(ws, (list, tuple)) else ""))
    for i, k in enumerate(SEP_SIZES):
        check_tensor(f"dw1[{i}] (sep_conv_{k}x{k} op.0.weight)", dw1[i], device=dev, shape=(C, 1, k, k),
                     dtypes=SUPPORTED_DTYPES)
        check_tensor(f"w1[{i}] (sep_conv_{k}x{k} op.1.weight)", w1[i], device=dev, shape=(C, C, 1, 1),
                     dtypes=SUPPORTED_DTYPES)
        check_tensor(f"dw2[{i}] (sep_conv_{k}x{k} op.3.weight)", dw2[i], device=dev, shape=(C, 1, k, k),
                     dtypes=SUPPORTED_DTYPES)
    for i, k in enumerate(DIL_SIZES):
        check_tensor(f"dwd[{i}] (dil_conv_{k}x{k} op.0.weight)", dwd[i], device=dev, shape=(C, 1, k, k),
                     dtypes=SUPPORTED_DTYPES)
    check_tensor("m", m, device=dev, shape=(B, C, NUM_OPS * C), dtypes=(torch.float32,))


def mefc_step(s: torch.Tensor, dw1, w1, dw2, dwd, m: torch.Tensor) -> torch.Tensor:
    """One MEFC step, ``s: [B, C, H, W] -> s_out`` (see the module docstring); ``m: [B, C, 8C]`` fp32
    from :func:`mixing_matrices`. Triton on CUDA or under the interpreter, plain PyTorch otherwise
    (both inside the custom op); differentiable in every input."""
    check_step_inputs(s, dw1, w1, dw2, dwd, m)
    return call(_mefc_step_fwd, s, list(dw1), list(w1), list(dw2), list(dwd), m)


def routing_weights(x: torch.Tensor, fc1_weight, fc1_bias, fc2_weight, fc2_bias, steps: int) -> torch.Tensor:
    """The original ``softmax(OALayer(x))``: ``[B, steps, 8]`` fp32 per-sample operation weights
    (global average pool, Linear C -> 16 steps, ReLU, Linear -> 8 steps, softmax over the ops)."""
    with _fp32(x):
        y = x.mean((2, 3), dtype=torch.float32)
        h = F.relu(F.linear(y, fc1_weight.float(), fc1_bias.float()))
        logits = F.linear(h, fc2_weight.float(), fc2_bias.float())
        return logits.view(x.shape[0], steps, NUM_OPS).softmax(-1)


def _mixing_torch(w: torch.Tensor, w_out: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """:func:`mixing_matrices` on stacked weights (``w_out``: [S, C, 8C]; ``last``: [S, 7, C, C]) in plain
    PyTorch, fp32: ``m: [B, S, C, 8C]``. Also the mixing op's products for its backward (w = None:
    the unscaled [S, C, 8, C] matrices)."""
    S, C = w_out.shape[:2]
    wo = w_out.float().view(S, C, NUM_OPS, C)
    prod = torch.einsum("sioj,sojk->siok", wo[:, :, :NUM_OPS - 1], last.float())
    mats = torch.cat([prod, wo[:, :, NUM_OPS - 1:]], 2)  # [S, C, 8, C]
    if w is None:
        return mats
    return (w.float()[:, :, None, :, None] * mats).reshape(w.shape[0], S, C, NUM_OPS * C)


@torch.library.custom_op("drsformer_fast::mefc_mixing", mutates_args=())
def _mefc_mixing(w: torch.Tensor, w_out: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    with _fp32(w):
        if uses_triton(w):
            from ..kernels.mefc import mixing_fwd

            return mixing_fwd(w, w_out, last)
        return _mixing_torch(w, w_out, last).contiguous()


@_mefc_mixing.register_fake
def _(w, w_out, last):
    S, C = w_out.shape[:2]
    return w.new_empty((w.shape[0], S, C, NUM_OPS * C), dtype=torch.float32)


def _mixing_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _mixing_backward(ctx, g):
    """Gradients of m = w * [W_out,o L_o] in fp32 (the forward's products recomputed), cast to each
    input's dtype. The sums over the batch are those autograd forms for the broadcast multiply
    (per-sample products, then a sum), so these gradients round as the plain-PyTorch formula's do. A
    contraction over the batch (einsum) rounds differently; in the test of two data-parallel processes
    against one (tests/training) that difference grew past rounding within three steps."""
    w, w_out, last = ctx.saved_tensors
    need_w, need_wo, need_l = ctx.needs_input_grad
    B, S = w.shape[:2]
    C = w_out.shape[1]
    with _fp32(w):
        g = g.float().view(B, S, C, NUM_OPS, C)
        dw = (g * _mixing_torch(None, w_out, last)).sum((2, 4)).to(w.dtype) if need_w else None
        if not (need_wo or need_l):
            return dw, None, None
        dmats = (g * w.float()[:, :, None, :, None]).sum(0)  # [S, C, 8, C]
        d_wo = d_l = None
        if need_wo:
            d_wo = torch.cat([torch.einsum("siok,sojk->sioj", dmats[:, :, :NUM_OPS - 1], last.float()),
                              dmats[:, :, NUM_OPS - 1:]], 2).reshape(S, C, NUM_OPS * C).to(w_out.dtype)
        if need_l:
            wo = w_out.float().view(S, C, NUM_OPS, C)
            d_l = torch.einsum("sioj,siok->sojk", wo[:, :, :NUM_OPS - 1], dmats[:, :, :NUM_OPS - 1]).to(last.dtype)
    return dw, d_wo, d_l


_mefc_mixing.register_autograd(_mixing_backward, setup_context=_mixing_setup_context)


def mixing_matrices(w: torch.Tensor, out_weights, last_weights) -> torch.Tensor:
    """``m: [B, steps, C, 8C]`` fp32, ``m[b, i][:, oC:(o+1)C] = w[b, i, o] W_out,i[:, oC:(o+1)C] L_i,o``.

    ``out_weights``: per step ``_out.0.weight`` [C, 8C, 1, 1]; ``last_weights``: per step the seven
    last 1x1s ``[C, C, 1, 1]`` (sep_conv ``op.4``, dil_conv ``op.1``; avg_pool has none). The weights
    are stacked (two copies) and every step's matrices made by one op, ``drsformer_fast::mefc_mixing``
    (one Triton launch on CUDA or under the interpreter, else a batched einsum); differentiable in
    ``w`` and every weight."""
    steps = len(out_weights)
    C = out_weights[0].shape[0]
    with _fp32(w):
        w_out = torch.stack([wo.reshape(C, NUM_OPS * C) for wo in out_weights])  # [S, C, 8C]
        last = torch.stack([lw.reshape(C, C) for ls in last_weights for lw in ls]).view(steps, NUM_OPS - 1, C, C)
    return call(_mefc_mixing, w, w_out, last)


def feature_compensation(x: torch.Tensor, w: torch.Tensor, pre_weight: torch.Tensor, steps: list[dict]) -> torch.Tensor:
    """The original ``GroupOLs(x, w)``: ``s = relu(W_pre x)`` then one :func:`mefc_step` per entry of
    ``steps`` (dicts with ``dw1``, ``w1``, ``dw2``, ``dwd`` as for :func:`mefc_step`, ``last``: the
    seven last 1x1s, ``out``: ``_out.0.weight``). ``w``: :func:`routing_weights`. Computes in x's dtype."""
    s = F.relu(F.conv2d(x, pre_weight.to(x.dtype)))
    m = mixing_matrices(w, [st["out"] for st in steps], [st["last"] for st in steps])
    for st, mi in zip(steps, m.unbind(1)):
        s = mefc_step(s, st["dw1"], st["w1"], st["dw2"], st["dwd"], mi)
    return s
