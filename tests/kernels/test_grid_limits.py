"""Any image the GPU's memory can hold: every launcher, forward and backward, at 4096x2304 and 8K.

The fast modules (LayerNorm, attention, feed-forward, a transformer block, the whole model at a
3-channel input of the same size, which adds every level, the decoder's 96-channel level 1 and
whatever else the model launches) and the depthwise-convolution and MEFC-step launchers run on fake
tensors (``drsformer_fast.perf.launches``: real shapes, no memory, no compute) at 1x48x2304x4096 and
1x48x4320x7680. Every captured Triton launch must have a grid within CUDA's limits (x < 2**31, y and
z <= 65535), and no launcher may refuse the size.
"""

import pytest
import torch

from drsformer_fast.perf import launches as L

SIZES = {"4096x2304": (2304, 4096), "8K": (4320, 7680)}
KINDS = ("layernorm", "attention", "feedforward", "block", "model")


def _check(launches, what):
    assert launches, f"{what}: no Triton launch captured (the fast path did not run?)"
    bad = [f"{l.tags.get('pass', '')} {l.name} grid {l.grid}: {'; '.join(L.grid_problems(l))}"
           for l in launches if L.grid_problems(l)]
    assert not bad, f"{what}: launches beyond CUDA's grid limits:\n" + "\n".join(bad)


def _run(what, fn):
    try:
        return fn()
    except (ValueError, RuntimeError) as exc:  # a launcher that refuses the size
        pytest.fail(f"{what}: the launcher refused: {type(exc).__name__}: {exc}")


# bf16: the 4-byte word kernels of fp16/bf16 (kernels/_utils.py, "Words") have grids of their own
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_module_launches_fit_cuda_grid_limits(kind, size, dtype):
    h, w = SIZES[size]
    channels = 3 if kind == "model" else 48
    module = L.build_module(kind, 48, 1, dtype)
    what = f"{kind} 1x{channels}x{h}x{w} {dtype}"
    fwd, bwd = _run(what, lambda: L.capture(module, (1, channels, h, w), backward=True))
    _check(fwd, what + " forward")
    _check(bwd, what + " backward")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("size", SIZES)
def test_depthwise_conv_launches_fit_cuda_grid_limits(size, dtype):
    from drsformer_fast.kernels import dwconv

    h, w = SIZES[size]
    c = 2 * L.ffn_hidden(48)  # the feed-forward's stage-1 convolutions at level 1 (254 channels)

    def inputs():
        x = torch.empty(1, c, h, w, dtype=dtype)
        return x, [torch.empty(c, 1, 3, 3), torch.empty(c, 1, 5, 5)]

    what = f"depthwise conv 1x{c}x{h}x{w} {dtype}"
    fwd = _run(what, lambda: L.capture_function(lambda x, ws: dwconv.depthwise_conv_fwd(x, ws, [None, None], True),
                                                inputs, tags={"pass": "fwd"}))
    _check(fwd, what + " forward")
    bwd = _run(what, lambda: L.capture_function(
        lambda x, ws: dwconv.depthwise_conv_bwd([torch.empty_like(x), torch.empty_like(x)], x, ws,
                                                need_bias_grad=True), inputs, tags={"pass": "bwd"}))
    _check(bwd, what + " backward")


@pytest.mark.parametrize("size", SIZES)
def test_mefc_launches_fit_cuda_grid_limits(size):
    """The MEFC step's launchers, called directly (as long as no module of the fast model reaches them,
    the model case above cannot), at 48 channels: encoder level 0's width."""
    import importlib.util

    if importlib.util.find_spec("drsformer_fast.kernels.mefc") is None:
        pytest.skip("no MEFC kernels in this build (kernels/mefc.py)")
    from drsformer_fast.kernels import mefc, mefc_backward

    h, w = SIZES[size]
    c = 48

    def inputs():
        s = torch.empty(1, c, h, w)
        dw1 = [torch.empty(c, 1, k, k) for k in mefc.SEP_SIZES]
        w1 = [torch.empty(c, c, 1, 1) for _ in mefc.SEP_SIZES]
        dw2 = [torch.empty(c, 1, k, k) for k in mefc.SEP_SIZES]
        dwd = [torch.empty(c, 1, k, k) for k in mefc.DIL_SIZES]
        m = torch.empty(1, c, mefc.NUM_OPS * c)
        return s, dw1, w1, dw2, dwd, m

    what = f"MEFC step 1x{c}x{h}x{w}"
    fwd = _run(what, lambda: L.capture_function(mefc.mefc_step_fwd, inputs, tags={"pass": "fwd"}))
    _check(fwd, what + " forward")
    bwd = _run(what, lambda: L.capture_function(
        lambda s, *rest: mefc_backward.mefc_step_bwd(torch.empty_like(s), s, torch.empty_like(s), *rest),
        inputs, tags={"pass": "bwd"}))
    _check(bwd, what + " backward")
