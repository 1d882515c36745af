"""Input checks of the fused ops: each bad argument is named, whichever path the call takes, and the
eager path checks its inputs once per call (the kernel launcher's check; the op's own wrapper checks
only where the dispatcher is taken: fake tensors, torch.compile, dispatch modes)."""

import pytest
import torch
from drsformer_fast.kernels import attention as KA
from drsformer_fast.kernels import feedforward as KF
from helpers import randn
from torch.utils._python_dispatch import TorchDispatchMode

from drsformer_fast import _validation, ops
from drsformer_fast.ops import attention as OA
from drsformer_fast.ops import feedforward as OF

pytestmark = pytest.mark.usefixtures("one_thread")


class _PassThrough(TorchDispatchMode):
    """A dispatch mode that changes nothing: with one active, the ops take the dispatcher."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _ffn_params(d=4, hidden=5, seed=0):
    shapes = _validation.ffn_param_shapes(d, hidden)
    return {n: randn(*s, seed=seed + i, scale=0.3) for i, (n, s) in enumerate(shapes.items())}


def _attention_args(d=4, heads=2):
    return dict(qkv_weight=randn(3 * d, d, 1, 1, seed=1, scale=0.3), qkv_bias=randn(3 * d, seed=2),
                dw_weight=randn(3 * d, 1, 3, 3, seed=3, scale=0.3), dw_bias=randn(3 * d, seed=4),
                temperature=randn(heads, 1, 1, seed=5).abs() + 0.5,
                attn_weights=[randn(1, seed=6 + i).abs() + 0.1 for i in range(4)],
                proj_weight=randn(d, d, 1, 1, seed=10, scale=0.3), proj_bias=randn(d, seed=11), num_heads=heads)


def _bad_ffn(case):
    p = _ffn_params()
    if case == "shape":
        p["g5_weight"] = p["g5_weight"][:, :, :3, :3]
        return p, ValueError, r"g5_weight must have shape \(5, 2, 5, 5\), got \(5, 2, 3, 3\)"
    if case == "dtype":
        p["dw3_weight"] = torch.ones(p["dw3_weight"].shape, dtype=torch.int32)
        return p, TypeError, "dw3_weight must be a floating-point tensor, got int32"
    p["out_bias"] = p["out_bias"].to("meta")
    return p, ValueError, "out_bias is on meta but the input is on cpu"


def _bad_attention(case):
    a = _attention_args()
    if case == "shape":
        a["proj_weight"] = a["proj_weight"][:3]
        return a, ValueError, r"project_out.weight must have shape \(4, 4, 1, 1\), got \(3, 4, 1, 1\)"
    if case == "heads":
        a["num_heads"] = 3
        return a, ValueError, r"4 channels do not split into num_heads=3 heads"
    a["attn_weights"] = a["attn_weights"][:3]
    return a, ValueError, "attn_weights must be the four tensors attn1..attn4, got 3"


def _call_in(mode, call, x):
    """``call(x)`` eager with grad (an autograd node), eager without grad, or through the dispatcher."""
    if mode == "dispatcher":
        with _PassThrough():
            return call(x)
    with torch.set_grad_enabled(mode == "eager"):
        return call(x.requires_grad_(mode == "eager"))


@pytest.mark.parametrize("mode", ["eager", "no_grad", "dispatcher"])
@pytest.mark.parametrize("case", ["shape", "dtype", "device"])
def test_feed_forward_names_a_bad_parameter(case, mode):
    params, exc, message = _bad_ffn(case)
    with pytest.raises(exc, match=message):
        _call_in(mode, lambda x: ops.mixed_scale_feed_forward(x, *params.values()), randn(1, 4, 3, 5, seed=20))


@pytest.mark.parametrize("mode", ["eager", "no_grad", "dispatcher"])
@pytest.mark.parametrize("case", ["shape", "heads", "attn"])
def test_attention_names_a_bad_argument(case, mode):
    args, exc, message = _bad_attention(case)
    with pytest.raises(exc, match=message):
        _call_in(mode, lambda x: ops.topk_sparse_attention(x, **args), randn(1, 4, 3, 5, seed=21))


@pytest.mark.parametrize("mode", ["eager", "dispatcher"])
def test_layer_norm_names_a_bad_parameter(mode):
    x = randn(1, 4, 3, 5, seed=22)
    w = torch.ones(4, dtype=torch.int64)
    with pytest.raises(TypeError, match="weight must be a floating-point tensor, got int64"):
        if mode == "dispatcher":
            with _PassThrough():
                ops.layer_norm(x, w, None)
        else:
            ops.layer_norm(x, w, None)
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\), got \(5,\)"):
        ops.layer_norm(x, randn(4, seed=1), randn(5, seed=2))


def _count(monkeypatch, module, name, seen):
    real = getattr(module, name)

    def counted(*args, **kwargs):
        seen.append(module.__name__)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


@pytest.mark.parametrize("grad", [False, True])
def test_eager_calls_check_their_inputs_once(monkeypatch, grad):
    seen = []
    for module in (OF, KF):
        _count(monkeypatch, module, "check_feed_forward_inputs", seen)
    for module in (OA, KA):
        _count(monkeypatch, module, "check_attention_inputs", seen)
    x = randn(1, 4, 3, 5, seed=23).requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        ops.mixed_scale_feed_forward(x, *_ffn_params().values())
        ops.topk_sparse_attention(x, **_attention_args())
    assert seen == ["drsformer_fast.kernels.feedforward", "drsformer_fast.kernels.attention"], seen
    # through the dispatcher the op's wrapper checks first, before the fake or real implementation
    seen.clear()
    with _PassThrough(), torch.no_grad():
        ops.mixed_scale_feed_forward(x, *_ffn_params().values())
    assert seen[0] == "drsformer_fast.ops.feedforward", seen
