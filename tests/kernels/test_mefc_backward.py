"""Backward of one MEFC step (kernels/mefc_backward.py) against the original ``OperationLayer``:
``s_out = relu(op_layer(s, w) + s)`` differentiated by autograd in float64 (truth) and at the test
dtype (PyTorch's own error), one shared random upstream gradient. dm is checked through the chain:
the test builds m from the layer's weights with an einsum under autograd and pushes the kernel's dm
back through it, giving the gradients of W_out, the second 1x1 of every op and the softmax weights.

Interpreter cost: images of ~150 pixels, C = 20 and 48; one case (and the determinism test) on the
GPU's tiles, the others on the interpreter's (one tile per image).
"""

import contextlib

import pytest
import torch
from drsformer_fast.kernels import mefc_backward as MB
from drsformer_fast.kernels.mefc import mefc_step_fwd
from helpers import assert_close, launch_tiles, non_contiguous, randn
from original_arch import perturb_

from drsformer_fast import reference as R
from drsformer_fast.ops.mefc import step_torch_bwd

SEP, DIL = (0, 1, 2, 3), (4, 5, 6)


def _layer(C: int, seed: int) -> R.OperationLayer:
    return perturb_(R.OperationLayer(C, 1), seed=seed)


def _params(layer):
    """The layer's parameters by role (the original Parameter objects, or copies with the same names)."""
    ops = layer._ops
    return {
        "dw1": [ops[o].op[0].weight for o in SEP], "w1": [ops[o].op[1].weight for o in SEP],
        "dw2": [ops[o].op[3].weight for o in SEP], "w2": [ops[o].op[4].weight for o in SEP],
        "dwd": [ops[o].op[0].weight for o in DIL], "wd": [ops[o].op[1].weight for o in DIL],
        "w_out": [layer._out[0].weight],
    }


def _build_m(w_out, w2, wd, wts):
    """m[b, :, oC:(o+1)C] = W_out[:, oC:(o+1)C] * w[b, o] @ W2_o (the pool has no 1x1): [B, C, 8C]."""
    C = w_out.shape[0]
    wo = w_out.reshape(C, 8, C)
    eye = torch.eye(C, dtype=w_out.dtype)
    second = [p.reshape(C, C) for p in (*w2, *wd)] + [eye]
    blocks = torch.stack([wo[:, o] @ second[o] for o in range(8)], 1)  # [C, 8, C]
    return torch.einsum("bo,cok->bcok", wts, blocks).reshape(wts.shape[0], C, 8 * C)


def _original_grads(layer, s, wts, g, dtype):
    """Every gradient of the original step at ``dtype`` (CPU autograd)."""
    layer = _layer_copy(layer, dtype)
    s = s.detach().to(dtype).requires_grad_()
    wts = wts.detach().to(dtype).requires_grad_()
    out = torch.relu(layer(s, wts) + s)
    p = _params(layer)
    names = [(k, i) for k, v in p.items() for i in range(len(v))]
    leaves = [s, wts] + [p[k][i] for k, i in names]
    grads = torch.autograd.grad(out, leaves, g.to(dtype))
    return {"s": grads[0], "w": grads[1], **{f"{k}{i}": gr for (k, i), gr in zip(names, grads[2:])}}


def _layer_copy(layer, dtype):
    new = R.OperationLayer(layer._out[0].weight.shape[0], 1)
    new.load_state_dict(layer.state_dict())
    return new.to(dtype)


@contextlib.contextmanager
def _cudnn_fp32_precision(flag: str):
    """PyTorch's cuDNN convolution precision set for a block (a flag object: restored by hand)."""
    conv = torch.backends.cudnn.conv
    old = conv.fp32_precision
    try:
        conv.fp32_precision = flag
        yield
    finally:
        conv.fp32_precision = old


def _fast_grads(layer, s, wts, g, dtype, device, g_layout=None, s_layout=None):
    p = {k: [w.detach().to(device=device, dtype=dtype) for w in v] for k, v in _params(layer).items()}
    # m in fp32 from the parameters at the test dtype, as the integrator builds it; autograd only here
    leaves = {k: [w.float().cpu().requires_grad_() for w in p[k]] for k in ("w_out", "w2", "wd")}
    w32 = wts.detach().float().requires_grad_()
    m = _build_m(leaves["w_out"][0], leaves["w2"], leaves["wd"], w32)
    sd = s.detach().to(device=device, dtype=dtype)
    if s_layout is not None:  # s (and so the forward's s_out and t) in another layout
        sd = non_contiguous(sd, s_layout)
    md = m.detach().to(device)
    s_out = mefc_step_fwd(sd, p["dw1"], p["w1"], p["dw2"], p["dwd"], md)
    gd = g.to(device=device, dtype=dtype)
    if g_layout is not None:
        gd = non_contiguous(gd, g_layout)
        assert not gd.is_contiguous()
    with _cudnn_fp32_precision("ieee"):  # fp32 truth is compared at fp32 (TF32: GPU only, see below)
        ds, d_dw1, d_w1, d_dw2, d_dwd, dm = MB.mefc_step_bwd(gd, sd, s_out, p["dw1"], p["w1"], p["dw2"], p["dwd"],
                                                             md)
    assert ds.dtype == dtype and ds.is_contiguous()
    assert dm.dtype == torch.float32 and dm.shape == m.shape and dm.is_contiguous()
    chain = [leaves["w_out"][0], *leaves["w2"], *leaves["wd"], w32]
    cg = torch.autograd.grad(m, chain, dm.cpu())
    out = {"s": ds, "w": cg[-1], "w_out0": cg[0]}
    out.update({f"w2{i}": cg[1 + i] for i in range(4)})
    out.update({f"wd{i}": cg[5 + i] for i in range(3)})
    for name, gs in (("dw1", d_dw1), ("w1", d_w1), ("dw2", d_dw2), ("dwd", d_dwd)):
        for i, gr in enumerate(gs):
            assert gr.dtype == torch.float32 and gr.is_contiguous(), name
            out[f"{name}{i}"] = gr
    return out


def _check(B, C, H, W, dtype, device, seed, g_layout=None, s_layout=None):
    layer = _layer(C, seed)
    s = randn(B, C, H, W, seed=seed + 1)
    wts = torch.softmax(randn(B, 8, seed=seed + 2), dim=-1)
    g = randn(B, C, H, W, seed=seed + 3)
    fast = _fast_grads(layer, s, wts, g, dtype, device, g_layout, s_layout)
    ref64 = _original_grads(layer, s, wts, g, torch.float64)
    reflp = _original_grads(layer, s, wts, g, dtype)
    assert set(fast) == set(ref64), set(fast) ^ set(ref64)
    for name in ref64:
        # the kernel's weight gradients are fp32 whatever the input dtype: compare at the test dtype's rule
        assert_close(f"grad {name}", fast[name].cpu(), ref64[name], reflp[name], dtype=dtype)


CASES = [  # (B, C, H, W, dtype, layout of g, tiles; the first case also passes s non-contiguous)
    # the GPU's tiles: 3 full-channel tiles of 64 pixels, 2 depthwise tiles of 128, one ds program per
    # channel; every partial-sum buffer has several chunks
    (1, 20, 11, 13, torch.float32, "pad", "gpu"),
    (2, 48, 10, 13, torch.float32, "channels_last", "interpreter"),  # one tile per image from here on
    (3, 20, 9, 20, torch.float16, "transpose", "interpreter"),
    (2, 5, 6, 1, torch.float32, "pad", "interpreter"),  # one-pixel-wide and one-pixel-high images, C < BLOCK_K
    (1, 3, 1, 7, torch.float32, "pad", "interpreter"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-C{}-{}x{}-{}-g_{}-{}".format(*c[:4], str(c[4])[6:], *c[5:]))
def test_against_original(case, device):
    B, C, H, W, dtype, layout, tiles = case
    with launch_tiles(tiles):
        _check(B, C, H, W, dtype, device, seed=10 * C + B, g_layout=layout, s_layout="pad" if B == 1 else None)


def test_torch_form_matches_kernels(device):
    """The op layer's plain-PyTorch step (CPU without the interpreter, C > 128) computes the same gradients."""
    B, C, H, W = 1, 20, 5, 7
    layer = _layer(C, 3)
    p = {k: [w.detach().to(device) for w in v] for k, v in _params(layer).items()}
    m = _build_m(p["w_out"][0].cpu(), p["w2"], p["wd"], torch.softmax(randn(B, 8, seed=4), -1)).to(device)
    s = randn(B, C, H, W, seed=5, device=device)
    g = randn(B, C, H, W, seed=6, device=device)
    args = (s, mefc_step_fwd(s, p["dw1"], p["w1"], p["dw2"], p["dwd"], m), p["dw1"], p["w1"], p["dw2"], p["dwd"], m)
    a = MB.mefc_step_bwd(g, *args)
    b = step_torch_bwd(g, args[0], *args[2:])
    for x, y in zip(a, b):
        for u, v in zip(x if isinstance(x, tuple) else (x,), y if isinstance(y, tuple) else (y,)):
            assert_close("torch form", u.cpu(), v.double().cpu(), dtype=torch.float32, floor=1e-5)


def test_deterministic_and_no_input_grad(device):
    B, C, H, W = 1, 20, 12, 13  # on the GPU's tiles: several pixel tiles and chunks write partial sums
    layer = _layer(C, 7)
    p = {k: [w.detach().to(device) for w in v] for k, v in _params(layer).items()}
    m = _build_m(p["w_out"][0].cpu(), p["w2"], p["wd"], torch.softmax(randn(B, 8, seed=8), -1)).to(device)
    s = randn(B, C, H, W, seed=9, device=device)
    g = randn(B, C, H, W, seed=10, device=device)
    args = (g, s, mefc_step_fwd(s, p["dw1"], p["w1"], p["dw2"], p["dwd"], m), p["dw1"], p["w1"], p["dw2"], p["dwd"], m)
    with launch_tiles("gpu"):
        first = MB.mefc_step_bwd(*args)
        second = MB.mefc_step_bwd(*args, needs_input_grad=False)
    assert second[0] is None
    for x, y in zip(first[1:], second[1:]):
        for u, v in zip(x if isinstance(x, tuple) else (x,), y if isinstance(y, tuple) else (y,)):
            assert torch.equal(u, v)


@pytest.mark.parametrize("flag, expected", [("tf32", "tf32"), ("ieee", "ieee")])
def test_dots_follow_the_cudnn_tf32_setting(flag, expected, monkeypatch):
    """Every dot-carrying launch receives PREC from PyTorch's cuDNN convolution setting."""
    seen = {}

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.setdefault(self.name, set()).add(kwargs.get("PREC"))
            return launch

    for name in ("_mefc_bwd_dz_kernel", "_mefc_bwd_outer_kernel", "_mefc_bwd_sep_kernel", "_mefc_bwd_ds_kernel",
                 "_mefc_bwd_dwgrad_kernel"):
        monkeypatch.setattr(MB, name, Recorder(name))
    C = 20
    layer = _layer(C, 1)
    p = {k: [w.detach() for w in v] for k, v in _params(layer).items()}
    s = randn(1, C, 5, 6, seed=1)
    m = randn(1, C, 8 * C, seed=2)
    with _cudnn_fp32_precision(flag):
        MB.mefc_step_bwd(s, s, s, p["dw1"], p["w1"], p["dw2"], p["dwd"], m)
    for name in ("_mefc_bwd_dz_kernel", "_mefc_bwd_outer_kernel", "_mefc_bwd_sep_kernel"):
        assert seen[name] == {expected}, (name, seen)


def test_bad_inputs():
    C = 20
    p = {k: [w.detach() for w in v] for k, v in _params(_layer(C, 1)).items()}
    s = randn(1, C, 5, 6, seed=1)
    m = randn(1, C, 8 * C, seed=2)
    ok = (s, s, s, p["dw1"], p["w1"], p["dw2"], p["dwd"], m)
    with pytest.raises(ValueError, match="g must have shape"):
        MB.mefc_step_bwd(s[:, :10], *ok[1:])
    with pytest.raises(ValueError, match="s must have 4 dimensions"):
        MB.mefc_step_bwd(s, s[0], *ok[2:])
    with pytest.raises(ValueError, match=r"dw2\[1\] must have shape"):
        MB.mefc_step_bwd(*ok[:5], [p["dw2"][0], p["dw2"][0], *p["dw2"][2:]], *ok[6:])
    with pytest.raises(ValueError, match="dwd must be a tuple of 3"):
        MB.mefc_step_bwd(*ok[:6], p["dwd"][:2], m)
    with pytest.raises(TypeError, match="m has dtype float16"):
        MB.mefc_step_bwd(*ok[:7], m.half())
    big = randn(1, 130, 2, 2, seed=3)
    with pytest.raises(ValueError, match="at most 128 channels"):
        pb = {k: [w.detach() for w in v] for k, v in _params(_layer(130, 1)).items()}
        MB.mefc_step_bwd(big, big, big, pb["dw1"], pb["w1"], pb["dw2"], pb["dwd"], randn(1, 130, 1040, seed=4))


def test_traffic_bytes():
    plane = 256 * 256 * 4
    assert MB.traffic_bytes(1, 48, 256, 256) == 76 * 48 * plane
    assert MB.traffic_bytes(2, 96, 128, 128, elem_size=2) == 76 * 96 * 2 * 128 * 128 * 2
    assert MB.traffic_bytes(1, 48, 256, 256) < MB.original_traffic_bytes(1, 48, 256, 256) / 2
