"""The plain-PyTorch reference reproduces the original DRSformer (golden files)."""

import pytest
import torch
from golden_data import ATTENTION_FILES, FEEDFORWARD_FILES, MODEL_FILES, default_keys, load
from helpers import assert_golden, rel_err

from drsformer_fast import reference as R


def _build(name: str) -> torch.nn.Module:
    d = load(name)
    if name.startswith("model"):
        m = R.DRSformer(**d["config"], mefc=d["variant"] == "with_mefc")
        m.load_state_dict(d["checkpoint"]["params"])
    elif name.startswith("attention"):
        m = R.Attention(d["dim"], d["num_heads"], d["bias"])
        m.load_state_dict(d["state_dict"])
    else:
        m = R.FeedForward(d["dim"], d["ffn_expansion_factor"], d["bias"])
        m.load_state_dict(d["state_dict"])
    return m


def _run(m: torch.nn.Module, d: dict, dtype: torch.dtype):
    m = m.to(dtype)
    x = d["input"].to(dtype).requires_grad_()
    out = m(x)
    (out * d["grad_weight"].to(dtype)).sum().backward()
    return out, x.grad, {n: p.grad for n, p in m.named_parameters()}


ALL = MODEL_FILES + ATTENTION_FILES + FEEDFORWARD_FILES


@pytest.mark.parametrize("name", ALL)
def test_float64_matches_golden(name):
    d = load(name)
    out, dx, grads = _run(_build(name), d, torch.float64)
    assert rel_err(out, d["output"]) <= 1e-9
    assert rel_err(dx, d["input_grad"]) <= 1e-9
    assert set(grads) == set(d["param_grads"]), "parameter names differ from the original's"
    for n, g in grads.items():
        assert g is not None, f"{n} got no gradient"
        assert rel_err(g, d["param_grads"][n]) <= 1e-9, n


@pytest.mark.parametrize("name", ALL)
def test_float32_within_original_error(name):
    d = load(name)
    out, dx, grads = _run(_build(name), d, torch.float32)
    e = d["fp32_reference_rel_err"]
    assert_golden("output", out, d["output"], e["output"])
    assert_golden("input_grad", dx, d["input_grad"], e["input_grad"])
    for n, g in grads.items():
        assert_golden(n, g, d["param_grads"][n], e["param_grads"][n])


@pytest.mark.parametrize("variant", ["with_mefc", "without_mefc"])
def test_state_dict_keys_and_shapes_equal_original(variant):
    m = R.DRSformer(mefc=variant == "with_mefc")
    ours = {k: list(v.shape) for k, v in m.state_dict().items()}
    theirs = default_keys()[variant]
    assert list(ours) == list(theirs)
    assert ours == theirs
    expected = {"with_mefc": 33_655_424, "without_mefc": 32_610_304}[variant]
    assert sum(p.numel() for p in m.parameters()) == expected


@pytest.mark.parametrize("channels,expected", [(48, (24, 32, 36, 38)), (96, (48, 64, 72, 76)), (8, (4, 5, 6, 6)),
                                               (100, (50, 66, 75, 80)), (24, (12, 16, 18, 19))])
def test_topk_counts_follow_python_float_then_int(channels, expected):
    assert R.topk_counts(channels) == expected


def test_invalid_head_split_is_reported():
    with pytest.raises(ValueError, match="heads"):
        R.DRSformer(dim=48, heads=[5, 2, 4, 8], num_blocks=[1, 1, 1, 1])
