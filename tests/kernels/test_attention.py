"""Fused top-k sparse attention (forward and backward) against the original and the golden files."""

import pytest
import torch
from conftest import half_dtypes
from golden_data import ATTENTION_FILES, load
from helpers import assert_close, assert_golden, non_contiguous, randn
from original_arch import perturb_

from drsformer_fast import reference as R
from drsformer_fast.modules import TopKSparseAttention
from drsformer_fast.ops.attention import _attention_torch, topk_ranks, topk_sparse_attention


def _perturbed_original(dim, heads, bias, seed):
    """An original Attention whose every parameter matters (as in the golden files), a function of
    ``seed`` alone (see ``original_arch.perturb_``)."""
    return perturb_(R.Attention(dim, heads, bias), seed)


def _grads(module, x, g, residual=None):
    """Output and gradients (input, every parameter, residual) for upstream gradient g."""
    x = x.detach().requires_grad_()
    inputs = [x]
    if residual is not None:
        residual = residual.detach().requires_grad_()
        out = module(x, residual)
        inputs.append(residual)
    else:
        out = module(x)
    params = [p for _, p in module.named_parameters()]
    grads = torch.autograd.grad(out, inputs + params, g.to(out.dtype))
    return out, grads


def _reference(orig, x, g, dtype, residual=None):
    m = R.Attention(orig.qkv.in_channels, orig.num_heads, orig.qkv.bias is not None).to(dtype)
    m.load_state_dict(orig.state_dict())
    x = x.detach().cpu().to(dtype).requires_grad_()
    out = m(x)
    inputs = [x]
    if residual is not None:
        residual = residual.detach().cpu().to(dtype).requires_grad_()
        out = out + residual
        inputs.append(residual)
    return out, torch.autograd.grad(out, inputs + [p for _, p in m.named_parameters()], g.cpu().to(dtype))


def _names(module, residual):
    return ["dx"] + (["dresidual"] if residual else []) + [f"d{n}" for n, _ in module.named_parameters()]


@pytest.mark.parametrize("name", ATTENTION_FILES)
def test_golden(name, device):
    d = load(name)
    m = TopKSparseAttention(d["dim"], d["num_heads"], d["bias"])
    m.load_state_dict(d["state_dict"])
    m = m.to(device)
    x = d["input"].to(device)
    out, grads = _grads(m, x, d["grad_weight"].to(device))
    e = d["fp32_reference_rel_err"]
    assert_golden("output", out, d["output"], e["output"])
    assert_golden("input_grad", grads[0], d["input_grad"], e["input_grad"])
    for (n, _), g in zip(m.named_parameters(), grads[1:]):
        assert_golden(n, g, d["param_grads"][n], e["param_grads"][n])


# (batch, dim, heads, H, W, bias): odd sizes, C = 8 (k = 4, 5, 6, 6), odd C = 15, C = 48 and C = 96
# (the real ones), a C above one 64-row block (70), 1-pixel-wide and -high images
CASES = [
    (1, 48, 1, 7, 9, False),
    (3, 24, 3, 5, 11, True),
    (2, 30, 2, 1, 13, False),
    (1, 20, 2, 13, 1, True),
    (1, 96, 1, 4, 5, False),
    (1, 70, 1, 3, 5, True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-d{}-h{}-{}x{}-bias{}".format(*c))
def test_fp32_random(case, device):
    B, D, heads, H, W, bias = case
    orig = _perturbed_original(D, heads, bias, seed=D)
    fast = TopKSparseAttention.from_original(orig).to(device)
    x = randn(B, D, H, W, seed=1, device=device)
    g = randn(B, D, H, W, seed=2, device=device)
    out, grads = _grads(fast, x, g)
    out64, grads64 = _reference(orig, x, g, torch.float64)
    out32, grads32 = _reference(orig, x, g, torch.float32)
    assert_close("output", out, out64, out32)
    for n, a, r, t in zip(_names(fast, False), grads, grads64, grads32):
        assert_close(n, a, r, t)


def test_k_channel_below_the_norm_clamp(device):
    """A k channel whose norm is below eps (1e-12) at every pixel, not zero: its norm is clamped, so
    the norm's own gradient term (beta) is 0 there, as the original's F.normalize gives, while the
    channel still enters the Gram. (A q channel the same way would make its whole row of the Gram a
    near-tie, which the original's top-k breaks its own way.)"""
    B, D, heads, H, W = 2, 24, 3, 5, 7  # C = 8: k channel 2 of head 1
    orig = _perturbed_original(D, heads, True, seed=31)
    with torch.no_grad():
        orig.qkv.weight[D + 10] *= 3e-13  # |k| ~ 3e-13
        orig.qkv.bias[D + 10] = 0.0
        orig.qkv_dwconv.bias[D + 10] = 0.0
    fast = TopKSparseAttention.from_original(orig).to(device)
    x = randn(B, D, H, W, seed=32, device=device)
    g = randn(B, D, H, W, seed=33, device=device)
    out, grads = _grads(fast, x, g)
    out64, grads64 = _reference(orig, x, g, torch.float64)
    out32, grads32 = _reference(orig, x, g, torch.float32)
    assert_close("output", out, out64, out32)
    for n, a, r, t in zip(_names(fast, False), grads, grads64, grads32):
        assert_close(n, a, r, t)


def _record_path(monkeypatch, name: str) -> set:
    """Spy on a launcher's choice between word and pixel kernels (``dout_v_path``, ``gram_path``)."""
    from drsformer_fast.kernels import attention as A

    seen = set()
    choose = getattr(A, name)

    def chosen(*args):
        path = choose(*args)
        seen.add(path)
        return path
    monkeypatch.setattr(A, name, chosen)
    return seen


# W = 7: the Gram and dOut V^T by pixels; W = 10: by words (dOut and t0 are whole 4-byte words),
# also with d = 72 (two 64-channel blocks per side of dOut V^T); W = 10 with an fp16 upstream gradient
# padded along W (odd row stride): dOut V^T by pixels again, the Gram (t0 only) still by words
@pytest.mark.parametrize("dtype", half_dtypes(), ids=str)
@pytest.mark.parametrize("D, heads, W, g_layout, path, gram", [
    (24, 3, 7, None, "pixels", "pixels"), (24, 3, 10, None, "words", "words"), (72, 9, 10, None, "words", "words"),
    (24, 3, 10, "pad", "pixels", "words"),
], ids=["W7", "W10", "W10-d72", "W10-dout-pad"])
def test_half_precision(dtype, D, heads, W, g_layout, path, gram, device, monkeypatch):
    # C = 8 per head: gaps between the entries of A (~2/C) dwarf half-precision rounding of Q and K,
    # so the top-k masks are the same as in float64 and the comparison measures arithmetic only
    B, H = 2, 6
    seen = _record_path(monkeypatch, "dout_v_path")
    seen_gram = _record_path(monkeypatch, "gram_path")
    orig = _perturbed_original(D, heads, True, seed=3)
    fast = TopKSparseAttention.from_original(orig).to(device)
    x = randn(B, D, H, W, seed=4, device=device, dtype=dtype)
    g = randn(B, D, H, W, seed=5, device=device, dtype=dtype)
    # the upstream gradient in the output's dtype (as autograd passes it), in the layout under test
    x16, g16 = x.float(), (g if g_layout is None else non_contiguous(g, g_layout))
    with torch.autocast(device.type, dtype=dtype):
        out, grads = _grads(fast, x16, g16)
    assert out.dtype == dtype
    assert seen == {path} and seen_gram == {gram}
    out64, grads64 = _reference(orig, x, g, torch.float64)
    outlp, gradslp = _reference(orig, x, g, dtype)
    assert_close("output", out, out64, outlp, dtype=dtype)
    for n, a, r, t in zip(_names(fast, False), grads, grads64, gradslp):
        assert_close(n, a, r, t, dtype=dtype)


def test_half_precision_dq_dk_hold_large_norms(device):
    """fp16 dQ/dK where dG = dGhat / (|q| |k|) lies below fp16's normal range: Q and K ~400x larger
    than in test_half_precision (norms ~1e3, |q| |k| > 2**17) and a 100x smaller upstream gradient.
    The tensor-core dots take dGhat and the normalised Q and K (the original's dA and q_n, k_n under
    autocast), whose range fp16 holds; fp16 dG times unnormalised K (tried) misses the Q and K rows
    of the parameter gradients by ~4e-2, 30x PyTorch's own fp16 error, and by ~0.4 at 1000x smaller."""
    from drsformer_fast.kernels import attention as A

    B, D, heads, H, W, dtype = 2, 24, 3, 6, 10, torch.float16
    orig = _perturbed_original(D, heads, True, seed=3)
    fast = TopKSparseAttention.from_original(orig).to(device)
    x = (400 * randn(B, D, H, W, seed=4, device=device)).to(dtype)
    g = (1e-2 * randn(B, D, H, W, seed=5, device=device)).to(dtype)
    with torch.no_grad():
        args = (x, fast.qkv.weight, fast.qkv.bias, fast.qkv_dwconv.weight, fast.qkv_dwconv.bias, fast.temperature,
                (fast.attn1, fast.attn2, fast.attn3, fast.attn4), fast.project_out.weight, fast.project_out.bias,
                heads)
        norms = A.attention_fwd(*args)[3]
    assert (norms[:, 0, :, None] * norms[:, 1, None, :]).min() > 2**17  # the regime under test
    with torch.autocast(device.type, dtype=dtype):
        out, grads = _grads(fast, x.float(), g)
    out64, grads64 = _reference(orig, x, g, torch.float64)
    outlp, gradslp = _reference(orig, x, g, dtype)
    names = _names(fast, False)
    assert_close("output", out, out64, outlp, dtype=dtype)
    for n, a, r, t in zip(names, grads, grads64, gradslp):
        assert_close(n, a, r, t, dtype=dtype)
    # the rows that only dQ and dK reach (the V rows' larger gradients would hide them above)
    for n in ("dqkv.weight", "dqkv.bias", "dqkv_dwconv.weight", "dqkv_dwconv.bias"):
        i = names.index(n)
        assert_close(f"{n}[Q, K rows]", grads[i][:2 * D], grads64[i][:2 * D], gradslp[i][:2 * D], dtype=dtype)


# C = 8 (3 heads) by words (W even) and by row pairs (W odd, H odd: a pair's lower pixel past the
# image); C = 70 (one head, above one 64-channel tile): Q and K written once, 2 x 2 tiles with padding
# rows in the second ("dense"), from word and pixel depthwise convs
@pytest.mark.parametrize("D, heads, H, W, bias, path", [
    (24, 3, 5, 10, True, "words"), (24, 3, 5, 7, False, "pixels"), (70, 1, 4, 12, False, "dense"),
    (70, 1, 5, 9, True, "dense"),
], ids=["C8-words", "C8-pixels", "C70-dense-W12", "C70-dense-W9-bias"])
def test_half_precision_gram_is_that_of_the_rounded_q_and_k(D, heads, H, W, bias, path, device, monkeypatch):
    """In fp16/bf16 the Gram's Q and K are rounded to t0's dtype, as the original stores them, and
    multiplied on tensor cores: products of two fp16 values are exact in fp32, so the normalised Gram
    and the norms match float64 arithmetic on the rounded Q and K up to fp32 summation. Checked
    without the top-k (Ghat and the norms, which the forward returns), so any C is safe from
    near-ties."""
    from drsformer_fast.kernels import attention as A

    seen = _record_path(monkeypatch, "gram_path")
    orig = _perturbed_original(D, heads, bias, seed=40 + D)
    fast = TopKSparseAttention.from_original(orig).to(device)
    x = randn(2, D, H, W, seed=41, device=device, dtype=torch.float16)
    args = (x, fast.qkv.weight, fast.qkv.bias, fast.qkv_dwconv.weight, fast.qkv_dwconv.bias, fast.temperature,
            (fast.attn1, fast.attn2, fast.attn3, fast.attn4), fast.project_out.weight, fast.project_out.bias, heads)
    with torch.no_grad():
        _, t0, ghat, norms, _ = A.attention_fwd(*args)
        assert seen == {path}
        dw_b = fast.qkv_dwconv.bias.double().cpu() if bias else None
        t = torch.nn.functional.conv2d(t0.double().cpu(), fast.qkv_dwconv.weight.double().cpu(), dw_b, padding=1,
                                       groups=3 * D)
        C = D // heads
        q, k = (t[:, s * D:(s + 1) * D].half().double().reshape(2 * heads, C, H * W) for s in (0, 1))
        nq = q.pow(2).sum(-1).sqrt().clamp_min(A.L2_EPS)
        nk = k.pow(2).sum(-1).sqrt().clamp_min(A.L2_EPS)
        want = q @ k.transpose(1, 2) / (nq[:, :, None] * nk[:, None, :])
    # fp32 sums of exact products and one IEEE division, plus the double rounding of a few elements:
    # a Q or K value whose fp32 convolution lies within fp32 rounding of an fp16 rounding boundary
    # rounds either way (the kernel and torch sum the 9 taps in different orders), one fp16 ulp that
    # moves the Gram by up to ~1.3e-5 at these sizes; unrounded Q and K miss by ~2.7e-4 (norm and max)
    assert_close("normalised Gram", ghat, want, None, floor=3e-5)
    assert_close("norms", norms, torch.stack([nq, nk], 1), None, floor=3e-5)


@pytest.mark.parametrize("layout", ["pad", "channels_last", "transpose"])
def test_non_contiguous_input_grad_and_residual(layout, device):
    B, D, heads, H, W = 2, 16, 2, 5, 6
    orig = _perturbed_original(D, heads, False, seed=6)
    fast = TopKSparseAttention.from_original(orig).to(device)
    x = non_contiguous(randn(B, D, H, W, seed=7, device=device), layout)
    res = non_contiguous(randn(B, D, H, W, seed=8, device=device), "pad")
    g = non_contiguous(randn(B, D, H, W, seed=9, device=device), layout)
    out, grads = _grads(fast, x, g, residual=res)
    out64, grads64 = _reference(orig, x, g, torch.float64, residual=res)
    out32, grads32 = _reference(orig, x, g, torch.float32, residual=res)
    assert_close("output", out, out64, out32)
    for n, a, r, t in zip(_names(fast, True), grads, grads64, grads32):
        assert_close(n, a, r, t)


def test_residual_in_half_precision_promotes_to_fp32(device):
    fast = TopKSparseAttention.from_original(_perturbed_original(16, 2, True, seed=10)).to(device)
    x = randn(1, 16, 4, 5, seed=11, device=device)
    with torch.autocast(device.type, dtype=torch.float16):
        out = fast(x, x)
    assert out.dtype == torch.float32  # fp32 residual stream + fp16 attention, as in the original


def test_deterministic(device):
    fast = TopKSparseAttention.from_original(_perturbed_original(48, 1, True, seed=12)).to(device)
    x = randn(2, 48, 9, 11, seed=13, device=device)
    g = randn(2, 48, 9, 11, seed=14, device=device)
    first = _grads(fast, x, g)
    second = _grads(fast, x, g)
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1], second[1]):
        assert torch.equal(a, b)


def test_ties_go_to_the_lower_index(device):
    """Two identical K channels make every row of A hold exact ties; the kernels must keep the lower
    channel, like the documented rule of the PyTorch path."""
    D, heads = 16, 1
    orig = _perturbed_original(D, heads, True, seed=15)
    with torch.no_grad():
        k0 = D  # K channels start at D in the qkv projection
        for p in (orig.qkv.weight, orig.qkv.bias, orig.qkv_dwconv.weight, orig.qkv_dwconv.bias):
            p[k0 + 5] = p[k0 + 3]
    fast = TopKSparseAttention.from_original(orig).to(device)
    x = randn(1, D, 5, 6, seed=16, device=device)
    args = (orig.qkv.weight, orig.qkv.bias, orig.qkv_dwconv.weight, orig.qkv_dwconv.bias, orig.temperature,
            (orig.attn1, orig.attn2, orig.attn3, orig.attn4), orig.project_out.weight, orig.project_out.bias, heads,
            None)
    with torch.no_grad():
        expected = _attention_torch(x.double().cpu(), *[a.double() if torch.is_tensor(a) else
                                                       (tuple(t.double() for t in a) if isinstance(a, tuple) else a)
                                                       for a in args])
        out = fast(x)
    assert_close("output with ties", out, expected, None, mult=0, floor=2e-6)


def test_topk_ranks_rule():
    a = torch.tensor([[3.0, 1.0, 2.0, 2.0, 2.0, 0.0, 5.0]])
    assert topk_ranks(a).tolist() == [[1, 5, 2, 3, 4, 6, 0]]


def test_torch_path_matches_reference():
    """The plain-PyTorch path (CPUs without Triton's interpreter) against the original, float64."""
    orig = _perturbed_original(24, 3, True, seed=17).double()
    x = randn(2, 24, 5, 7, seed=18, dtype=torch.float64)
    args = (orig.qkv.weight, orig.qkv.bias, orig.qkv_dwconv.weight, orig.qkv_dwconv.bias, orig.temperature,
            (orig.attn1, orig.attn2, orig.attn3, orig.attn4), orig.project_out.weight, orig.project_out.bias, 3)
    with torch.no_grad():
        torch.testing.assert_close(_attention_torch(x, *args, None), orig(x), rtol=1e-12, atol=1e-12)


def test_module_state_dict_and_parameter_sharing(device):
    orig = _perturbed_original(32, 2, True, seed=19)
    fast = TopKSparseAttention(32, 2, True)
    fast.load_state_dict(orig.state_dict())
    assert list(fast.state_dict()) == list(orig.state_dict())
    shared = TopKSparseAttention.from_original(orig)
    assert all(a is b for a, b in zip(shared.parameters(), orig.parameters()))
    assert shared.kernel_path(torch.ones(1, device=device)) in ("triton", "triton-interpreter")


def test_bad_inputs_raise_clear_errors(device):
    fast = TopKSparseAttention(16, 2, False).to(device)
    x = randn(1, 16, 3, 3, seed=20, device=device)
    with pytest.raises(TypeError, match="dtype float64"):
        fast(x.double())
    with pytest.raises(ValueError, match=r"expects \[B, 16, H, W\], got \(16, 3, 3\)"):
        fast(x[0])
    with pytest.raises(ValueError, match=r"expects \[B, 16, H, W\], got \(1, 12, 3, 3\)"):
        fast(randn(1, 12, 3, 3, seed=21, device=device))
    with pytest.raises(ValueError, match=r"qkv.weight must have shape \(36, 12, 1, 1\)"):
        topk_sparse_attention(randn(1, 12, 3, 3, seed=21, device=device), fast.qkv.weight, None,
                              fast.qkv_dwconv.weight, None, fast.temperature,
                              (fast.attn1, fast.attn2, fast.attn3, fast.attn4), fast.project_out.weight, None, 2)
    with pytest.raises(ValueError, match="residual must have shape"):
        fast(x, x[:, :8])
    with pytest.raises(ValueError, match="at least 2 channels per head"):
        TopKSparseAttention(4, 4, False).to(device)(randn(1, 4, 3, 3, seed=22, device=device))
    with pytest.raises(ValueError, match="does not split into num_heads=3"):
        TopKSparseAttention(10, 3, False)
    meta = TopKSparseAttention(16, 2, False).to("meta")
    with pytest.raises(ValueError, match="is on meta"):
        meta(x)


def test_saved_for_backward_is_at_most_a_third_of_the_original():
    """Bytes saved for backward at the level-1 shape of a 256x256 image, measured with
    saved_tensors_hooks on fake tensors (real shapes, no compute), unique storages counted once."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.multiprocessing.reductions import StorageWeakRef

    def saved_bytes(module):
        seen = {}

        def pack(t):
            if not isinstance(t, torch.nn.Parameter):  # parameters exist anyway: not activation memory
                seen[StorageWeakRef(t.untyped_storage()).cdata] = t.untyped_storage().nbytes()
            return t

        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            m = module
            x = mode.from_tensor(torch.empty(1, 48, 256, 256)).requires_grad_()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                m(x)
        return sum(seen.values())

    orig = R.Attention(48, 1, False)
    fast = TopKSparseAttention.from_original(orig)
    ours, theirs = saved_bytes(fast), saved_bytes(orig)
    assert ours <= theirs / 3, (ours, theirs)


def test_torch_compile_fullgraph(device):
    fast = TopKSparseAttention.from_original(_perturbed_original(16, 2, True, seed=23)).to(device)
    x = randn(1, 16, 4, 5, seed=24, device=device)
    g = randn(1, 16, 4, 5, seed=25, device=device)
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True)
    out_c, grads_c = _grads(compiled, x, g, residual=x)
    out_e, grads_e = _grads(fast, x, g, residual=x)
    assert torch.equal(out_c, out_e)
    for a, b in zip(grads_c, grads_e):
        assert torch.equal(a, b)


@pytest.mark.parametrize("allow_tf32", [True, False])
def test_fp32_dots_follow_the_convolution_tf32_setting(allow_tf32, monkeypatch):
    """The interpreter runs every dot in exact fp32, so TF32 cannot be seen in the numbers: check what
    the launches receive. The dots that fold project_out (forward mix M V, backward dOut V^T and
    dV = M^T dOut) follow cuDNN's TF32 setting for convolutions; the Gram (top-k) and the dQ/dK dots
    are exact fp32 by construction (no precision argument); half precision ignores the setting."""
    from drsformer_fast.kernels import attention as A

    seen = []

    class Recorder:  # stands in for a kernel: records the constexprs of each launch, runs nothing
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.append((self.name, kwargs.get("DOT_PRECISION")))

    for name in ("_attn_mix_kernel", "_attn_dout_v_kernel", "_attn_dout_v_words_kernel"):
        monkeypatch.setattr(A, name, Recorder(name))
    orig = _perturbed_original(16, 2, True, seed=26)
    fast = TopKSparseAttention.from_original(orig)
    expected = "tf32" if allow_tf32 else "ieee"
    for dtype in (torch.float32, torch.float16):
        seen.clear()
        x = randn(1, 16, 3, 4, seed=27, dtype=dtype)
        g = randn(1, 16, 3, 4, seed=28, dtype=dtype)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=allow_tf32):
            args = (x, fast.qkv.weight, fast.qkv.bias, fast.qkv_dwconv.weight, fast.qkv_dwconv.bias,
                    fast.temperature, (fast.attn1, fast.attn2, fast.attn3, fast.attn4), fast.project_out.weight,
                    fast.project_out.bias, 2)
            out, t0, ghat, norms, p = A.attention_fwd(*args)
            A.attention_bwd(g, x, t0, ghat, norms, p, fast.qkv.weight, fast.qkv_dwconv.weight, fast.qkv_dwconv.bias,
                            fast.temperature, args[6], fast.project_out.weight, 2)
        want = expected if dtype == torch.float32 else "ieee"
        # fp16 at W = 4: dOut V^T by words, a half-precision dot with no precision argument
        dout_v = ("_attn_dout_v_kernel", want) if dtype == torch.float32 else ("_attn_dout_v_words_kernel", None)
        assert seen == [("_attn_mix_kernel", want), dout_v, ("_attn_mix_kernel", want)], (dtype, seen)


def test_configs_chosen_for_a_large_gpu(device, monkeypatch):
    """The launchers pick their token blocks from the SM count: on the interpreter's 4 "SMs" the
    smaller mix blocks of small latents never run, so pretend to have an H100's 132."""
    from drsformer_fast.kernels import attention as A

    monkeypatch.setattr(A, "multiprocessor_count", lambda dev: 132)
    assert A._mix_config(24)[2] > 16  # the launch below halves it
    B, D, heads, H, W = 1, 24, 3, 5, 7
    orig = _perturbed_original(D, heads, True, seed=29)
    fast = TopKSparseAttention.from_original(orig).to(device)
    x = randn(B, D, H, W, seed=30, device=device)
    g = randn(B, D, H, W, seed=31, device=device)
    out, grads = _grads(fast, x, g)
    out64, grads64 = _reference(orig, x, g, torch.float64)
    out32, grads32 = _reference(orig, x, g, torch.float32)
    assert_close("output", out, out64, out32)
    for n, a, r, t in zip(_names(fast, False), grads, grads64, grads32):
        assert_close(n, a, r, t)


@pytest.mark.parametrize("name, n_blocks, per_split, iters", [
    ("level 1 Gram (256^2, 16-pair blocks)", 2048, 1, 16),
    ("decoder level 1 Gram (2 x 2 tiles)", 2048, 4, 16),
    ("enc2 Gram (128^2, 2 heads)", 512, 2, 8),
    ("enc3 Gram (64^2, 4 heads)", 128, 4, 4),
    ("latent Gram (32^2, 8 heads)", 32, 8, 2),
    ("enc3 dOut V^T (64^2, 3 x 3 tiles)", 128, 9, 8),
    ("level 1 dOut V^T words (32-word blocks)", 1024, 1, 8),
    ("latent Gram words (32^2: 16 blocks of 32 words, 8 heads)", 16, 8, 1),
    # one split holds every block: ranges of 4, not 64 (a program runs its masked blocks too)
    ("training latent dOut V^T words (16^2, 6 x 6 tiles, batch 4)", 4, 144, 4),
])
def test_token_splits_fill_the_gpu(name, n_blocks, per_split, iters, monkeypatch):
    """The split-N kernels (Gram, dOut V^T) cut the tokens into ranges of SPLIT_ITERS blocks: 16 or
    more where that still gives two programs per SM, else the longest ranges that give 90% of a wave
    of an H100 (132 SMs), so the small images' launches (>= 4 MB) fill at least 90% of a wave."""
    from drsformer_fast.kernels import attention as A

    monkeypatch.setattr(A, "multiprocessor_count", lambda dev: 132)
    splits, got = A._splits(n_blocks, per_split, torch.device("cpu"))
    assert (got, splits) == (iters, -(-n_blocks // iters)), name
    assert splits * per_split >= 119, name


@pytest.mark.parametrize("B, D, heads, w_dtype, layout", [
    (1, 48, 1, torch.float32, "dense"),  # level 1 of the model: one head of 48
    (2, 70, 2, torch.float32, "pad"),  # C = 35: no tile divides C or d
    (3, 384, 8, torch.float32, "channels_last"),  # the latent: 8 heads, 6 output-channel tiles
    (2, 40, 1, torch.float16, "dense"),  # C = 40: two column tiles; a half-precision weight
], ids=lambda v: str(v).replace("torch.", ""))
def test_mix_matrix_kernel(B, D, heads, w_dtype, layout, device):
    """_mix_matrix (``_attn_mix_matrix_kernel``) against the float64 product M_b = W_o blockdiag(P_b)
    for every sample: any weight dtype and strides, masked tiles; M^T is dense, M its transposed view."""
    from drsformer_fast.kernels.attention import _mix_matrix

    C = D // heads
    w = randn(D, D, 1, 1, seed=3, dtype=w_dtype, device=device)
    if layout != "dense":
        w = non_contiguous(w, layout)
    p = randn(B * heads, C, C, seed=4, device=device).softmax(-1)
    m = _mix_matrix(w, p, B, heads)
    assert m.shape == (B, D, D) and m.dtype == torch.float32 and m.transpose(1, 2).is_contiguous()

    def blockdiag_product(dtype):
        blocks = p.cpu().to(dtype).view(B, heads, C, C)
        full = torch.zeros(B, D, D, dtype=dtype)
        for h in range(heads):
            full[:, h * C:(h + 1) * C, h * C:(h + 1) * C] = blocks[:, h]
        return w.cpu().to(dtype).reshape(D, D) @ full

    assert_close("M", m.cpu(), blockdiag_product(torch.float64), blockdiag_product(torch.float32))
