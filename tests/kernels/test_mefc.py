"""MEFC forward kernels (kernels/mefc.py) against the original step on random weights: one step
``relu(OperationLayer(s, w) + s)`` in float64 (truth) and at the test precision (PyTorch's own error),
the sep convs' first half on its own, the TF32 policy of the launches, launch configurations at any
size (and the channel chunk of the GPU and of the interpreter), the byte model, and input errors.

Interpreter cost: a step on 11x13 or 9x20 pixels at C = 20 and 48, on the GPU's tiles (BLOCK_H = 1
and 2: several programs per kernel) and on the interpreter's (one tile per image).
"""

import pytest
import torch
from drsformer_fast.kernels import mefc
from drsformer_fast.kernels._registry import all_compile_configs
from helpers import assert_close, launch_tiles, non_contiguous, randn
from original_arch import perturb_

from drsformer_fast import reference as R


def _layer(C: int, seed: int, dtype=torch.float64) -> R.OperationLayer:
    return perturb_(R.OperationLayer(C, 1), seed).to(dtype)


def _weights(layer: R.OperationLayer):
    """(dw1, w1, dw2, dwd): the original parameter tensors the kernels take."""
    ops = layer._ops
    dw1 = tuple(ops[o].op[0].weight for o in range(4))
    w1 = tuple(ops[o].op[1].weight for o in range(4))
    dw2 = tuple(ops[o].op[3].weight for o in range(4))
    dwd = tuple(ops[4 + i].op[0].weight for i in range(3))
    return dw1, w1, dw2, dwd


def _build_m(layer: R.OperationLayer, w: torch.Tensor) -> torch.Tensor:
    """m [B, C, 8C] fp32: m[b][:, oC:(o+1)C] = W_out[:, oC:(o+1)C] * w[b, o] @ W2_o (identity for the pool)."""
    C = layer._out[0].weight.shape[0]
    w_out = layer._out[0].weight.detach().double().reshape(C, 8 * C)
    blocks = []
    for o in range(8):
        if o < 4:
            w2 = layer._ops[o].op[4].weight.detach().double().reshape(C, C)
        elif o < 7:
            w2 = layer._ops[o].op[1].weight.detach().double().reshape(C, C)
        else:
            w2 = torch.eye(C, dtype=torch.float64)
        blocks.append(torch.einsum("ij,b,jk->bik", w_out[:, o * C:(o + 1) * C], w[:, o].double(), w2))
    return torch.cat(blocks, dim=2).float()


def _op_weights(B: int, seed: int) -> torch.Tensor:
    return torch.softmax(randn(B, 8, seed=seed, dtype=torch.float64, scale=2.0), dim=-1)


@pytest.mark.parametrize("dtype,C,B,H,W,layout,tiles", [
    (torch.float32, 20, 3, 11, 13, "pad", "gpu"),  # BLOCK_H = 2: 6 tile rows, the last one half
    (torch.float32, 48, 1, 9, 20, "channels_last", "gpu"),  # BLOCK_H = 1 (too few programs for 2)
    (torch.float16, 20, 3, 9, 20, None, "interpreter"),  # one 16-row tile (what the model tests run)
])
def test_step_matches_original(device, dtype, C, B, H, W, layout, tiles):
    layer64 = _layer(C, seed=C + B)
    s64 = randn(B, C, H, W, seed=7 * C + B, dtype=torch.float64)
    w64 = _op_weights(B, seed=B)
    assert not torch.allclose(w64[0], w64[-1]) or B == 1  # per-sample matrices differ
    with torch.no_grad():
        truth = torch.relu(layer64(s64, w64) + s64)
        layer_lp = _layer(C, seed=C + B, dtype=dtype)
        torch_lp = torch.relu(layer_lp(s64.to(dtype), w64.to(dtype)) + s64.to(dtype))
    dw1, w1, dw2, dwd = (tuple(p.detach().to(device) for p in group) for group in _weights(layer_lp))
    m = _build_m(layer_lp, w64).to(device)
    s = s64.to(device=device, dtype=dtype)
    if layout is not None:
        s = non_contiguous(s, layout)
        m = m.transpose(1, 2).contiguous().transpose(1, 2)  # m with any strides too
    with launch_tiles(tiles):
        out = mefc.mefc_step_fwd(s, dw1, w1, dw2, dwd, m)
    assert out.dtype == dtype and out.is_contiguous() and out.shape == (B, C, H, W)
    assert_close("s_out", out.cpu(), truth, torch_lp)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_sep_inner_matches_torch(device, dtype):
    C, B, H, W = 20, 2, 11, 13
    layer64 = _layer(C, seed=5)
    layer_lp = _layer(C, seed=5, dtype=dtype)
    s64 = randn(B, C, H, W, seed=11, dtype=torch.float64)
    s = non_contiguous(s64.to(device=device, dtype=dtype), "transpose")
    dw1, w1, _, _ = (tuple(p.detach().to(device) for p in group) for group in _weights(layer_lp))
    t = mefc.sep_inner_fwd(s, dw1, w1)
    assert t.shape == (B, 4, C, H, W) and t.dtype == dtype and t.is_contiguous()
    with torch.no_grad():
        for o in range(4):
            ref = torch.relu(layer64._ops[o].op[1](layer64._ops[o].op[0](s64)))
            lp = torch.relu(layer_lp._ops[o].op[1](layer_lp._ops[o].op[0](s64.to(dtype))))
            assert_close(f"t[:, {o}]", t[:, o].cpu(), ref, lp)


class _Recorder:
    """Stands in for a kernel: records the launch's constexprs instead of running it."""

    def __init__(self, calls):
        self.calls = calls

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append(kwargs)


@pytest.mark.parametrize("tf32", [True, False])
def test_dots_follow_torch_tf32_setting(monkeypatch, tf32):
    """The interpreter runs every dot in exact fp32, so the policy is checked at the launch: fp32 dots
    get "tf32" exactly when PyTorch lets cuDNN convolutions use TF32; fp16 ignores the setting."""
    calls = []
    monkeypatch.setattr(mefc, "_mefc_inner_kernel", _Recorder(calls))
    monkeypatch.setattr(mefc, "_mefc_step_kernel", _Recorder(calls))
    cudnn = torch.backends.cudnn
    per_op = hasattr(getattr(cudnn, "conv", None), "fp32_precision")
    owner, flag = (cudnn.conv, "fp32_precision") if per_op else (cudnn, "allow_tf32")
    prev = getattr(owner, flag)
    setattr(owner, flag, ("tf32" if tf32 else "ieee") if per_op else tf32)
    try:
        C = 20
        dw1, w1, dw2, dwd = _weights(_layer(C, seed=1, dtype=torch.float32))
        m = torch.zeros(1, C, 8 * C)
        s = torch.ones(1, C, 5, 6)
        mefc.mefc_step_fwd(s, dw1, w1, dw2, dwd, m)
        assert [c["INPUT_PRECISION"] for c in calls] == ["tf32" if tf32 else "ieee"] * 2
        calls.clear()
        mefc.mefc_step_fwd(s.half(), dw1, w1, dw2, dwd, m)
        assert [c["INPUT_PRECISION"] for c in calls] == ["ieee"] * 2
    finally:
        setattr(owner, flag, prev)
    assert all(c["num_stages"] == mefc.NUM_STAGES and c["maxnreg"] == mefc.MAXNREG for c in calls)


def _registered():
    return {(c.kernel, c.constexprs["CP"], c.constexprs["BLOCK_H"], c.num_warps, c.num_stages,
             c.extra.get("maxnreg")) for c in all_compile_configs() if c.kernel in
            (mefc._mefc_inner_kernel, mefc._mefc_step_kernel)}


@pytest.mark.parametrize("B,C,H,W", [(1, 48, 256, 256), (1, 96, 256, 256), (1, 48, 4320, 7680),
                                     (16, 96, 4320, 7680), (1, 20, 8, 8), (3, 127, 33, 17), (1, 128, 64, 64)])
@pytest.mark.parametrize("sm", [132, 4])
def test_launch_config_registered_and_within_limits(B, C, H, W, sm):
    cp, bh, warps = mefc.launch_config(B, C, H, W, sm)
    registered = _registered()
    for kernel in (mefc._mefc_inner_kernel, mefc._mefc_step_kernel):
        assert (kernel, cp, bh, warps, mefc.NUM_STAGES, mefc.MAXNREG) in registered
    n_tw, n_tiles = mefc._grid_sizes(H, W, bh)
    assert 4 * B * n_tiles < 2**31  # one-dimensional grids: x < 2**31, y = z = 1
    assert cp >= C and cp * bh * mefc.BLOCK_W <= mefc.ACC_ELEMENTS
    if sm == 132 and 11 * C * H * W * 4 >= 4 * 2**20:
        assert B * n_tiles >= 119  # a launch touching >= 4 MB fills at least 90% of an H100 wave


def test_channel_chunk_of_the_gpu_and_of_the_interpreter():
    """BLOCK_K, the channels a chunk's taps cover: the GPU's 16 at any size (the registered
    configurations); under the interpreter the next power of two of C from 16 to 64, and 16 again where
    the larger chunk's int32 offsets (chunk x H x W) would not fit."""
    from drsformer_fast.kernels._utils import interpreter_tiles

    with launch_tiles("gpu"):
        assert {mefc.channel_chunk(C, H, W) for C in (8, 20, 96, 128) for H, W in ((9, 20), (2**13, 2**13))} == {
            mefc.BLOCK_K}
    with launch_tiles("interpreter"):
        if not interpreter_tiles():  # a GPU run: its own tiles whatever the test asks
            assert mefc.channel_chunk(96, 9, 20) == mefc.BLOCK_K
            return
        assert [mefc.channel_chunk(C, 9, 20) for C in (8, 20, 33, 96, 128)] == [16, 32, 64, 64, 64]
        assert mefc.channel_chunk(96, 4320, 7680) == 64  # 64 x 33 MP < 2**31
        assert mefc.channel_chunk(96, 2**13, 2**13) == mefc.BLOCK_K  # 64 x 2**26 = 2**32 does not fit


def test_every_channel_count_has_a_registered_config():
    registered = _registered()
    for C in range(1, mefc.MAX_CHANNELS + 1):
        for H, W in ((7, 9), (256, 256)):
            cp, bh, warps = mefc.launch_config(1, C, H, W, 132)
            assert (mefc._mefc_step_kernel, cp, bh, warps, mefc.NUM_STAGES, mefc.MAXNREG) in registered, C


def test_traffic_bytes():
    plane = 256 * 256 * 4
    assert mefc.traffic_bytes(1, 48, 256, 256) == 11 * 48 * plane == 138_412_032
    assert mefc.traffic_bytes(1, 96, 256, 256, elem_size=2) == 11 * 96 * plane // 2
    assert mefc.original_traffic_bytes(1, 48, 256, 256) == 102 * 48 * plane


def test_errors():
    C = 20
    dw1, w1, dw2, dwd = _weights(_layer(C, seed=2, dtype=torch.float32))
    s = torch.randn(1, C, 6, 7)
    m = torch.randn(1, C, 8 * C)
    with pytest.raises(ValueError, match="4 dimensions"):
        mefc.mefc_step_fwd(s[0], dw1, w1, dw2, dwd, m)
    with pytest.raises(ValueError, match=r"dw1\[0\] must have shape \[24, 1, 1, 1\]"):
        mefc.mefc_step_fwd(torch.randn(1, 24, 6, 7), dw1, w1, dw2, dwd, torch.randn(1, 24, 192))
    with pytest.raises(ValueError, match=r"w1\[2\] must have shape"):
        mefc.sep_inner_fwd(s, dw1, (w1[0], w1[1], w1[2][:, :10], w1[3]))
    with pytest.raises(ValueError, match="dwd must be a tuple of 3"):
        mefc.mefc_step_fwd(s, dw1, w1, dw2, dwd[:2], m)
    with pytest.raises(ValueError, match=r"dw2\[1\] must have shape \[20, 1, 3, 3\]"):
        mefc.mefc_step_fwd(s, dw1, w1, (dw2[0], dw2[2], dw2[2], dw2[3]), dwd, m)
    with pytest.raises(ValueError, match=r"m must have shape \(1, 20, 160\)"):
        mefc.mefc_step_fwd(s, dw1, w1, dw2, dwd, m[:, :, :80])
    with pytest.raises(TypeError, match="dtype int64"):
        mefc.mefc_step_fwd(s.long(), dw1, w1, dw2, dwd, m)
    with pytest.raises(ValueError, match="at most 128 channels"):
        mefc.sep_inner_fwd(torch.randn(1, 130, 4, 4), dw1, w1)
