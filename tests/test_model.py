"""The fast DRSformer: golden whole-model files, state dict, checkpoints, compile, autocast,
activation checkpointing, saved-tensor memory."""

import pytest
import torch
from golden_data import MODEL_FILES, load
from helpers import assert_close, assert_close_rms, assert_golden, randn
from original_arch import perturb_

import drsformer_fast
from drsformer_fast import reference as R
from drsformer_fast.model import DRSformer
from drsformer_fast.modules import FastTransformerBlock, FeatureCompensator

TINY = dict(dim=8, num_blocks=[1, 1, 1, 1], heads=[1, 2, 2, 4], ffn_expansion_factor=2.66)


pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(mefc=True, bias=False, ln="WithBias", seed=0, **over):
    cfg = dict(TINY, bias=bias, LayerNorm_type=ln, **over)
    ref = perturb_(R.DRSformer(**cfg, mefc=mefc), seed)
    fast = DRSformer(**cfg, mefc=mefc)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _names(model):
    return ["input"] + [n for n, _ in model.named_parameters()]


def _grads(model, x, g):
    x = x.detach().requires_grad_()
    out = model(x)
    params = [p for _, p in model.named_parameters()]
    return out, torch.autograd.grad(out, [x] + params, g)


def _assert_matches_reference(fast, ref, x, g, out, grads):
    """fp32 output and every gradient of ``fast`` against the reference (float64 truth, float32 for
    PyTorch's own error), tensor by tensor."""
    out64, grads64 = _grads(ref.double(), x.double().cpu(), g.double().cpu())
    out32, grads32 = _grads(ref.float(), x.cpu(), g.cpu())
    assert_close("output", out, out64, out32)
    for n, a, r, t in zip(_names(fast), grads, grads64, grads32):
        assert_close(n, a, r, t)


@pytest.mark.parametrize("name", MODEL_FILES)
def test_golden_whole_model(name, device):
    d = load(name)
    model = drsformer_fast.load_checkpoint(d["checkpoint"])
    assert isinstance(model, DRSformer)
    assert model.mefc == (d["variant"] == "with_mefc")
    if model.mefc:  # MEFC through the fused steps
        assert isinstance(model.encoder_level0, FeatureCompensator) and isinstance(model.refinement, FeatureCompensator)
    model = model.to(device)
    out, grads = _grads(model, d["input"].to(device), d["grad_weight"].to(device))
    e = d["fp32_reference_rel_err"]
    assert_golden("output", out, d["output"], e["output"])
    assert_golden("input_grad", grads[0], d["input_grad"], e["input_grad"])
    for (n, _), g in zip(model.named_parameters(), grads[1:]):
        assert_golden(n, g, d["param_grads"][n], e["param_grads"][n])


@pytest.mark.parametrize("variant", ["with_mefc", "without_mefc"])
def test_state_dict_equals_original(variant):
    fast = DRSformer(mefc=variant == "with_mefc")
    ref = R.DRSformer(mefc=variant == "with_mefc")
    assert [(k, v.shape) for k, v in fast.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    assert sum(isinstance(m, FastTransformerBlock) for m in fast.modules()) == 4 + 6 + 6 + 8 + 6 + 6 + 4


def test_random_config_matches_reference(device):
    ref, fast = _pair(mefc=False, bias=True, ln="BiasFree", seed=1)
    fast = fast.to(device)
    x = randn(2, 3, 8, 16, seed=2, device=device)
    g = randn(2, 3, 8, 16, seed=3, device=device)
    _assert_matches_reference(fast, ref, x, g, *_grads(fast, x, g))



class _Double(torch.nn.Module):
    def forward(self, w):
        return 2 * w


# a parameter of each fast module kind, reached through a child, a Sequential or a ModuleList
_REPARAMETRISED = ["encoder_level1.0.norm1.body.weight", "encoder_level1.0.attn.qkv.weight",
                   "encoder_level1.0.attn.temperature", "encoder_level1.0.ffn.dwconv5x5_1.weight",
                   "encoder_level0.layers.0.ca_fc.2.weight", "encoder_level0.layers.1.preprocess.op.0.weight",
                   "encoder_level0.layers.1._ops.1._ops.2.op.3.weight", "encoder_level0.layers.1._ops.0._out.0.weight"]


def test_parameters_are_read_as_attribute_lookup_reads_them(torch_path):
    """The fast modules read their parameters without ``nn.Module.__getattr__``; what they read must
    stay what ``getattr`` gives: a parametrization's value, ``functional_call``'s tensors, a tensor set
    in the instance dict (as FSDP does), each against a model holding the same values as parameters.
    (The modules' forward is the same on every path; the plain-PyTorch one is the quick one here.)"""
    from torch.nn.utils import parametrize

    _, fast = _pair(mefc=True, seed=13)
    fast = fast.eval()
    x = randn(1, 3, 8, 8, seed=14)
    doubled = {n: 2 * p.detach() if n in _REPARAMETRISED else p.detach() for n, p in fast.named_parameters()}
    expected = DRSformer(**TINY, bias=False, LayerNorm_type="WithBias", mefc=True).eval()
    expected.load_state_dict(doubled)
    with torch.no_grad():
        want = expected(x)
        assert not torch.equal(want, fast(x))
        torch.testing.assert_close(torch.func.functional_call(fast, doubled, (x,)), want, rtol=0, atol=0)
        for name in _REPARAMETRISED:
            module, leaf = fast.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]
            parametrize.register_parametrization(module, leaf, _Double())
        torch.testing.assert_close(fast(x), want, rtol=0, atol=0)
        for name in _REPARAMETRISED:
            module, leaf = fast.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]
            parametrize.remove_parametrizations(module, leaf, leave_parametrized=True)
            value = module._parameters.pop(leaf).detach()
            object.__setattr__(module, leaf, value)  # a plain tensor in the instance dict
            assert getattr(module, leaf) is value
        torch.testing.assert_close(fast(x), want, rtol=0, atol=0)

def test_torch_compile_fullgraph_aot_eager(device):
    _, fast = _pair(mefc=True, seed=4)
    fast = fast.to(device)
    x = randn(1, 3, 8, 8, seed=5, device=device)
    g = randn(1, 3, 8, 8, seed=6, device=device)
    torch._dynamo.reset()
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True, dynamic=False)
    out_c, grads_c = _grads(compiled, x, g)
    out_e, grads_e = _grads(fast, x, g)
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_torch_compile_fullgraph_inductor_reduce_overhead(device):
    """``torch.compile(model, mode="reduce-overhead", fullgraph=True)``: Inductor over the custom ops,
    with its CUDA graphs on a GPU (on the CPU Inductor skips that step: the compile is the same)."""
    ref, fast = _pair(mefc=False, seed=7)
    fast = fast.to(device)
    x = randn(1, 3, 8, 16, seed=8, device=device)  # 8x16: the latent keeps 2 pixels (see the autocast test)
    g = randn(1, 3, 8, 16, seed=9, device=device)
    # dynamic=False: Dynamo would otherwise turn W symbolic after the other test's 8x8, and Inductor
    # (torch 2.13, CPU) then fails on symbolic strides for the ORIGINAL model as well ("cannot
    # determine truth value of Relational"): a PyTorch limitation, not one of these ops
    torch._dynamo.reset()
    compiled = torch.compile(fast, backend="inductor", mode="reduce-overhead", fullgraph=True, dynamic=False)
    _assert_matches_reference(fast, ref, x, g, *_grads(compiled, x, g))


def test_autocast_agrees_with_reference_under_autocast(device):
    """Under autocast both models compute in half precision with fp32 accumulation; each is
    compared with the float64 reference. The output and the input gradient may err at most 4x as
    much as the original does under the same autocast (plus the fp16 floor); the parameter
    gradients are held to that rule in aggregate (see ``assert_close_rms`` for why).

    8x16 rather than 8x8: at 8x8 the latent level is ONE pixel, where every normalised q.k is
    exactly +-1 and top-k only breaks ties (README, "Known differences")."""
    dtype = torch.float16 if device.type == "cpu" else torch.bfloat16
    ref, fast = _pair(mefc=False, seed=10)
    fast = fast.to(device)
    x = randn(1, 3, 8, 16, seed=11, device=device)
    g = randn(1, 3, 8, 16, seed=12, device=device)
    with torch.autocast(device.type, dtype=dtype):
        out, grads = _grads(fast, x, g)
    with torch.autocast("cpu", dtype=dtype):
        out_lp, grads_lp = _grads(ref.float(), x.cpu(), g.cpu())
    out64, grads64 = _grads(ref.double(), x.double().cpu(), g.double().cpu())
    assert_close("output", out, out64, out_lp, dtype=dtype)
    assert_close("input grad", grads[0], grads64[0], grads_lp[0], dtype=dtype)
    assert_close_rms(_names(fast)[1:], grads[1:], grads64[1:], grads_lp[1:], dtype=dtype)


def test_activation_checkpointing_over_blocks(device):
    from torch.utils.checkpoint import checkpoint

    _, fast = _pair(mefc=False, seed=13)
    fast = fast.to(device)
    x = randn(1, 3, 8, 8, seed=14, device=device)
    g = randn(1, 3, 8, 8, seed=15, device=device)
    out_e, grads_e = _grads(fast, x, g)
    for level in (fast.encoder_level1, fast.encoder_level2, fast.latent, fast.decoder_level1):
        for i, block in enumerate(level):
            level[i] = _Checkpointed(block, checkpoint)
    out_c, grads_c = _grads(fast, x, g)
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class _Checkpointed(torch.nn.Module):
    def __init__(self, block, checkpoint):
        super().__init__()
        self.block = block
        self._checkpoint = checkpoint

    def forward(self, x):
        return self._checkpoint(self.block, x, use_reentrant=False)


@pytest.mark.parametrize("mefc", [False, True], ids=["without_mefc", "with_mefc"])
def test_saved_for_backward_at_most_half_of_the_original(mefc):
    shape = (2, 3, 128, 128)
    ref = R.DRSformer(mefc=mefc)
    fast = DRSformer(mefc=mefc)
    ours = drsformer_fast.saved_tensor_bytes(fast, shape)
    theirs = drsformer_fast.saved_tensor_bytes(ref, shape)
    print(f"saved for backward at {shape}: fast {ours / 1e9:.2f} GB, original {theirs / 1e9:.2f} GB "
          f"({ours / theirs:.2f})")
    assert ours <= theirs / 2, (ours, theirs)
