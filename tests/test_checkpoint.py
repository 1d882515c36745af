"""Checkpoint loading: configuration inference, layouts, strictness, and errors that name everything."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from golden_data import MODEL_FILES, default_keys, load
from helpers import make_generator, rel_err

from drsformer_fast import CheckpointError, infer_config, load_checkpoint, save_checkpoint
from drsformer_fast import reference as R
from drsformer_fast.checkpoint import _model_class

pytestmark = pytest.mark.usefixtures("one_thread", "torch_path")


SMALL = dict(dim=8, num_blocks=[1, 2, 1, 2], heads=[1, 2, 2, 4])
VARIANTS = {
    "mefc-nobias-withbias": dict(SMALL, bias=False, LayerNorm_type="WithBias", mefc=True),
    "mefc-bias-biasfree": dict(SMALL, bias=True, LayerNorm_type="BiasFree", mefc=True),
    "nomefc-bias-biasfree": dict(SMALL, bias=True, LayerNorm_type="BiasFree", mefc=False),
    "nomefc-nobias-withbias": dict(SMALL, bias=False, LayerNorm_type="WithBias", mefc=False),
}
DEFAULTS = dict(inp_channels=3, out_channels=3, dim=48, num_blocks=[4, 6, 6, 8], heads=[1, 2, 4, 8],
                ffn_expansion_factor=2.66, bias=False, LayerNorm_type="WithBias")


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, so that a parameter loaded into the wrong place changes the output."""
    g = make_generator(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            if name.endswith("temperature"):
                p.copy_(0.5 + noise.abs())
            elif ".norm" in name and name.endswith("weight"):
                p.copy_(1.0 + noise)
            elif p.dim() > 1:  # a function of the seed alone, not of the global-RNG init (any test order)
                p.copy_(noise * 10 / math.sqrt(p[0].numel()))  # std 1/sqrt(fan_in)
            else:
                p.copy_(noise)
    return model


def small_model(variant: str, seed: int = 0) -> nn.Module:
    return randomize(R.DRSformer(**VARIANTS[variant]), seed).eval()


def expected_config(kwargs: dict) -> dict:
    cfg = dict(DEFAULTS)
    cfg.update(kwargs)
    cfg.setdefault("mefc", True)
    return cfg


def image(seed: int = 1, h: int = 16, w: int = 24) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=make_generator(seed))


# --------------------------------------------------------------------------------------------
# Round trips and the golden models
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_round_trip_is_bitwise(variant, tmp_path):
    src = small_model(variant)
    path = tmp_path / "net.pth"
    save_checkpoint(src, path)
    assert set(torch.load(path, weights_only=True)) == {"params"}
    model = load_checkpoint(path, fast=False)
    assert model.config == expected_config(VARIANTS[variant])
    assert not model.training
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    x = image()
    with torch.no_grad():
        assert torch.equal(model(x), src(x))
        # the default, fused model: same weights, same function (another summation order)
        fast = load_checkpoint(path)
        assert isinstance(fast, _model_class(True)) and fast.config == model.config
        assert all(torch.equal(fast.state_dict()[k], v) for k, v in src.state_dict().items())
        torch.testing.assert_close(fast(x), src(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_FILES)
def test_golden_models_infer_their_config_and_reproduce_the_output(name):
    d = load(name)
    model = load_checkpoint(d["checkpoint"], fast=False)
    cfg = model.config
    assert {k: cfg[k] for k in d["config"]} == d["config"]
    assert cfg["mefc"] == (d["variant"] == "with_mefc")
    assert (cfg["inp_channels"], cfg["out_channels"]) == (3, 3)
    with torch.no_grad():
        out = model.double()(d["input"].double())
    assert rel_err(out, d["output"]) <= 1e-9


@pytest.mark.parametrize("variant", ["with_mefc", "without_mefc"])
def test_default_config_inferred_from_the_original_key_list(variant):
    # shapes only (meta tensors), from the original's key list of the default model
    sd = {k: torch.empty(shape, device="meta") for k, shape in default_keys()[variant].items()}
    assert infer_config(sd) == dict(DEFAULTS, mefc=variant == "with_mefc")


def test_default_config_inferred_from_the_reference_state_dict():
    sd = R.DRSformer().state_dict()
    assert infer_config(sd) == dict(DEFAULTS, mefc=True)


@pytest.mark.parametrize("factor,expected", [(2.66, 2.66), (2.0, 2.0), (1.5, 1.5), (3.14159, 3.141), (2.667, 2.67)])
def test_ffn_expansion_factor_is_one_that_builds_the_same_widths(factor, expected):
    src = R.DRSformer(dim=16, num_blocks=[1, 1, 1, 1], heads=[1, 2, 2, 4], ffn_expansion_factor=factor)
    cfg = infer_config(src.state_dict())
    assert cfg["ffn_expansion_factor"] == expected
    rebuilt = R.DRSformer(**cfg)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in src.state_dict().items()}


def test_fast_flag_selects_the_class():
    d = load(MODEL_FILES[0])
    assert type(load_checkpoint(d["checkpoint"], fast=False)) is R.DRSformer
    assert type(load_checkpoint(d["checkpoint"], fast=True)) is _model_class(True)


# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------


def test_path_str_pathlike_and_dict_agree(tmp_path):
    src = small_model("nomefc-bias-biasfree")
    path = tmp_path / "net.pth"
    save_checkpoint(src, path)
    x = image()
    with torch.no_grad():
        ref = src(x)
        for source in (path, str(path), {"params": src.state_dict()}):
            assert torch.equal(load_checkpoint(source, fast=False)(x), ref)


def test_bare_state_dict_and_module_prefixes(tmp_path):
    src = small_model("mefc-bias-biasfree")
    sd = src.state_dict()
    x = image()
    with torch.no_grad():
        ref = src(x)
        ddp = {"module." + k: v for k, v in sd.items()}
        for ckpt in (sd, ddp, {"params": ddp}):
            torch.save(ckpt, tmp_path / "c.pth")
            assert torch.equal(load_checkpoint(tmp_path / "c.pth", fast=False)(x), ref)
            assert torch.equal(load_checkpoint(ckpt, fast=False)(x), ref)


def test_params_ema(tmp_path):
    a, b = small_model("nomefc-nobias-withbias", 0), small_model("nomefc-nobias-withbias", 1)
    ckpt = {"params": a.state_dict(), "params_ema": b.state_dict()}
    x = image()
    with torch.no_grad():
        assert torch.equal(load_checkpoint(ckpt, fast=False)(x), a(x))
        assert torch.equal(load_checkpoint(ckpt, use_ema=True, fast=False)(x), b(x))
        save_checkpoint(b, tmp_path / "ema.pth", ema=True)
        assert set(torch.load(tmp_path / "ema.pth", weights_only=True)) == {"params_ema"}
        assert torch.equal(load_checkpoint(tmp_path / "ema.pth", use_ema=True, fast=False)(x), b(x))
    with pytest.raises(CheckpointError, match="no 'params' but has 'params_ema'.*use_ema=True"):
        load_checkpoint(tmp_path / "ema.pth")


@pytest.mark.parametrize("ckpt_kind", ["params", "bare"])
def test_use_ema_without_ema_weights(ckpt_kind):
    sd = small_model("nomefc-nobias-withbias").state_dict()
    ckpt = {"params": sd} if ckpt_kind == "params" else sd
    with pytest.raises(CheckpointError, match="use_ema=True.*no 'params_ema'"):
        load_checkpoint(ckpt, use_ema=True)


def test_save_unwraps_data_parallel(tmp_path):
    src = small_model("nomefc-nobias-withbias")
    save_checkpoint(nn.DataParallel(src), tmp_path / "dp.pth")
    saved = torch.load(tmp_path / "dp.pth", weights_only=True)["params"]
    assert list(saved) == list(src.state_dict())


def test_checkpoint_dtype_does_not_change_the_model_dtype():
    src = small_model("nomefc-nobias-withbias")
    sd = {k: v.half() for k, v in src.state_dict().items()}
    model = load_checkpoint(sd)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model.output.weight, src.output.weight.half().float())


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_missing_unexpected_and_shape_conflict_in_one_error():
    sd = dict(small_model("mefc-nobias-withbias").state_dict())
    del sd["encoder_level2.1.ffn.dwconv5x5.weight"]
    del sd["refinement.layers.1.preprocess.op.0.weight"]
    sd["encoder_level2.1.extra.weight"] = torch.zeros(3)
    sd["down1_2.body.0.weight"] = torch.zeros(4, 8, 5, 5)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint({"params": sd})
    msg = str(info.value)
    assert "\n" not in msg
    assert "2 missing keys: " in msg and "encoder_level2.1.ffn.dwconv5x5.weight" in msg
    assert "refinement.layers.1.preprocess.op.0.weight" in msg
    assert "1 unexpected key: encoder_level2.1.extra.weight" in msg
    assert "1 shape conflict: down1_2.body.0.weight (checkpoint [4, 8, 5, 5], model [4, 8, 3, 3])" in msg


def test_long_lists_are_truncated_with_counts():
    sd = dict(small_model("mefc-nobias-withbias").state_dict())
    refinement = [k for k in sd if k.startswith("refinement.")]
    for k in refinement:
        del sd[k]
    with pytest.raises(CheckpointError, match=rf"{len(refinement)} missing keys: .*\(\d+ more\)"):
        load_checkpoint(sd)


def test_strict_false_ignores_extra_entries_but_never_loads_partially():
    src = small_model("nomefc-nobias-withbias")
    sd = dict(src.state_dict(), **{"something_else.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="1 unexpected key"):
        load_checkpoint(sd)
    with pytest.warns(UserWarning, match="ignoring 1 unexpected checkpoint entry"):
        model = load_checkpoint(sd, strict=False, fast=False)
    x = image()
    with torch.no_grad():
        assert torch.equal(model(x), src(x))
    del sd["output.weight"]
    with pytest.raises(CheckpointError, match="no 4-d 'output.weight'"):
        load_checkpoint(sd, strict=False)
    sd = dict(src.state_dict())
    del sd["encoder_level1.0.ffn.project_out.weight"]
    with pytest.raises(CheckpointError, match="1 missing key: encoder_level1.0.ffn.project_out.weight"):
        load_checkpoint(sd, strict=False)


def test_heads_disagreeing_between_encoder_and_decoder():
    sd = dict(small_model("nomefc-nobias-withbias").state_dict())
    sd["decoder_level3.0.attn.temperature"] = torch.ones(4, 1, 1)
    with pytest.raises(CheckpointError, match=r"decoder_level3 has 4 heads but encoder_level3 has 2 .*heads\[2\]"):
        load_checkpoint(sd)


def test_block_counts_disagreeing_between_encoder_and_decoder():
    sd = dict(small_model("nomefc-nobias-withbias").state_dict())
    for k in [k for k in sd if k.startswith("decoder_level2.1.")]:
        del sd[k]
    with pytest.raises(CheckpointError, match=r"decoder_level2 has 1 blocks but encoder_level2 has 2"):
        load_checkpoint(sd)


def test_feed_forward_widths_no_factor_explains():
    sd = dict(small_model("nomefc-nobias-withbias").state_dict())
    for k in [k for k in sd if k.startswith("latent.") and ".ffn.project_in." in k]:
        sd[k] = torch.zeros(2 * 200, *sd[k].shape[1:])
    with pytest.raises(CheckpointError, match="no ffn_expansion_factor"):
        load_checkpoint(sd)


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes.pth is not a PyTorch checkpoint \(it is text: 'this is not"):
        load_checkpoint(text)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.pth is not a PyTorch checkpoint \(the file is empty"):
        load_checkpoint(tmp_path / "empty.pth")
    (tmp_path / "bytes.pth").write_bytes(b"\x00\x01 binary")
    with pytest.raises(CheckpointError, match=r"bytes.pth is not a PyTorch checkpoint \(it begins with the bytes"):
        load_checkpoint(tmp_path / "bytes.pth")
    torch.save({"params": {"w": torch.zeros(3)}}, tmp_path / "whole.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:200])  # a damaged zip: torch's reason
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*cut.pth with torch.load.*zip archive"):
        load_checkpoint(tmp_path / "cut.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a dict, got list"):
        load_checkpoint(tmp_path / "list.pth")
    torch.save({"optimizer": {"lr": torch.tensor(1.0)}, "iter": 3}, tmp_path / "state.pth")
    with pytest.raises(CheckpointError, match="not a DRSformer checkpoint.*top-level keys: iter, optimizer"):
        load_checkpoint(tmp_path / "state.pth")
    with pytest.raises(CheckpointError, match="no 4-d 'patch_embed.proj.weight'"):
        load_checkpoint({"params": {"conv.weight": torch.zeros(3, 3, 3, 3)}})
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)


def test_import_does_not_load_triton_or_torch():
    code = ("import sys, drsformer_fast; assert 'torch' not in sys.modules; "
            "from drsformer_fast import load_checkpoint; assert 'triton' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent)
