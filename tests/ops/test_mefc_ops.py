"""MEFC (the mixture-of-experts feature compensator): ``FeatureCompensator`` and the fused step ops
against the original ``subnet`` (float64 reference), output and EVERY gradient with one shared
random upstream gradient; opcheck of the three ops; torch.compile with Inductor; patch(); the whole fast
model; memory saved for backward, bytes and launches (package accounting, fake tensors); errors.

Everything goes through the public module and ops (``drsformer_fast.ops.mefc``), so the same tests
check whatever ``kernels/mefc.py`` and ``kernels/mefc_backward.py`` hold. Interpreter cost: images of
11x13 pixels or less, one batch > 1 case per width, C = 96 once.
"""

import copy

import pytest
import torch
from conftest import half_dtypes
from helpers import assert_close, assert_close_rms, non_contiguous, randn
from original_arch import perturb_
from torch.utils._python_dispatch import TorchDispatchMode

import drsformer_fast
from drsformer_fast import reference as R
from drsformer_fast.model import DRSformer
from drsformer_fast.modules import FeatureCompensator
from drsformer_fast.ops import mefc_step
from drsformer_fast.ops.mefc import DIL_SIZES, SEP_SIZES
from drsformer_fast.perf import accounting
from drsformer_fast.perf.memory import saved_tensor_bytes

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(dim: int, seed: int, layer_num: int = 1, device="cpu"):
    """(original subnet with random weights, fast FeatureCompensator with the same state dict)."""
    ref = perturb_(R.subnet(dim, layer_num), seed)
    fast = FeatureCompensator(dim, layer_num)
    fast.load_state_dict(ref.state_dict())
    return ref, fast.to(device)


def _grads(module, x, g):
    x = x.detach().requires_grad_()
    out = module(x)
    return out, torch.autograd.grad(out, [x] + list(module.parameters()), g.to(out.dtype))


def _names(module):
    return ["input"] + [n for n, _ in module.named_parameters()]


def _check_against_original(ref, fast, x, g, dtype=torch.float32):
    """Output and every gradient of ``fast`` vs the original in float64, PyTorch's own error from the
    original at ``dtype`` (fp32, or autocast to fp16/bf16 on the CPU)."""
    device = x.device
    autocast = dtype != torch.float32
    ctx = torch.autocast(device.type, dtype=dtype) if autocast else torch.autocast(device.type, enabled=False)
    with ctx:
        out, grads = _grads(fast, x, g)
    out64, grads64 = _grads(copy.deepcopy(ref).double(), x.double().cpu(), g.double().cpu())
    lp = copy.deepcopy(ref).float()
    with torch.autocast("cpu", dtype=dtype) if autocast else torch.autocast("cpu", enabled=False):
        out_lp, grads_lp = _grads(lp, x.cpu(), g.cpu())
    names = _names(ref)
    assert out.shape == x.shape and out.dtype == (dtype if autocast else x.dtype)
    assert_close("output", out, out64, out_lp, dtype=dtype)
    if not autocast:
        for n, a, r, t in zip(names, grads, grads64, grads_lp):
            assert_close(n, a, r, t)
    else:
        # one sample of rounding per gradient: per tensor for the input, in aggregate for the
        # parameters (see helpers.assert_close_rms), as the whole-model autocast test does
        assert_close("input grad", grads[0], grads64[0], grads_lp[0], dtype=dtype)
        assert_close_rms(names[1:], grads[1:], grads64[1:], grads_lp[1:], dtype=dtype)


# (B, C, H, W): H, W not multiples of 8; batch 3 so the per-sample weights differ
CASES = [(3, 20, 11, 13), (1, 48, 11, 13), (1, 96, 9, 11)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-C{}-{}x{}".format(*c))
def test_fp32_against_original(case, device):
    B, C, H, W = case
    ref, fast = _pair(C, seed=C + B, device=device)
    assert fast.kernel_path(randn(1, seed=0, device=device)) in ("triton", "triton-interpreter")
    x = randn(B, C, H, W, seed=1, device=device)
    g = randn(B, C, H, W, seed=2, device=device)
    _check_against_original(ref, fast, x, g)


def test_wider_than_the_kernels_runs_the_pytorch_step(device):
    """C > 128 (the kernels' one-tile limit; released models use 48 and 96): the PyTorch step, said by
    kernel_path, still the original's numbers."""
    ref, fast = _pair(130, seed=9, device=device)
    assert fast.kernel_path(randn(1, seed=0, device=device)) == "torch"
    x = randn(1, 130, 5, 6, seed=1, device=device)
    g = randn(1, 130, 5, 6, seed=2, device=device)
    _check_against_original(ref, fast, x, g)


@pytest.mark.parametrize("dtype", half_dtypes(), ids=str)
def test_autocast_against_original(dtype, device):
    ref, fast = _pair(20, seed=5, device=device)
    x = randn(2, 20, 11, 13, seed=3, device=device)
    g = randn(2, 20, 11, 13, seed=4, device=device)
    _check_against_original(ref, fast, x, g, dtype)


@pytest.mark.parametrize("layout", ["channels_last", "pad", "transpose"])
def test_non_contiguous_input(layout, device):
    ref, fast = _pair(20, seed=6, device=device)
    x = non_contiguous(randn(2, 20, 7, 9, seed=7, device=device), layout)
    g = non_contiguous(randn(2, 20, 7, 9, seed=8, device=device), "pad")
    assert not x.is_contiguous() and not g.is_contiguous()
    _check_against_original(ref, fast, x, g)


def test_two_layers_alternate_routing_and_groups(device):
    """layer_num=2: OALayer, GroupOLs, OALayer (on the first group's output), GroupOLs, as the original."""
    ref, fast = _pair(8, seed=9, layer_num=2, device=device)
    assert list(fast.state_dict()) == list(ref.state_dict())
    x = randn(2, 8, 6, 7, seed=10, device=device)
    g = randn(2, 8, 6, 7, seed=11, device=device)
    _check_against_original(ref, fast, x, g)


def test_weight_grads_are_deterministic(device):
    _, fast = _pair(8, seed=12, device=device)
    x = randn(2, 8, 12, 13, seed=13, device=device)
    g = randn(2, 8, 12, 13, seed=14, device=device)
    first, second = _grads(fast, x, g), _grads(fast, x, g)
    assert torch.equal(first[0], second[0])
    for n, a, b in zip(_names(fast), first[1], second[1]):
        assert torch.equal(a, b), n


# ------------------------------------------------------------------------------------------------
# the custom ops
# ------------------------------------------------------------------------------------------------

UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_static")
BWD_UTILS = ("test_schema", "test_faketensor")


def _step_args(B, C, H, W, device, seed=30):
    """Inputs of one step as the module passes them: s >= 0 (a ReLU's output), channels-last 4-d
    tensors (as torch.compile may hand them over), per-sample fp32 m."""
    def p(*shape, seed, scale):
        t = randn(*shape, seed=seed, scale=scale, device=device)
        return (t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t).requires_grad_()

    s = p(B, C, H, W, seed=seed, scale=1.0).detach().relu().requires_grad_()
    dw1 = [p(C, 1, k, k, seed=seed + 1 + i, scale=1 / k) for i, k in enumerate(SEP_SIZES)]
    w1 = [p(C, C, 1, 1, seed=seed + 5 + i, scale=C ** -0.5) for i in range(4)]
    dw2 = [p(C, 1, k, k, seed=seed + 9 + i, scale=1 / k) for i, k in enumerate(SEP_SIZES)]
    dwd = [p(C, 1, k, k, seed=seed + 13 + i, scale=1 / k) for i, k in enumerate(DIL_SIZES)]
    m = p(B, C, 8 * C, seed=seed + 16, scale=0.1)
    return s, dw1, w1, dw2, dwd, m


def test_step_ops_opcheck(device):
    args = _step_args(2, 4, 5, 6, device)
    torch.library.opcheck(torch.ops.drsformer_fast.mefc_step_fwd.default, args, test_utils=UTILS)
    plain = [[t.detach() for t in a] if isinstance(a, list) else a.detach() for a in args]
    s_out = torch.ops.drsformer_fast.mefc_step_fwd(*plain)
    g = randn(2, 4, 5, 6, seed=50, device=device).contiguous(memory_format=torch.channels_last)
    s, dw1, w1, dw2, dwd, m = plain
    for need in (True, False):
        torch.library.opcheck(torch.ops.drsformer_fast.mefc_step_bwd.default,
                              (g, s, s_out, dw1, w1, dw2, dwd, m, need), test_utils=BWD_UTILS)


def test_step_op_gradients_against_autograd_of_the_algebra(device):
    """mefc_step's every gradient (s, each weight, m) against autograd of the step written out with
    F.conv2d in float64 (what the original computes for one step, given m)."""
    import torch.nn.functional as F

    B, C, H, W = 2, 6, 7, 9
    args = _step_args(B, C, H, W, device, seed=60)
    g = randn(B, C, H, W, seed=70, device=device)

    def algebra(s, dw1, w1, dw2, dwd, m):
        z = [F.conv2d(F.relu(F.conv2d(F.conv2d(s, a, padding=k // 2, groups=C), b)), c, padding=k // 2, groups=C)
             for k, a, b, c in zip(SEP_SIZES, dw1, w1, dw2)]
        z += [F.conv2d(s, d, padding=k - 1, dilation=2, groups=C) for k, d in zip(DIL_SIZES, dwd)]
        z.append(F.avg_pool2d(s, 3, 1, 1, count_include_pad=False))
        pre = torch.einsum("bij,bjhw->bihw", m, torch.cat(z, 1))
        return F.relu(F.relu(pre) + s)

    def run(fn, dtype, dev):
        leaves = [[t.detach().to(dev, dtype).requires_grad_() for t in a] if isinstance(a, list)
                  else a.detach().to(dev, dtype).requires_grad_() for a in args]
        out = fn(*leaves)
        flat = [leaves[0], *leaves[1], *leaves[2], *leaves[3], *leaves[4], leaves[5]]
        return [out, *torch.autograd.grad(out, flat, g.to(dev, dtype))]

    got = run(mefc_step, torch.float32, device)
    ref64 = run(algebra, torch.float64, torch.device("cpu"))
    ref32 = run(algebra, torch.float32, torch.device("cpu"))
    names = (["s_out", "ds"] + [f"d_dw1[{k}]" for k in SEP_SIZES] + [f"d_w1[{k}]" for k in SEP_SIZES]
             + [f"d_dw2[{k}]" for k in SEP_SIZES] + [f"d_dwd[{k}]" for k in DIL_SIZES] + ["dm"])
    for n, a, r, t in zip(names, got, ref64, ref32):
        assert a.dtype == torch.float32, n
        assert_close(n, a, r, t)



def _mixing_args(B, S, C, device, dtype=torch.float32, seed=80):
    """The mixing op's inputs as mixing_matrices passes them: softmax routing weights [B, S, 8] fp32,
    every step's W_out stacked [S, C, 8C] and the ops' last 1x1s stacked [S, 7, C, C], in the
    weights' dtype."""
    w = randn(B, S, 8, seed=seed, device=device).softmax(-1).requires_grad_()
    w_out = randn(S, C, 8 * C, seed=seed + 1, scale=C ** -0.5, dtype=dtype, device=device).requires_grad_()
    last = randn(S, 7, C, C, seed=seed + 2, scale=C ** -0.5, dtype=dtype, device=device).requires_grad_()
    return w, w_out, last


def test_mixing_op_opcheck(device):
    torch.library.opcheck(torch.ops.drsformer_fast.mefc_mixing.default, _mixing_args(2, 3, 5, device),
                          test_utils=UTILS)


@pytest.mark.parametrize("B, S, C, dtype, path", [
    (1, 4, 48, torch.float32, "kernel"),  # the model's first MEFC
    (3, 2, 37, torch.float32, "kernel"),  # no tile divides C; three samples
    (2, 4, 40, torch.float16, "kernel"),  # half-precision weights (computed in fp32)
    (3, 2, 37, torch.float32, "torch"),
], ids=lambda v: str(v).replace("torch.", ""))
def test_mixing_op_and_its_gradients(B, S, C, dtype, path, device, request):
    """mefc_mixing (one Triton launch on the kernel path, a batched einsum on the PyTorch path) and its
    every gradient (w, W_out, the last 1x1s) against autograd of the algebra written out per step and op
    in float64, one shared random upstream gradient; m is NaN-poisoned before the kernel writes it
    (conftest)."""
    from drsformer_fast.ops.mefc import mixing_matrices

    if path == "torch":
        request.getfixturevalue("torch_path")

    args = _mixing_args(B, S, C, device, dtype)
    g = randn(B, S, C, 8 * C, seed=90, device=device)

    def algebra(w, w_out, last):
        blocks = []
        for s in range(S):
            wo = w_out[s].view(C, 8, C)
            mats = [wo[:, o] @ last[s, o] for o in range(7)] + [wo[:, 7]]
            blocks.append(torch.cat([w[:, s, o, None, None] * mats[o] for o in range(8)], 2))
        return torch.stack(blocks, 1)

    def run(fn, dtype_, dev):
        leaves = [t.detach().to(dev, dtype_).requires_grad_() for t in args]
        out = fn(*leaves)
        return [out, *torch.autograd.grad(out, leaves, g.to(dev, out.dtype))]

    op = lambda w, w_out, last: torch.ops.drsformer_fast.mefc_mixing(w, w_out, last)  # noqa: E731
    got = run(op, None, device)
    ref64 = run(algebra, torch.float64, torch.device("cpu"))
    ref32 = run(algebra, torch.float32, torch.device("cpu"))
    for n, a, r, t in zip(("m", "dw", "dw_out", "dlast"), got, ref64, ref32):
        assert a.dtype == (torch.float32 if n in ("m", "dw") else dtype), n
        assert_close(n, a, r, t)
    # mixing_matrices stacks the per-step parameters into the op's inputs, gradients flow back to each
    outs = [args[1][s].detach().view(C, 8 * C, 1, 1).clone().requires_grad_() for s in range(S)]
    lasts = [[args[2][s, o].detach().view(C, C, 1, 1).clone().requires_grad_() for o in range(7)] for s in range(S)]
    m = mixing_matrices(args[0].detach(), outs, lasts)
    assert torch.equal(m, got[0])
    grads = torch.autograd.grad(m, outs + [t for ls in lasts for t in ls], g)
    assert torch.equal(torch.stack(grads[:S]).view(S, C, 8 * C), got[2])
    assert torch.equal(torch.stack(grads[S:]).view(S, 7, C, C), got[3])


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "drsformer_fast":
            name = func._schema.name.split("::")[-1]
            self.calls[name] = self.calls.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def test_module_runs_one_fused_step_op_per_step(device):
    """Per MEFC: one op for every step's mixing matrices (its backward is plain ATen), then one fused
    op per step, forward and backward."""
    _, fast = _pair(8, seed=15, device=device)
    x = randn(1, 8, 5, 6, seed=16, device=device)
    with _CountOps() as counter:
        _grads(fast, x, x)
    assert counter.calls == {"mefc_mixing": 1, "mefc_step_fwd": 4, "mefc_step_bwd": 4}


def test_torch_compile_fullgraph_inductor(device):
    ref, fast = _pair(8, seed=17, device=device)
    x = randn(2, 8, 7, 9, seed=18, device=device)
    g = randn(2, 8, 7, 9, seed=19, device=device)
    torch._dynamo.reset()
    compiled = torch.compile(fast, backend="inductor", fullgraph=True, dynamic=False)
    out, grads = _grads(compiled, x, g)
    out64, grads64 = _grads(copy.deepcopy(ref).double(), x.double().cpu(), g.double().cpu())
    out32, grads32 = _grads(copy.deepcopy(ref), x.cpu(), g.cpu())
    assert_close("output", out, out64, out32)
    for n, a, r, t in zip(_names(ref), grads, grads64, grads32):
        assert_close(n, a, r, t)


# ------------------------------------------------------------------------------------------------
# module, model, patch
# ------------------------------------------------------------------------------------------------


def test_state_dict_keys_and_from_original_shares_parameters():
    for layer_num in (1, 2):
        orig = R.subnet(12, layer_num)
        fast = FeatureCompensator.from_original(orig)
        assert list(fast.state_dict()) == list(orig.state_dict())
        assert all(a is b for a, b in zip(fast.parameters(), orig.parameters()))
        fresh = FeatureCompensator(12, layer_num)
        assert [(k, v.shape) for k, v in fresh.state_dict().items()] == \
            [(k, v.shape) for k, v in orig.state_dict().items()]
    keys = list(FeatureCompensator(4).state_dict())
    assert "layers.0.ca_fc.0.weight" in keys and "layers.1.preprocess.op.0.weight" in keys
    assert "layers.1._ops.3._ops.2.op.4.weight" in keys and "layers.1._ops.0._out.0.weight" in keys


def test_fast_model_uses_the_fused_compensator():
    """The fast DRSformer's MEFC modules are FeatureCompensators (so the whole-model golden test,
    test_model.test_golden_whole_model[model_mefc_tiny], runs MEFC through the fused steps) and its
    state dict is the original's, key for key."""
    from golden_data import default_keys

    model = DRSformer()
    assert isinstance(model.encoder_level0, FeatureCompensator) and model.encoder_level0.dim == 48
    assert isinstance(model.refinement, FeatureCompensator) and model.refinement.dim == 96
    keys = default_keys()["with_mefc"]
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == list(keys.items())


def test_patch_swaps_the_original_subnet(device):
    cfg = dict(dim=8, num_blocks=[1, 1, 1, 1], heads=[1, 2, 2, 4], ffn_expansion_factor=2.66, bias=False,
               LayerNorm_type="WithBias")
    model = perturb_(R.DRSformer(**cfg, mefc=True), seed=20).to(device)
    x = randn(1, 3, 8, 16, seed=21, device=device)
    with torch.no_grad():
        before = model(x)
    params = list(model.parameters())
    patched, report = drsformer_fast.patch(model, return_report=True)
    print(report)
    assert ("encoder_level0", "FeatureCompensator") in report.swapped
    assert ("refinement", "FeatureCompensator") in report.swapped
    assert "FeatureCompensator" in str(report) and not report.not_recognised
    assert isinstance(patched.encoder_level0, FeatureCompensator) and isinstance(patched.refinement, FeatureCompensator)
    assert all(a is b for a, b in zip(patched.parameters(), params))
    with torch.no_grad():
        torch.testing.assert_close(patched(x), before, rtol=1e-4, atol=1e-5)

    alone = drsformer_fast.patch(perturb_(R.subnet(6), seed=22))
    assert isinstance(alone, FeatureCompensator)


def test_patch_leaves_look_alike_compensators_alone():
    class OtherCompensator(R.subnet):  # the original's structure, another residual
        def forward(self, x):
            return super().forward(x) * 2

    odd = R.subnet(6)
    odd.layers[1]._ops[2]._ops[7] = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=True)
    holder = torch.nn.Sequential(perturb_(OtherCompensator(6), seed=23), odd)
    _, report = drsformer_fast.patch(holder, return_report=True)
    assert report.swapped == []
    reasons = dict(report.not_recognised)
    assert "outputs differ" in reasons["0"]
    assert "avg_pool_3x3 is not AvgPool2d(3, 1, 1, count_include_pad=False)" in reasons["1"]
    assert type(holder[0]) is OtherCompensator


# ------------------------------------------------------------------------------------------------
# memory, bytes, launches (the package's accounting, fake tensors at the real shapes)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [48, 96])
def test_saves_at_most_a_fifth_of_the_original(dim):
    """Saved for backward at 2x128x128: the original keeps every op's intermediate (~0.84 / 1.69 GB);
    the fused one the preprocess input and the five step inputs/outputs (+ the routing and the C x C
    products that build the mixing matrices: ~150 C x C fp32 matrices)."""
    torch.manual_seed(0)
    orig = R.subnet(dim)
    fast = FeatureCompensator.from_original(orig)
    shape = (2, dim, 128, 128)
    ours, theirs = saved_tensor_bytes(fast, shape), saved_tensor_bytes(orig, shape)
    planes = 2 * dim * 128 * 128 * 4
    print(f"MEFC({dim}) saved for backward at {shape}: fast {ours / 1e6:.1f} MB, original {theirs / 1e6:.1f} MB")
    assert 6 * planes <= ours <= 6 * planes + 200 * dim * dim * 4
    assert ours * 5 <= theirs


@pytest.mark.parametrize("dim, target", [(48, 1.04e9), (96, 2.08e9)])
def test_forward_bytes_and_launches(dim, target):
    """At 1 x dim x 256 x 256 (encoder_level0, refinement): forward bytes <= 1/5 of the original's
    and <= 40 launches per forward (the original: 167)."""
    torch.manual_seed(0)
    orig = R.subnet(dim)
    fast = FeatureCompensator.from_original(orig)
    shape = (1, dim, 256, 256)
    o = accounting.profile(orig, shape, backward=False)
    f = accounting.profile(fast, shape, backward=False)
    print(f"MEFC({dim}) forward at {shape}: bytes {o.summary()['bytes_forward'] / 1e9:.2f} -> "
          f"{f.summary()['bytes_forward'] / 1e9:.2f} GB, launches {o.summary()['launches_forward']} -> "
          f"{f.summary()['launches_forward']}")
    assert f.summary()["bytes_forward"] <= target < o.summary()["bytes_forward"]
    fused = [r.name.split("::")[-1] for r in f.forward if r.kind == "fused"]
    assert fused == ["mefc_mixing"] + ["mefc_step_fwd"] * 4, fused
    outside = sum(1 for r in f.forward if r.launch and r.inside is None)
    assert outside <= 40 - 2 * 4 - 1  # routing, preprocess, stacked weights: room for 2 kernels per step
    assert f.summary()["launches_forward"] <= 40


def test_fake_launch_counts_equal_real_execution(device):
    torch.manual_seed(0)
    fast = FeatureCompensator(16).to(device)
    fake = accounting.profile(fast, (2, 16, 6, 5))
    real = accounting.profile(fast, torch.randn(2, 16, 6, 5, device=device).relu(), fake=False)
    assert [r.name for r in fake.forward] == [r.name for r in real.forward]
    assert [r.name for r in fake.backward] == [r.name for r in real.backward]
    assert fake.summary() == real.summary()


def test_byte_model_is_the_kernels_traffic():
    from drsformer_fast.kernels import mefc as kmefc
    from drsformer_fast.kernels import mefc_backward as kbwd

    for B, C, H, W in ((1, 48, 256, 256), (4, 96, 128, 128)):
        for es in (4, 2):
            fwd = accounting.mefc_step_bytes((B, C, H, W), es)
            bwd = accounting.mefc_step_bytes((B, C, H, W), es, backward=True)
            assert sum(k.total for k in fwd) == kmefc.traffic_bytes(B, C, H, W, es)
            assert sum(k.total for k in bwd) == kbwd.traffic_bytes(B, C, H, W, es)
            assert sum(k.written for k in fwd) >= B * C * H * W * es  # at least s_out


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(device):
    fast = FeatureCompensator(8).to(device)
    with pytest.raises(ValueError, match=r"expects \[B, 8, H, W\], got \(1, 9, 4, 4\)"):
        fast(randn(1, 9, 4, 4, seed=40, device=device))
    with pytest.raises(ValueError, match="expects"):
        fast(randn(8, 4, 4, seed=41, device=device))
    with pytest.raises(RuntimeError, match="size mismatch for layers.0.ca_fc.0.weight"):
        fast.load_state_dict(R.subnet(16).state_dict())
    with pytest.raises(RuntimeError, match="Missing key"):
        fast.load_state_dict({k: v for k, v in R.subnet(8).state_dict().items() if "_out" not in k})
    with pytest.raises(ValueError, match="Conv2d is not an original MEFC subnet"):
        FeatureCompensator.from_original(torch.nn.Conv2d(8, 8, 1))
    with pytest.raises(ValueError, match="positive"):
        FeatureCompensator(0)

    s, dw1, w1, dw2, dwd, m = [[t.detach() for t in a] if isinstance(a, list) else a.detach()
                               for a in _step_args(1, 4, 3, 3, device)]
    with pytest.raises(ValueError, match=r"dw1\[2\] \(sep_conv_5x5 op.0.weight\) must have shape \(4, 1, 5, 5\)"):
        mefc_step(s, [dw1[0], dw1[1], dw1[3], dw1[3]], w1, dw2, dwd, m)
    with pytest.raises(ValueError, match="dwd must be a list of 3"):
        mefc_step(s, dw1, w1, dw2, dwd[:2], m)
    with pytest.raises(TypeError, match="m has dtype float16"):
        mefc_step(s, dw1, w1, dw2, dwd, m.half())
    with pytest.raises(ValueError, match=r"m must have shape \(1, 4, 32\)"):
        mefc_step(s, dw1, w1, dw2, dwd, m[:, :, :16])
    with pytest.raises(TypeError, match="s has dtype float64"):
        mefc_step(s.double(), dw1, w1, dw2, dwd, m)
    with pytest.raises(ValueError, match="s must have 4 dimensions"):
        mefc_step(s[0], dw1, w1, dw2, dwd, m)
