"""The GPU's own tiles (``gpu_tiles``, run in the interpreter) at small awkward shapes, for every kernel
family, forward and backward, under the memory checker (tests/memcheck.py, on in conftest): images one
pixel high or wide, odd sizes, 127 channels, fp16 (the word kernels where rows are whole aligned
words) and tensors starting one element into their storage (odd offsets: not word-aligned, so the
launchers must take their pixel kernels). Each result is compared with the reference as the family's
own tests do; the memory checker fails any launch that touches a byte outside its tensors' elements.

Shapes are kept small: the GPU's tiles mean many programs, and the interpreter pays per program."""

import pytest
import torch
import torch.nn.functional as F
from conftest import GPU_MODE
from drsformer_fast.kernels.dwconv import depthwise_conv_bwd, depthwise_conv_fwd
from helpers import assert_close, launch_tiles, randn

from drsformer_fast import reference as R
from drsformer_fast.modules import TopKSparseAttention
from drsformer_fast.ops import layer_norm, mixed_scale_feed_forward
from drsformer_fast.ops.mefc import DIL_SIZES, SEP_SIZES, mefc_step, step_torch, step_torch_bwd

pytestmark = pytest.mark.skipif(GPU_MODE, reason="the interpreter's run of the GPU tiles (a GPU runs its own)")


def _odd_offset(t: torch.Tensor) -> torch.Tensor:
    """The same values in a tensor starting one element into a NaN-filled storage (dense strides)."""
    buf = torch.full((t.numel() + 1,), float("nan"), dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


def _layout(t: torch.Tensor, odd: bool) -> torch.Tensor:
    return _odd_offset(t) if odd else t


# ------------------------------------------------------------------------------------------------
# channel LayerNorm


@pytest.mark.parametrize("B, C, H, W, dtype, odd", [
    (1, 127, 1, 9, torch.float32, False),
    (2, 127, 5, 1, torch.float16, True),
    (1, 3, 3, 7, torch.float16, False),
], ids=["C127-1x9", "C127-5x1-fp16-odd", "C3-3x7-fp16"])
def test_layernorm(B, C, H, W, dtype, odd, device):
    x = _layout(randn(B, C, H, W, seed=1, device=device, dtype=dtype), odd)
    w, b = randn(C, seed=2, device=device), randn(C, seed=3, device=device)
    g = _layout(randn(B, C, H, W, seed=4, device=device, dtype=dtype), odd)

    def run(fn, x, w, b, g):
        leaves = [t.detach().requires_grad_() for t in (x, w, b)]
        y = fn(*leaves)
        return [y, *torch.autograd.grad(y, leaves, g)]

    with launch_tiles("gpu"):
        got = run(layer_norm, x, w, b, g)
    cpu = torch.device("cpu")
    ref64 = run(R.channel_layer_norm, *(t.to(cpu, torch.float64) for t in (x, w, b, g)))
    reflp = run(R.channel_layer_norm, *(t.to(cpu, dtype) for t in (x, w, b, g)))
    for i, name in enumerate(("y", "dx", "dweight", "dbias")):
        assert_close(name, got[i], ref64[i], reflp[i], dtype=dtype)


# ------------------------------------------------------------------------------------------------
# top-k sparse attention


def _attention_grads(module, x, g):
    x = x.detach().requires_grad_()
    out = module(x)
    params = [p for _, p in module.named_parameters()]
    return [out, *torch.autograd.grad(out, [x] + params, g.to(out.dtype))]


@pytest.mark.parametrize("B, D, heads, H, W, dtype, odd", [
    (1, 10, 2, 1, 7, torch.float32, False),
    (1, 15, 3, 5, 1, torch.float32, True),
    (1, 8, 1, 1, 10, torch.float16, False),  # whole aligned words: the word kernels
    (1, 8, 1, 1, 10, torch.float16, True),  # one element in: the pixel kernels
], ids=["d10-1x7", "d15-5x1-odd", "d8-1x10-fp16-words", "d8-1x10-fp16-odd"])
def test_attention(B, D, heads, H, W, dtype, odd, device):
    from original_arch import perturb_

    orig = perturb_(R.Attention(D, heads, True), seed=D)
    fast = TopKSparseAttention.from_original(orig).to(device)
    x = randn(B, D, H, W, seed=1, device=device)
    g = randn(B, D, H, W, seed=2, device=device, dtype=dtype)
    with launch_tiles("gpu"):
        if dtype == torch.float32:
            got = _attention_grads(fast, _layout(x, odd), _layout(g, odd))
        else:  # as the model runs it: autocast over fp32 weights, the gradient in the output's dtype
            with torch.autocast(device.type, dtype=dtype):
                got = _attention_grads(fast, _layout(x.to(dtype), odd), _layout(g, odd))

    def reference(dt):
        m = R.Attention(D, heads, True).to(dt)
        m.load_state_dict(orig.state_dict())
        return _attention_grads(m, x.cpu().to(dt), g.cpu().to(dt))

    ref64, reflp = reference(torch.float64), reference(dtype)
    names = ["output", "dx"] + [f"d{n}" for n, _ in fast.named_parameters()]
    for n, a, r, t in zip(names, got, ref64, reflp):
        assert_close(n, a, r, t, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# mixed-scale feed-forward


def _ffn_params(dim: int, seed: int, factor: float) -> list:
    m = R.FeedForward(dim, factor, True)
    out = []
    for i, (_, p) in enumerate(m.named_parameters()):
        scale = 1.0 / p[0].numel() ** 0.5 if p.dim() > 1 else 0.3
        out.append(randn(*p.shape, seed=seed + i, scale=scale))
    return out


def _ffn_run(x, params, residual, g):
    """Output and gradients (x, every parameter, residual); float64 runs go to the reference."""
    leaves = [t.detach().requires_grad_() for t in (x, *params, residual)]
    x, *p, r = leaves
    if x.dtype == torch.float64:
        out = R.mixed_scale_feed_forward(x, *p) + r
    else:
        out = mixed_scale_feed_forward(x, *p, residual=r)
    return [out, *torch.autograd.grad(out, leaves, g.to(out.dtype))]


@pytest.mark.parametrize("B, dim, H, W, dtype, odd, factor", [
    (1, 4, 1, 9, torch.float32, False, 1.0),
    (1, 5, 7, 1, torch.float32, True, 1.0),
    (1, 4, 3, 10, torch.float16, False, 1.0),  # words: 2 x 2 quads, the last pair row half outside
    (1, 4, 1, 10, torch.float16, True, 1.0),  # one element in: the pixel kernels
    (1, 127, 1, 3, torch.float32, False, 0.05),  # 127 channels, hidden 6
], ids=["d4-1x9", "d5-7x1-odd", "d4-3x10-fp16-words", "d4-1x10-fp16-odd", "d127-1x3"])
def test_feedforward(B, dim, H, W, dtype, odd, factor, device):
    params = _ffn_params(dim, seed=40 + dim, factor=factor)
    x = randn(B, dim, H, W, seed=14, device=device, dtype=dtype)
    res = randn(B, dim, H, W, seed=15, device=device, dtype=dtype)
    g = randn(B, dim, H, W, seed=16, device=device, dtype=dtype)
    with launch_tiles("gpu"):
        got = _ffn_run(_layout(x, odd), [p.to(device, dtype) for p in params], _layout(res, odd), _layout(g, odd))
    cpu = torch.device("cpu")
    ref64 = _ffn_run(x.to(cpu, torch.float64), [p.double() for p in params], res.to(cpu, torch.float64),
                     g.to(cpu, torch.float64))
    lp = [t.to(cpu, dtype) for t in (x, res, g)]

    def reference_lp():
        leaves = [t.detach().requires_grad_() for t in (lp[0], *[p.to(dtype) for p in params], lp[1])]
        out = R.mixed_scale_feed_forward(leaves[0], *leaves[1:-1]) + leaves[-1]
        return [out, *torch.autograd.grad(out, leaves, lp[2])]

    reflp = reference_lp() if dtype == torch.float16 else [r.float() for r in ref64]
    names = ["output", "dx"] + [f"dparam{i}" for i in range(len(params))] + ["dresidual"]
    for n, a, r, t in zip(names, got, ref64, reflp):
        assert_close(n, a, r, t, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# depthwise convolutions (the feed-forward's and the attention's stencils)


@pytest.mark.parametrize("B, C, H, W, dtype, odd, sizes", [
    (1, 5, 1, 10, torch.float16, False, (3, 5)),  # words, one row: every neighbour row outside
    (1, 5, 1, 10, torch.float16, True, (3, 5)),  # odd offset: pixels
    (2, 5, 9, 1, torch.float32, False, (3,)),  # one pixel wide: every neighbour column outside
    (1, 3, 7, 5, torch.float32, True, (7, 5)),
], ids=["C5-1x10-fp16-words", "C5-1x10-fp16-odd", "C5-9x1", "C3-7x5-odd"])
def test_depthwise_conv(B, C, H, W, dtype, odd, sizes, device):
    x = _layout(randn(B, C, H, W, seed=20, device=device, dtype=dtype), odd)
    ws = [randn(C, 1, k, k, seed=21 + i, device=device) / k for i, k in enumerate(sizes)]
    bs = [randn(C, seed=25 + i, device=device) for i in range(len(sizes))]
    xb = randn(C, seed=29, device=device)
    gs = [_layout(randn(B, C, H, W, seed=30 + i, device=device, dtype=dtype), odd) for i in range(len(sizes))]
    with launch_tiles("gpu"):
        outs = depthwise_conv_fwd(x, ws, bs, True, input_bias=xb)
        dx, dws, dbs = depthwise_conv_bwd(gs, x, ws, need_bias_grad=True, input_bias=xb)

    def reference(dt):
        xr = x.detach().cpu().to(dt).requires_grad_()
        wr = [w.detach().cpu().to(dt).requires_grad_() for w in ws]
        br = [b.detach().cpu().to(dt).requires_grad_() for b in bs]
        xin = xr + xb.cpu().to(dt)[:, None, None]
        pre = [F.conv2d(xin, w, b, padding=w.shape[-1] // 2, groups=C) for w, b in zip(wr, br)]
        grads = torch.autograd.grad(pre, [xr] + wr + br, [g.cpu().to(dt) for g in gs])
        return [p.relu() for p in pre] + list(grads)

    r64, rlp = reference(torch.float64), reference(torch.float32 if dtype == torch.float32 else dtype)
    got = list(outs) + [dx] + list(dws) + list(dbs)
    n = len(sizes)
    names = [f"out[{i}]" for i in range(n)] + ["dx"] + [f"dw[{i}]" for i in range(n)] + [f"db[{i}]" for i in range(n)]
    for name, a, r, t in zip(names, got, r64, rlp):
        assert_close(name, a.cpu(), r, t, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# MEFC step (forward and backward kernels) against its PyTorch algebra (the op's own CPU path)


@pytest.mark.parametrize("B, C, H, W, dtype, odd", [
    (1, 20, 1, 9, torch.float32, False),
    (1, 20, 5, 1, torch.float32, True),
    (1, 20, 3, 10, torch.float16, True),
], ids=["C20-1x9", "C20-5x1-odd", "C20-3x10-fp16-odd"])
def test_mefc_step(B, C, H, W, dtype, odd, device):
    s = _layout(randn(B, C, H, W, seed=C + H, device=device, dtype=dtype), odd)
    dw1 = [randn(C, 1, k, k, seed=50 + k, device=device, dtype=dtype) / k for k in SEP_SIZES]
    w1 = [randn(C, C, 1, 1, seed=60 + i, device=device, dtype=dtype) / C ** 0.5 for i in range(4)]
    dw2 = [randn(C, 1, k, k, seed=70 + k, device=device, dtype=dtype) / k for k in SEP_SIZES]
    dwd = [randn(C, 1, k, k, seed=80 + k, device=device, dtype=dtype) / k for k in DIL_SIZES]
    m = randn(B, C, 8 * C, seed=90, device=device) / (8 * C) ** 0.5
    g = _layout(randn(B, C, H, W, seed=91, device=device, dtype=dtype), odd)
    leaves = [t.detach().requires_grad_() for t in (s, *dw1, *w1, *dw2, *dwd, m)]
    with launch_tiles("gpu"):
        out = mefc_step(leaves[0], leaves[1:5], leaves[5:9], leaves[9:13], leaves[13:16], leaves[16])
        grads = torch.autograd.grad(out, leaves, g)
    cpu = torch.device("cpu")
    args = [t.detach().to(cpu) for t in (s, *dw1, *w1, *dw2, *dwd, m)]
    split = (args[0], args[1:5], args[5:9], args[9:13], args[13:16], args[16])
    ref_out = step_torch(*split)
    ds, d_dw1, d_w1, d_dw2, d_dwd, dm = step_torch_bwd(g.to(cpu), *split)
    refs = [ref_out, ds, *d_dw1, *d_w1, *d_dw2, *d_dwd, dm]
    names = ["s_out", "ds"] + [f"d{n}[{i}]" for n, k in (("dw1", 4), ("w1", 4), ("dw2", 4), ("dwd", 3))
                               for i in range(k)] + ["dm"]
    for name, a, r in zip(names, [out, *grads], refs):
        # the same algebra at the same precision: only summation order differs (the floor)
        assert_close(name, a.cpu(), r.double(), dtype=dtype)
