"""patch() on instances of the ORIGINAL architecture (an independent upstream-style copy in
tests/original_arch.py, never imported by the package)."""

import pytest
import torch
from helpers import randn
from original_arch import LayerNorm, OriginalStyleDRSformer, TransformerBlock, perturb_

import drsformer_fast
from drsformer_fast.modules import (
    ChannelLayerNorm,
    FastTransformerBlock,
    FeatureCompensator,
    MixedScaleFeedForward,
    TopKSparseAttention,
)

CFG = dict(dim=8, num_blocks=[1, 1, 1, 1], heads=[1, 2, 2, 4], ffn_expansion_factor=2.66, bias=True,
           LayerNorm_type="WithBias")


pytestmark = pytest.mark.usefixtures("one_thread")


def _grads(model, x, g):
    x = x.detach().requires_grad_()
    out = model(x)
    return out, torch.autograd.grad(out, [x] + list(model.parameters()), g)


def test_patched_model_gives_the_same_outputs_and_gradients(device):
    model = perturb_(OriginalStyleDRSformer(**CFG, mefc=False), seed=1).to(device)
    x = randn(1, 3, 8, 16, seed=2, device=device)
    g = randn(1, 3, 8, 16, seed=3, device=device)
    out0, grads0 = _grads(model, x, g)
    params_before = list(model.parameters())
    state_before = {k: v.clone() for k, v in model.state_dict().items()}

    patched, report = drsformer_fast.patch(model, return_report=True)
    assert patched is model
    print(report)
    n_blocks = 7  # 4 encoder levels + 3 decoder levels, one block each
    kinds = [k for _, k in report.swapped]
    assert kinds.count("FastTransformerBlock") == n_blocks
    assert kinds.count("ChannelLayerNorm") == 2 * n_blocks
    assert kinds.count("TopKSparseAttention") == n_blocks
    assert kinds.count("MixedScaleFeedForward") == n_blocks
    assert not report.not_recognised
    assert sum(isinstance(m, FastTransformerBlock) for m in model.modules()) == n_blocks
    assert not any(isinstance(m, TransformerBlock) for m in model.modules())

    # the same Parameter objects, in the same order; the state dict is unchanged
    assert all(a is b for a, b in zip(model.parameters(), params_before))
    assert list(model.state_dict()) == list(state_before)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state_before.items())

    out1, grads1 = _grads(model, x, g)
    torch.testing.assert_close(out1, out0, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads1, grads0):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=1e-5)


def test_optimizer_built_before_the_patch_keeps_training_the_model(device):
    model = perturb_(OriginalStyleDRSformer(**CFG, mefc=False), seed=4).to(device)
    twin = perturb_(OriginalStyleDRSformer(**CFG, mefc=False), seed=4).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1)
    drsformer_fast.patch(model)
    x = randn(1, 3, 8, 16, seed=5, device=device)  # not 8x8: a 1-pixel latent makes top-k break ties
    for m, o in ((model, opt), (twin, opt_twin)):
        o.zero_grad()
        (m(x) - x).square().mean().backward()  # smooth: L1 flips sign on rounding
        o.step()
    for (n, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)


def test_patch_of_single_modules_and_of_the_reference_model(device):
    from drsformer_fast import reference as R

    ln = drsformer_fast.patch(LayerNorm(16, "BiasFree"))
    assert isinstance(ln, ChannelLayerNorm) and not ln.with_bias
    model = drsformer_fast.patch(perturb_(R.DRSformer(**CFG, mefc=True), seed=6))
    assert isinstance(model.encoder_level1[0], FastTransformerBlock)
    assert isinstance(model.encoder_level1[0].attn, TopKSparseAttention)
    assert isinstance(model.encoder_level1[0].ffn, MixedScaleFeedForward)
    # the MEFC compensators are swapped too (tests/ops/test_mefc_ops.py checks them numerically)
    assert isinstance(model.encoder_level0, FeatureCompensator) and isinstance(model.refinement, FeatureCompensator)


def test_look_alikes_are_left_alone_and_reported(device):
    class LayerNormEps6(LayerNorm):  # the original's structure, another epsilon
        def forward(self, x):
            x3 = x.flatten(2).transpose(1, 2)
            y = (x3 - x3.mean(-1, keepdim=True)) / torch.sqrt(x3.var(-1, keepdim=True, unbiased=False) + 1e-1)
            return (y * self.body.weight + self.body.bias).transpose(1, 2).reshape(x.shape)

    class NotAnAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Conv2d(4, 12, 1)

        def forward(self, x):
            return self.qkv(x)

    holder = torch.nn.Sequential(LayerNormEps6(8, "WithBias"), torch.nn.Conv2d(8, 8, 1))
    holder.add_module("odd_attention", NotAnAttention())
    _, report = drsformer_fast.patch(holder, return_report=True)
    assert report.swapped == []
    reasons = dict(report.not_recognised)
    assert "outputs differ" in reasons["0"]
    assert "NotAnAttention is not recognised" in reasons["odd_attention"]
    assert type(holder[0]) is LayerNormEps6
    assert report.untouched == 3
    assert "left as is" in str(report)


def test_patch_rejects_non_modules():
    with pytest.raises(TypeError, match="nn.Module"):
        drsformer_fast.patch("model")
