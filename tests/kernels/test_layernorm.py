"""Channel LayerNorm kernel (forward and backward) against the reference, through the custom op."""

import pytest
import torch
from conftest import half_dtypes
from helpers import assert_close, non_contiguous, randn

from drsformer_fast import reference as R
from drsformer_fast.modules import ChannelLayerNorm
from drsformer_fast.ops import layer_norm

SHAPES = [(1, 48, 13, 17), (3, 127, 5, 7), (2, 8, 9, 1), (1, 384, 3, 5), (2, 1000, 2, 3), (16, 3, 4, 5)]


def _run(x, w, b, g):
    """Output and (dx, dw, db) of the fast op for upstream gradient g."""
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    y = layer_norm(x, w, b)
    inputs = [x, w] + ([b] if b is not None else [])
    return y, torch.autograd.grad(y, inputs, g)


def _ref(x, w, b, g, dtype):
    x = x.detach().to(dtype).requires_grad_()
    w = w.detach().to(dtype).requires_grad_()
    b = b.detach().to(dtype).requires_grad_() if b is not None else None
    y = R.channel_layer_norm(x, w, b)
    inputs = [x, w] + ([b] if b is not None else [])
    return y, torch.autograd.grad(y, inputs, g.to(dtype))


def _check(x, w, b, g, dtype):
    y, grads = _run(x, w, b, g)
    y64, grads64 = _ref(x, w, b, g, torch.float64)
    ylp, gradslp = _ref(x.cpu(), w.cpu(), b.cpu() if b is not None else None, g.cpu(), x.dtype)
    assert y.dtype == x.dtype
    assert_close("y", y, y64, ylp, dtype=dtype)
    for name, a, r, t in zip(("dx", "dweight", "dbias"), grads, grads64, gradslp):
        assert_close(name, a, r, t, dtype=dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_bias", [True, False], ids=["WithBias", "BiasFree"])
def test_fp32_random(shape, with_bias, device):
    B, C, H, W = shape
    x = randn(B, C, H, W, seed=1, device=device, scale=2.0) + 0.5
    w = randn(C, seed=2, device=device)
    b = randn(C, seed=3, device=device) if with_bias else None
    g = randn(B, C, H, W, seed=4, device=device)
    _check(x, w, b, g, torch.float32)


@pytest.mark.parametrize("dtype", half_dtypes(), ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["WithBias", "BiasFree"])
def test_half_precision(dtype, with_bias, device):
    B, C, H, W = 2, 96, 11, 7
    x = randn(B, C, H, W, seed=5, device=device, dtype=dtype)
    w = randn(C, seed=6, device=device)
    b = randn(C, seed=7, device=device) if with_bias else None
    g = randn(B, C, H, W, seed=8, device=device, dtype=dtype)
    _check(x, w, b, g, dtype)


@pytest.mark.parametrize("x_layout", ["pad", "channels_last", "transpose"])
@pytest.mark.parametrize("g_layout", ["contiguous", "pad", "channels_last"])
def test_non_contiguous_input_and_grad(x_layout, g_layout, device):
    B, C, H, W = 2, 48, 6, 10
    x = non_contiguous(randn(B, C, H, W, seed=9, device=device), x_layout)
    g = randn(B, C, H, W, seed=10, device=device)
    if g_layout != "contiguous":
        g = non_contiguous(g, g_layout)
    assert not x.is_contiguous()
    _check(x, randn(C, seed=11, device=device), randn(C, seed=12, device=device), g, torch.float32)


def test_weight_grads_are_deterministic(device):
    x = randn(3, 127, 17, 19, seed=13, device=device)
    w, b = randn(127, seed=14, device=device), randn(127, seed=15, device=device)
    g = randn(3, 127, 17, 19, seed=16, device=device)
    first = _run(x, w, b, g)[1]
    second = _run(x, w, b, g)[1]
    for a, c in zip(first, second):
        assert torch.equal(a, c)


def test_module_matches_original_layernorm_and_loads_its_state(device):
    for ln_type in ("WithBias", "BiasFree"):
        orig = R.LayerNorm(31, ln_type)
        with torch.no_grad():
            for p in orig.parameters():
                p.copy_(randn(*p.shape, seed=17))
        fast = ChannelLayerNorm(31, ln_type)
        fast.load_state_dict(orig.state_dict())
        assert list(fast.state_dict()) == list(orig.state_dict())
        orig, fast = orig.to(device), fast.to(device)
        x = randn(2, 31, 5, 9, seed=18, device=device)
        assert fast.kernel_path(x) in ("triton", "triton-interpreter")
        assert_close("module output", fast(x), orig.double()(x.double()), orig.float()(x))


def test_bad_inputs_raise_clear_errors(device):
    w = torch.ones(8, device=device)
    x = randn(2, 8, 3, 3, seed=19, device=device)
    with pytest.raises(TypeError, match="dtype float64"):
        layer_norm(x.double(), w.double(), None)
    with pytest.raises(ValueError, match="4 dimensions"):
        layer_norm(x[0], w, None)
    with pytest.raises(ValueError, match=r"shape \(8,\), got \(7,\)"):
        layer_norm(x, torch.ones(7, device=device), None)
    with pytest.raises(ValueError, match="at most 1024 channels"):
        layer_norm(randn(1, 1025, 2, 2, seed=20, device=device), torch.ones(1025, device=device), None)
    with pytest.raises(ValueError, match="expects"):
        ChannelLayerNorm(8).to(device)(randn(1, 9, 2, 2, seed=21, device=device))
    with pytest.raises(ValueError, match="is on meta"):
        layer_norm(x, torch.ones(8, device="meta"), None)
