"""`drsformer-fast train`: the original options file, every user error, a few iterations of a tiny
model on synthetic rainy images, checkpoints, exact resume (explicit, and after Ctrl-C), the
learning rates of the original schedules, two gloo processes under torchrun, the loop with CUDA
graphs on a stand-in capture backend (bit for bit the eager loop; resume across the two), what a run
shows (validation images, best values, wandb on a stand-in module, one validation per iteration, a
finished run left alone) and ``drsformer-fast plot``.

The model runs its plain-PyTorch path (``torch_path``): the kernels are tested elsewhere; here the
training plumbing is."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from drsformer_fast import cli, load_checkpoint, save_checkpoint
from drsformer_fast.graphs import Captured
from drsformer_fast.training import data as data_mod
from drsformer_fast.training import step as step_mod
from drsformer_fast.training import trainer
from drsformer_fast.training.options import load_options, validate
from drsformer_fast.training.schedulers import build_scheduler, set_lr, warmup_lrs, with_float_lrs

pytestmark = pytest.mark.usefixtures("one_thread", "torch_path")

# The keys and values of Options/Deraining.yml of the original repository (cschenxiang/DRSformer),
# in its layout, including its YAML tags (`!!float 1e3`), `~` values and inline lists.
ORIGINAL_OPTIONS = """\
name: Deraining_DRSformer
model_type: ImageCleanModel
scale: 1
num_gpu: 4
manual_seed: 100

datasets:
  train:
    name: TrainSet
    type: Dataset_PairedImage
    dataroot_gt: ./Datasets/train/Rain200H/target
    dataroot_lq: ./Datasets/train/Rain200H/input
    geometric_augs: true
    filename_tmpl: '{}'
    io_backend:
      type: disk
    use_shuffle: true
    num_worker_per_gpu: 8
    batch_size_per_gpu: 8
    mini_batch_sizes: [4]
    iters: [300000]
    gt_size: 128
    gt_sizes: [128]
    dataset_enlarge_ratio: 1
    prefetch_mode: ~

  val:
    name: ValSet
    type: Dataset_PairedImage
    dataroot_gt: ./Datasets/test/Rain200H/target
    dataroot_lq: ./Datasets/test/Rain200H/input
    io_backend:
      type: disk

network_g:
  type: DRSformer
  inp_channels: 3
  out_channels: 3
  dim: 48
  num_blocks: [4,6,6,8]
  heads: [1,2,4,8]
  ffn_expansion_factor: 2.66
  bias: False
  LayerNorm_type: WithBias

path:
  pretrain_network_g: ~
  strict_load_g: true
  resume_state: ~

train:
  total_iter: 300000
  warmup_iter: -1 # no warm up
  use_grad_clip: true
  scheduler:
    type: CosineAnnealingRestartCyclicLR
    periods: [92000, 208000]
    restart_weights: [1,1]
    eta_mins: [0.0003,0.000001]
  mixing_augs:
    mixup: false
    mixup_beta: 1.2
    use_identity: true
  optim_g:
    type: AdamW
    lr: !!float 3e-4
    weight_decay: !!float 1e-4
    betas: [0.9, 0.999]
  pixel_opt:
    type: L1Loss
    loss_weight: 1
    reduction: mean

val:
  window_size: 8
  val_freq: !!float 1e3
  save_img: false
  rgb2bgr: true
  use_image: true
  max_minibatch: 8
  metrics:
    psnr:
      type: calculate_psnr
      crop_border: 0
      test_y_channel: true

logger:
  print_freq: 1000
  save_checkpoint_freq: !!float 1e3
  use_tb_logger: true
  wandb:
    project: ~
    resume_id: ~

dist_params:
  backend: nccl
  port: 29500
"""

TINY_NET = {"type": "DRSformer", "dim": 8, "num_blocks": [1, 1, 1, 1], "heads": [1, 1, 1, 1],
            "ffn_expansion_factor": 2.66, "bias": False, "LayerNorm_type": "WithBias"}


def _tiny_options(data: Path, name: str, **train_set) -> dict:
    """The original file's structure with a tiny network, tiny crops and a 4-iteration schedule
    that exercises progressive learning, mixup, flips/rotations, EMA, grad clipping and restarts."""
    opt = yaml.safe_load(ORIGINAL_OPTIONS)
    opt["name"] = name
    opt["num_gpu"] = 0
    t = opt["datasets"]["train"]
    t.update(dataroot_gt=str(data / "train/target"), dataroot_lq=str(data / "train/input"), num_worker_per_gpu=0,
             batch_size_per_gpu=2, mini_batch_sizes=[2, 1], iters=[2, 2], gt_size=16, gt_sizes=[16, 8])
    t.update(train_set)
    opt["datasets"]["val"].update(dataroot_gt=str(data / "val/target"), dataroot_lq=str(data / "val/input"))
    opt["network_g"] = dict(TINY_NET)
    opt["train"].update(total_iter=4, ema_decay=0.9)
    opt["train"]["scheduler"].update(periods=[2, 2])
    opt["train"]["mixing_augs"]["mixup"] = True
    opt["val"]["val_freq"] = 4
    opt["logger"].update(print_freq=1, save_checkpoint_freq=2)
    return opt


def _write(opt: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Synthetic rainy pairs: random clean images, bright streaks added (odd sizes, 4 train + 2 val)."""
    root = tmp_path_factory.mktemp("rain")
    rng = np.random.default_rng(0)
    for split, sizes in (("train", [(20, 24), (17, 19), (24, 16), (21, 21)]), ("val", [(13, 17), (16, 11)])):
        for d in ("input", "target"):
            (root / split / d).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            clean = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
            streaks = (rng.random((h, w)) < 0.15)[..., None] * rng.integers(60, 160)
            rain = np.clip(clean.astype(int) + streaks, 0, 255).astype(np.uint8)
            Image.fromarray(clean).save(root / split / "target" / f"rain-{i}.png")
            Image.fromarray(rain).save(root / split / "input" / f"rain-{i}.png")
    return root


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("drsformer-fast: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def _params(path: Path, key: str = "params") -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)[key]


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, first {diff[0]}: max |diff| {(a[diff[0]] - b[diff[0]]).abs().max()}"


# --------------------------------------------------------------------------------------------
# The original options file and the errors
# --------------------------------------------------------------------------------------------


def test_original_options_file_is_accepted_up_to_its_missing_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "Deraining.yml"
    path.write_text(ORIGINAL_OPTIONS)
    opt = validate(load_options(path))
    assert opt["train"]["total_iter"] == 300000 and opt["val"]["val_freq"] == 1000
    assert opt["logger"]["save_checkpoint_freq"] == 1000 and opt["train"]["optim_g"]["lr"] == 3e-4
    assert opt["network_g"]["mefc"] is True and opt["datasets"]["train"]["mini_batch_sizes"] == [4]
    code, _, err = run(capsys, "train", path)
    assert_user_error(code, err, "datasets.train.dataroot_gt", "./Datasets/train/Rain200H/target", "not found")
    assert not (tmp_path / "experiments").exists()


ERRORS = [
    (["--set", "train.optim_g.lrr=1.0e-4"], ["train.optim_g.lrr", "did you mean 'lr'"]),
    (["--set", "network_g.num_block=[1,1,1,1]"], ["network_g.num_block", "did you mean 'num_blocks'"]),
    (["--set", "train.optim_g.lr=3e-4"], ["train.optim_g.lr", "!!float"]),
    (["--set", "datasets.train.gt_size=20", "--set", "datasets.train.gt_sizes=[20,8]"],
     ["datasets.train.gt_size", "smaller than gt_size 20"]),
    (["--set", "num_gpu=1"], ["num_gpu", "no CUDA device", "--set num_gpu=0"]),
    (["--precision", "fp16"], ["fp16", "CUDA"]),
    (["--set", "train.scheduler.periods=[1,1]"], ["train.scheduler.periods", "total_iter"]),
    (["--set", "train.scheduler.eta_min=0"], ["train.scheduler.eta_min", "CosineAnnealingRestartCyclicLR",
                                              "did you mean 'eta_mins'"]),
    (["--set", "datasets.train.mini_batch_sizes=[4,1]"], ["mini_batch_sizes[0]", "batch_size_per_gpu"]),
    (["--set", "network_g.heads=[1,1,3,1]"], ["network_g.heads[2]"]),
    (["--set", "path.resume_state=nowhere/3.state"], ["path.resume_state", "not found"]),
    (["--set", "val.protocol=matlab"], ["val.protocol", "matlab-rain200"]),
    (["--set", "val.protocol=matlab-did", "--set", "val.metrics.psnr.crop_border=2"],
     ["val.metrics.psnr.crop_border", "must be 0"]),
    (["--set", "val.protocol=matlab-rain200", "--set", "val.use_image=false"], ["val.use_image", "8-bit"]),
]


@pytest.mark.parametrize("argv,needles", ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_errors_are_one_line_with_exit_code_2(data, tmp_path, capsys, monkeypatch, argv, needles):
    monkeypatch.chdir(tmp_path)
    path = _write(_tiny_options(data, "err"), tmp_path / "o.yml")
    code, _, err = run(capsys, "train", path, *argv)
    assert_user_error(code, err, *needles)
    assert not (tmp_path / "experiments").exists()


def test_misspelt_key_in_the_file(data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt = _tiny_options(data, "err")
    opt["trian"] = opt.pop("train")
    code, _, err = run(capsys, "train", _write(opt, tmp_path / "o.yml"))
    assert_user_error(code, err, "trian", "did you mean 'train'")


def test_data_errors(data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "d"
    shutil.copytree(data, folder)
    path = _write(_tiny_options(folder, "err"), tmp_path / "o.yml")
    shutil.copy(folder / "train/input/rain-0.png", folder / "train/input/extra.png")
    assert_user_error(*run(capsys, "train", path)[::2], "datasets.train", "extra.png", "has no target")
    (folder / "train/input/extra.png").unlink()
    (folder / "train/input/rain-1.png").unlink()
    assert_user_error(*run(capsys, "train", path)[::2], "rain-1.png", "has no input")
    shutil.rmtree(folder / "val/target")
    assert_user_error(*run(capsys, "train", path, "--set", f"datasets.train.dataroot_lq={folder}/train/target")[::2],
                      "datasets.val.dataroot_gt", "not found")


def test_pretrained_network_that_does_not_fit(data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from drsformer_fast.reference import DRSformer

    net = {k: v for k, v in TINY_NET.items() if k != "type"}
    save_checkpoint(DRSformer(**{**net, "dim": 16}), tmp_path / "wide.pth")
    path = _write(_tiny_options(data, "err"), tmp_path / "o.yml")
    code, _, err = run(capsys, "train", path, "--set", f"path.pretrain_network_g={tmp_path / 'wide.pth'}")
    assert_user_error(code, err, "pretrain_network_g", "shape conflict", "patch_embed.proj.weight")
    save_checkpoint(DRSformer(**net, mefc=False), tmp_path / "plain.pth")
    code, _, err = run(capsys, "train", path, "--set", f"path.pretrain_network_g={tmp_path / 'plain.pth'}")
    assert_user_error(code, err, "pretrain_network_g", "missing key", "encoder_level0")


# --------------------------------------------------------------------------------------------
# Data: the original's crops, flips/rotations and order
# --------------------------------------------------------------------------------------------


def _numpy_augmentation(img: np.ndarray, mode: int) -> np.ndarray:
    """The original's data_augmentation on an [H, W, C] array (modes 0-7)."""
    ops = {0: lambda x: x, 1: np.flipud, 2: np.rot90, 3: lambda x: np.flipud(np.rot90(x)),
           4: lambda x: np.rot90(x, k=2), 5: lambda x: np.flipud(np.rot90(x, k=2)),
           6: lambda x: np.rot90(x, k=3), 7: lambda x: np.flipud(np.rot90(x, k=3))}
    return ops[mode](img)


@pytest.mark.parametrize("mode", range(8))
def test_augment_equals_the_original_modes(mode):
    img = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(mode))
    expected = _numpy_augmentation(img.permute(1, 2, 0).numpy(), mode)
    np.testing.assert_array_equal(data_mod.augment(img, mode).permute(1, 2, 0).numpy(), expected)


def test_crops_are_the_same_window_of_input_and_target(tmp_path):
    rng = np.random.default_rng(1)
    clean = rng.integers(0, 256, size=(19, 23, 3)).astype(np.uint8)
    Image.fromarray(clean).save(tmp_path / "gt.png")
    Image.fromarray(255 - clean).save(tmp_path / "lq.png")
    plain = data_mod.TrainPairs([(tmp_path / "lq.png", tmp_path / "gt.png")], 8, False, seed=5)
    augmented = data_mod.TrainPairs([(tmp_path / "lq.png", tmp_path / "gt.png")], 8, True, seed=5)
    full = torch.from_numpy(clean).permute(2, 0, 1).float() / 255
    windows = {(t, l): full[:, t:t + 8, l:l + 8] for t in range(12) for l in range(16)}
    seen = set()
    for position in range(12):
        item = plain[(0, 3, position)]
        torch.testing.assert_close(item["lq"], 1 - item["gt"], rtol=0, atol=1e-6)
        where = [k for k, w in windows.items() if torch.equal(w, item["gt"])]
        assert len(where) == 1
        seen.add(where[0])
        aug = augmented[(0, 3, position)]  # same generator draws: same window, then a mode
        torch.testing.assert_close(aug["lq"], 1 - aug["gt"], rtol=0, atol=1e-6)
        assert any(torch.equal(data_mod.augment(item["gt"], m), aug["gt"]) for m in range(8))
        assert torch.equal(plain[(0, 3, position)]["gt"], item["gt"])  # a function of the key alone
    assert len(seen) > 6, "crops do not move"


def test_epoch_order_is_the_enlarged_sampler_split_by_rank():
    single = data_mod.epoch_positions(5, 1, 0, 2, epoch=3, shuffle=True)
    assert sorted(i for i, _ in single) == sorted(list(range(5)) * 2)
    ranks = [data_mod.epoch_positions(5, 2, r, 2, epoch=3, shuffle=True) for r in range(2)]
    merged = [x for pair in zip(*ranks) for x in pair]
    assert merged == single  # rank r takes positions r, r + 2, ...: one process sees the same global batches
    assert data_mod.epoch_positions(5, 1, 0, 2, epoch=4, shuffle=True) != single
    assert [i for i, _ in data_mod.epoch_positions(5, 1, 0, 1, epoch=3, shuffle=False)] == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------------------------
# Training, checkpoints, exact resume
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """Four iterations of the tiny configuration, states saved at 2 and 4."""
    root = tmp_path_factory.mktemp("run")
    path = _write(_tiny_options(data, "tiny"), root / "o.yml")
    from drsformer_fast import _dispatch

    available, _, reason = _dispatch._kernels_state()
    with pytest.MonkeyPatch.context() as mp:  # the torch_path fixture, for this module-scoped run
        mp.setattr(_dispatch, "_STATE", (available, False, reason))
        mp.chdir(root)
        torch.set_num_threads(1)
        code = cli.main(["train", str(path)])
    assert code == 0
    return root, path


def test_training_writes_the_original_outputs(uninterrupted):
    root, _ = uninterrupted
    exp = root / "experiments" / "tiny"
    for name in ("net_g_2.pth", "net_g_4.pth", "net_g_latest.pth"):
        ckpt = torch.load(exp / "models" / name, weights_only=True)
        assert set(ckpt) == {"params", "params_ema"}
        model = load_checkpoint(exp / "models" / name)
        assert model.config["dim"] == 8 and model.config["mefc"] is True
        load_checkpoint(exp / "models" / name, use_ema=True)
    _assert_same(_params(exp / "models/net_g_4.pth"), _params(exp / "models/net_g_latest.pth"))
    assert not all(torch.equal(a, b) for a, b in zip(_params(exp / "models/net_g_2.pth").values(),
                                                      _params(exp / "models/net_g_4.pth").values()))
    state = torch.load(exp / "training_states/4.state", weights_only=True)
    assert state["iter"] == 4 and {"python", "loop", "numpy", "torch", "cuda"} <= set(state["rng"][0])
    assert len(list(exp.glob("train_tiny_*.log"))) == 1 and len(list(exp.glob("options_*.yml"))) == 1
    records = [json.loads(line) for line in (exp / "train_log.jsonl").read_text().splitlines()]
    val = [r for r in records if r["kind"] == "val"]
    assert val and all(math.isfinite(r["psnr"]) and r["psnr"] > 0 for r in val)
    lrs = [r["lr"] for r in records if r["kind"] == "train"]
    # CosineAnnealingRestartCyclicLR, periods [2, 2], eta_mins [3e-4, 1e-6]: at iteration i, last_epoch = i - 1
    assert lrs == pytest.approx([3e-4, 3e-4, 3e-4, 1e-6 + 0.5 * (3e-4 - 1e-6) * (1 + math.cos(math.pi / 2))],
                                rel=1e-12)


def test_resume_from_the_middle_is_bitwise_exact(uninterrupted, tmp_path, capsys, monkeypatch):
    root, path = uninterrupted
    monkeypatch.chdir(tmp_path)
    state = root / "experiments/tiny/training_states/2.state"
    code, out, err = run(capsys, "train", path, "--set", "name=resumed", "--set", f"path.resume_state={state}")
    assert code == 0, err
    assert "Resuming" in out
    for key in ("params", "params_ema"):
        _assert_same(_params(root / "experiments/tiny/models/net_g_4.pth", key),
                     _params(tmp_path / "experiments/resumed/models/net_g_4.pth", key))
    a = torch.load(root / "experiments/tiny/training_states/4.state", weights_only=True)
    b = torch.load(tmp_path / "experiments/resumed/training_states/4.state", weights_only=True)
    for k, v in a["optimizers"][0]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(v[name], b["optimizers"][0]["state"][k][name])


def test_ctrl_c_saves_a_state_and_running_again_resumes_exactly(uninterrupted, tmp_path, capsys, monkeypatch):
    root, path = uninterrupted
    monkeypatch.chdir(tmp_path)
    real = trainer.warmup_lrs

    def interrupt_at_3(optimizer, current_iter, warmup_iter):
        if current_iter == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the handler only raises a flag: iteration 3 completes
        return real(optimizer, current_iter, warmup_iter)

    monkeypatch.setattr(trainer, "warmup_lrs", interrupt_at_3)
    code, out, err = run(capsys, "train", path)
    assert code == 130, err
    exp = tmp_path / "experiments/tiny"
    assert (exp / "training_states/3.state").is_file() and not (exp / "models/net_g_4.pth").exists()
    monkeypatch.setattr(trainer, "warmup_lrs", real)
    code, out, err = run(capsys, "train", path)  # the original resumes from the newest state by itself
    assert code == 0, err
    assert "Resuming automatically" in out
    for key in ("params", "params_ema"):
        _assert_same(_params(root / "experiments/tiny/models/net_g_4.pth", key),
                     _params(exp / "models/net_g_4.pth", key))


# --------------------------------------------------------------------------------------------
# Learning rates: the original formulas, with its step convention and warm-up
# --------------------------------------------------------------------------------------------


def _cyclic(e, base, periods, weights, eta_mins):
    c = np.cumsum(periods)
    k = next(i for i, ci in enumerate(c) if e <= ci)
    start = 0 if k == 0 else c[k - 1]
    return eta_mins[k] + weights[k] * 0.5 * (base - eta_mins[k]) * (1 + math.cos(math.pi * (e - start) / periods[k]))


SCHEDULES = [
    ({"type": "CosineAnnealingRestartCyclicLR", "periods": [4, 6], "restart_weights": [1, 0.5],
      "eta_mins": [3e-4, 1e-6]}, lambda e, b, prev: _cyclic(e, b, [4, 6], [1, 0.5], [3e-4, 1e-6])),
    ({"type": "CosineAnnealingRestartLR", "periods": [3, 7], "restart_weights": [1, 0.5], "eta_min": 1e-7},
     lambda e, b, prev: _cyclic(e, b, [3, 7], [1, 0.5], [1e-7, 1e-7])),
    # chained, as the original: at a milestone the *current* rate (warm-up's, if any) times gamma per occurrence
    ({"type": "MultiStepRestartLR", "milestones": [3, 6, 6], "gamma": 0.5},
     lambda e, b, prev: b if e == 0 else prev * {3: 0.5, 6: 0.25}.get(e, 1.0)),
    ({"type": "LinearLR"}, lambda e, b, prev: b * (1 - e / 10)),
    # PyTorch's CosineAnnealingLR, chained too: each rate from the current one
    ({"type": "TrueCosineAnnealingLR", "T_max": 10, "eta_min": 1e-6},
     lambda e, b, prev: b if e == 0 else 1e-6 + (prev - 1e-6) * (1 + math.cos(math.pi * e / 10))
     / (1 + math.cos(math.pi * (e - 1) / 10))),
]


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("warmup", [-1, 4])
@pytest.mark.parametrize("sched,formula", SCHEDULES, ids=[s["type"] for s, _ in SCHEDULES])
def test_schedule_learning_rates_equal_the_original_formula(sched, formula, warmup):
    opt = yaml.safe_load(ORIGINAL_OPTIONS)
    opt["train"].update(total_iter=10, warmup_iter=warmup, scheduler=sched)
    opt = validate(opt)
    base = opt["train"]["optim_g"]["lr"]
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = build_scheduler(optimizer, opt["train"]["scheduler"], 10)
    prev = None
    for i in range(1, 11):  # as the training loop: step from iteration 2 on, warm-up overrides
        if i > 1:
            scheduler.step()
        warm = warmup_lrs(optimizer, i, warmup)
        if warm is not None:
            optimizer.param_groups[0]["lr"] = warm[0]
        expected = base * i / warmup if i < warmup else formula(i - 1, base, prev)
        prev = expected
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-15), (i, sched["type"])


# --------------------------------------------------------------------------------------------
# torchrun: two gloo processes equal one process with the same global batch
# --------------------------------------------------------------------------------------------


def test_torchrun_two_gloo_processes_equal_one_process(data, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" and not k.startswith("PYTEST")}
    env.update(OMP_NUM_THREADS="1")  # the plain-PyTorch path of the fast model: the plumbing is under test
    common = dict(iters=[3], gt_sizes=[16])
    one = _tiny_options(data, "one", batch_size_per_gpu=2, mini_batch_sizes=[2], **common)
    two = _tiny_options(data, "two", batch_size_per_gpu=1, mini_batch_sizes=[1], **common)
    for opt in (one, two):  # per-process randomness (mixup, sub-batches) differs by rank in the original too
        opt["train"].update(total_iter=3, ema_decay=0.0)
        opt["train"]["mixing_augs"]["mixup"] = False
        opt["train"]["scheduler"].update(periods=[1, 2])
        opt["logger"].update(save_checkpoint_freq=1)
        del opt["val"]
    cmd = [sys.executable, "-m", "drsformer_fast.cli", "train"]
    p1 = subprocess.run([*cmd, _write(one, tmp_path / "one.yml")], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=300)
    assert p1.returncode == 0, p1.stderr[-3000:]
    p2 = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", *cmd[1:],
                         _write(two, tmp_path / "two.yml")], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=300)
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert "x 2 process(es)" in p2.stdout
    for it in (1, 3):
        a = _params(tmp_path / f"experiments/one/models/net_g_{it}.pth")
        b = _params(tmp_path / f"experiments/two/models/net_g_{it}.pth")
        for k in a:  # the two runs sum the same gradients in another order: rounding only
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=f"iter {it}: {k}")
    first = _params(tmp_path / "experiments/one/models/net_g_1.pth")
    assert any(not torch.equal(first[k], a[k]) for k in a), "iterations 2 and 3 changed nothing"


def test_validation_scores_with_the_papers_protocol(data, tmp_path, capsys, monkeypatch, torch_path):
    """val.protocol: validation PSNR is the MATLAB protocol's (the same function `score` uses)."""
    from drsformer_fast.images import metrics

    calls = []

    def spy(result, target, protocol):
        calls.append((protocol, metrics.psnr_matlab_did(result, target)))
        return real(result, target, protocol)

    real = metrics.score_pair
    monkeypatch.setattr(metrics, "score_pair", spy)
    monkeypatch.chdir(tmp_path)
    path = _write(_tiny_options(data, "did"), tmp_path / "o.yml")
    torch.set_num_threads(1)
    code, _, err = run(capsys, "train", path, "--set", "val.protocol=matlab-did")
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "experiments/did/train_log.jsonl").read_text().splitlines()]
    vals = [r for r in records if r["kind"] == "val"]
    assert vals and [p for p, _ in calls] == ["matlab-did"] * 2 * len(vals)  # the two validation images each time
    for i, val in enumerate(vals):
        assert val["psnr"] == pytest.approx((calls[2 * i][1] + calls[2 * i + 1][1]) / 2, rel=1e-12)


# --------------------------------------------------------------------------------------------
# What a run shows: validation images, best values, wandb, no repeated work, the curves
# --------------------------------------------------------------------------------------------


class FakeWandb:
    """A stand-in ``wandb`` module that records its calls."""

    def __init__(self):
        self.calls: list[tuple] = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        return type("Run", (), {"id": kwargs.get("id", "generated-id")})()

    def log(self, data, step=None):
        self.calls.append(("log", dict(data), step))

    def finish(self):
        self.calls.append(("finish",))


def _visible_options(data: Path, name: str) -> dict:
    """The tiny configuration validated at 3 (and, at the end, 4) with PSNR and SSIM, states at 2
    and 4, validation images saved, wandb asked for."""
    opt = _tiny_options(data, name)
    opt["val"].update(val_freq=3, save_img=True)
    opt["val"]["metrics"]["ssim"] = {"type": "calculate_ssim", "crop_border": 0, "test_y_channel": True}
    opt["logger"]["wandb"] = {"project": "derain-runs", "resume_id": "run-7"}
    return opt


@pytest.fixture(scope="module")
def visible(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("visible")
    path = _write(_visible_options(data, "vis"), root / "o.yml")
    from drsformer_fast import _dispatch

    fake = FakeWandb()
    available, _, reason = _dispatch._kernels_state()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_dispatch, "_STATE", (available, False, reason))
        mp.setitem(sys.modules, "wandb", fake)
        mp.chdir(root)
        torch.set_num_threads(1)
        assert cli.main(["train", str(path)]) == 0
    return root, path, fake


def _records(exp: Path, kind: str) -> list:
    return [r for r in map(json.loads, (exp / "train_log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_validation_runs_once_per_iteration(visible, uninterrupted):
    root, _, _ = visible
    assert [r["iter"] for r in _records(root / "experiments/vis", "val")] == [3, 4]  # val_freq 3, then the end
    root, _ = uninterrupted
    assert [r["iter"] for r in _records(root / "experiments/tiny", "val")] == [4]  # total_iter a multiple of val_freq


def test_validation_images_are_saved_where_the_original_saves_them(visible, data, uninterrupted):
    from drsformer_fast.images.imageio import read_image, to_uint8
    from drsformer_fast.images.inference import pad_to_multiple

    root, _, _ = visible
    vis = root / "experiments/vis/visualization"
    assert sorted(p.relative_to(vis).as_posix() for p in vis.rglob("*")) == [
        "rain-0", "rain-0/rain-0_3.png", "rain-0/rain-0_4.png", "rain-1", "rain-1/rain-1_3.png", "rain-1/rain-1_4.png"]
    model = load_checkpoint(root / "experiments/vis/models/net_g_4.pth", use_ema=True).eval()  # validated with EMA
    for i, (h, w) in enumerate([(13, 17), (16, 11)]):
        img = Image.open(vis / f"rain-{i}/rain-{i}_4.png")
        assert img.mode == "RGB" and img.size == (w, h)
        with torch.no_grad():
            out = model(pad_to_multiple(read_image(data / f"val/input/rain-{i}.png")[None], 8))[..., :h, :w]
        np.testing.assert_array_equal(np.asarray(img), to_uint8(out))
    assert not (uninterrupted[0] / "experiments/tiny/visualization").exists()  # save_img: false


def _best_of(vals: list, metric: str) -> dict:
    best = None
    for r in vals:
        if best is None or r[metric] > best["value"]:
            best = {"value": r[metric], "iter": r["iter"]}
    return best


def test_best_values_are_logged_saved_in_the_state_and_as_a_model(visible):
    root, _, _ = visible
    exp = root / "experiments/vis"
    vals = _records(exp, "val")
    expected = {m: _best_of(vals, m) for m in ("psnr", "ssim")}
    state = torch.load(exp / "training_states/4.state", weights_only=True)  # saved after the last validation
    assert state["best"] == expected
    assert torch.load(exp / "training_states/2.state", weights_only=True)["best"] == {}
    log = _log_text(exp)
    p, s = expected["psnr"], expected["ssim"]
    assert f"best PSNR {p['value']:.4f} dB at iter {p['iter']}, best SSIM {s['value']:.4f} at iter {s['iter']}" in log
    improvements = sum(r["psnr"] > max([v["psnr"] for v in vals[:i]], default=-math.inf) for i, r in enumerate(vals))
    assert log.count("saved models/net_g_best.pth") == improvements >= 1
    best = torch.load(exp / "models/net_g_best.pth", weights_only=True)
    assert set(best) == {"params", "params_ema"}
    if p["iter"] == 4:
        _assert_same(best["params_ema"], _params(exp / "models/net_g_4.pth", "params_ema"))
    load_checkpoint(exp / "models/net_g_best.pth", use_ema=True)


def test_resume_keeps_the_best_values(visible, tmp_path, capsys, monkeypatch):
    """A state whose best PSNR no later validation beats: the resumed run keeps it, its iteration
    and writes no net_g_best.pth; SSIM, beaten, moves on."""
    root, path, _ = visible
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    exp = tmp_path / "experiments/vis"
    (exp / "training_states").mkdir(parents=True)
    (exp / "models").mkdir()
    shutil.copy(root / "experiments/vis/models/net_g_2.pth", exp / "models")
    state = torch.load(root / "experiments/vis/training_states/2.state", weights_only=True)
    state["best"] = {"psnr": {"value": 99.0, "iter": 2}, "ssim": {"value": -1.0, "iter": 2}}
    torch.save(state, exp / "training_states/2.state")
    code, out, err = run(capsys, "train", path)
    assert code == 0, err
    assert "Resuming automatically" in out
    final = torch.load(exp / "training_states/4.state", weights_only=True)["best"]
    vals = _records(exp, "val")
    assert final == {"psnr": {"value": 99.0, "iter": 2}, "ssim": _best_of(vals, "ssim")}
    assert "best PSNR 99.0000 dB at iter 2" in out and not (exp / "models/net_g_best.pth").exists()
    # wandb asked for but not installed: said once, training goes on
    assert out.count("logger.wandb is set but wandb is not installed: not logging to wandb") == 1


def test_wandb_gets_the_records(visible):
    root, _, fake = visible
    (init, kwargs), *logs, finish = fake.calls
    assert init == "init" and finish == ("finish",)
    assert kwargs["project"] == "derain-runs" and kwargs["id"] == "run-7" and kwargs["resume"] == "allow"
    assert kwargs["name"] == "vis" and kwargs["config"]["val"]["save_img"] is True
    exp = root / "experiments/vis"
    train = [(c[2], c[1]) for c in logs if "losses/l_pix" in c[1]]
    assert [(r["iter"], r["l_pix"], r["lr"]) for r in _records(exp, "train")] == \
        [(step, d["losses/l_pix"], d["losses/lr"]) for step, d in train]
    val = [(c[2], c[1]) for c in logs if "metrics/psnr" in c[1]]
    assert [(r["iter"], r["psnr"], r["ssim"]) for r in _records(exp, "val")] == \
        [(step, d["metrics/psnr"], d["metrics/ssim"]) for step, d in val]
    assert "logger.wandb: logging to wandb project derain-runs, run id run-7 (resumed)" in _log_text(exp)


def test_wandb_without_resume_id_starts_a_new_run(data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    opt = _tiny_options(data, "new", iters=[1])
    opt["datasets"]["train"].update(mini_batch_sizes=[2], gt_sizes=[16])
    opt["train"].update(total_iter=1)
    opt["train"]["scheduler"]["periods"] = [1, 1]
    opt["logger"]["wandb"]["project"] = "p"
    del opt["val"]
    code, out, err = run(capsys, "train", _write(opt, tmp_path / "o.yml"))
    assert code == 0, err
    assert fake.calls[0] == ("init", {"project": "p", "name": "new", "config": fake.calls[0][1]["config"]})
    assert "logging to wandb project p, run id generated-id" in out
    assert [c[0] for c in fake.calls] == ["init", "log", "finish"]


def test_running_a_finished_experiment_again_does_nothing(uninterrupted, tmp_path, capsys, monkeypatch):
    root, path = uninterrupted
    monkeypatch.chdir(tmp_path)
    shutil.copytree(root / "experiments", tmp_path / "experiments")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    code, out, err = run(capsys, "train", path)
    assert code == 0, err
    assert "tiny: already finished at iter 4: nothing to do" in out
    assert "Validation" not in out and "Resuming" not in out
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # nothing written


def test_the_state_of_the_last_iteration_is_saved(visible, uninterrupted):
    """save_checkpoint_freq 2 and total_iter 3: a state at 3 all the same, so running again finds the run finished."""
    root, _, _ = visible
    assert sorted(p.name for p in (root / "experiments/vis/training_states").iterdir()) == ["2.state", "4.state"]


def test_ctrl_c_at_the_last_iteration_finishes_the_run(uninterrupted, tmp_path, capsys, monkeypatch):
    root, path = uninterrupted
    monkeypatch.chdir(tmp_path)
    real = trainer.warmup_lrs

    def interrupt_at_4(optimizer, current_iter, warmup_iter):
        if current_iter == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return real(optimizer, current_iter, warmup_iter)

    monkeypatch.setattr(trainer, "warmup_lrs", interrupt_at_4)
    exp = tmp_path / "experiments/tiny"
    (exp / "training_states").mkdir(parents=True)
    (exp / "models").mkdir()
    shutil.copy(root / "experiments/tiny/models/net_g_2.pth", exp / "models")
    shutil.copy(root / "experiments/tiny/training_states/2.state", exp / "training_states")
    code, out, err = run(capsys, "train", path)
    assert code == 0, err
    assert "Ctrl-C at the last iteration (4): finishing the run" in out
    _assert_same(_params(root / "experiments/tiny/models/net_g_latest.pth"), _params(exp / "models/net_g_latest.pth"))
    assert [r["iter"] for r in _records(exp, "val")] == [4]


# --------------------------------------------------------------------------------------------
# drsformer-fast plot
# --------------------------------------------------------------------------------------------


def test_plot_draws_the_curves_of_an_experiment(visible, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    root, _, _ = visible
    exp = tmp_path / "vis"
    shutil.copytree(root / "experiments/vis", exp)
    code, out, err = run(capsys, "plot", exp)
    assert code == 0, err
    png = exp / "training_curves.png"
    assert f"wrote {png} (4 training and 2 validation records" in out and "best psnr" in out
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] >= 1000 and img.size[1] > img.size[0] * 0.6
    code, out, err = run(capsys, "plot", exp / "train_log.jsonl", "--output", tmp_path / "out/curves.png")
    assert code == 0, err
    assert (tmp_path / "out/curves.png").is_file()


def test_plot_keeps_the_last_record_of_an_iteration_trained_again(tmp_path):
    from drsformer_fast.training.plot import read_log

    log = tmp_path / "train_log.jsonl"
    lines = [{"kind": "train", "iter": 1, "lr": 1e-3, "l_pix": 0.5}, {"kind": "train", "iter": 2, "lr": 1e-3,
                                                                       "l_pix": 0.4},
             {"kind": "val", "iter": 2, "psnr": 20.0}, {"kind": "train", "iter": 2, "lr": 1e-3, "l_pix": 0.3},
             {"kind": "val", "iter": 2, "psnr": 21.0}]
    log.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "train", "it')  # a cut-off last line
    got = read_log(log)
    assert [(r["iter"], r["l_pix"]) for r in got["train"]] == [(1, 0.5), (2, 0.3)]
    assert [(r["iter"], r["psnr"]) for r in got["val"]] == [(2, 21.0)]


def test_plot_errors_are_one_line_with_exit_code_2(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "other.jsonl").write_text('{"a": 1}\nnot json\n')
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00\x81" * 10)
    (tmp_path / "no_log").mkdir()
    for target, needle in [("missing.jsonl", "not found"), ("empty.jsonl", "empty"),
                           ("other.jsonl", "no training records"), ("binary.jsonl", "cannot read"),
                           ("no_log", "no train_log.jsonl")]:
        code, _, err = run(capsys, "plot", tmp_path / target)
        assert_user_error(code, err, target, needle)
    (tmp_path / "train_log.jsonl").write_text('{"kind": "train", "iter": 1, "lr": 0.001, "l_pix": 0.5}\n')
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # not installed
    assert_user_error(*run(capsys, "plot", tmp_path)[::2], "needs matplotlib", "pip install")
    assert not list(tmp_path.rglob("*.png"))


# --------------------------------------------------------------------------------------------
# CUDA graphs: the graphed loop on a stand-in capture backend, on the CPU
# --------------------------------------------------------------------------------------------


class TrainStandIn:
    """A capture backend for the CPU: the warm-up runs the step on a copy of the batch (a real step,
    as on a GPU's side stream), the "capture" runs nothing, a replay runs the step on the static
    buffers. Records the shapes captured and counts warm-ups, replays, releases and frees.
    (``test_train_step`` checks that the value of the step called during a real capture is not used.)"""

    def __init__(self):
        self.captured: list[tuple] = []
        self.warmups = self.replays = self.released = self.freed = 0

    def capture(self, fn, example, warmup):
        static_input = tuple(t.detach().clone() for t in example)
        for _ in range(warmup):
            fn(static_input)
            self.warmups += 1
        self.captured.append(tuple(tuple(t.shape) for t in example))
        static_output = torch.full((), float("nan"))  # what a capture leaves: nothing computed yet

        def replay():
            self.replays += 1
            static_output.copy_(fn(static_input))

        def release():
            self.released += 1

        return Captured(static_input, static_output, replay, release)

    def free(self):
        self.freed += 1


def _graph_options(data: Path, name: str) -> dict:
    """The tiny configuration over 6 iterations: patch 16 / batch 2 for 3, then patch 8 / batch 1
    for 3 (per patch size: eager, warm-up and capture, replay), states every 2 iterations."""
    opt = _tiny_options(data, name, iters=[3, 3])
    opt["train"]["total_iter"] = 6
    opt["train"]["scheduler"]["periods"] = [3, 3]
    opt["val"]["val_freq"] = 6
    opt["logger"]["save_checkpoint_freq"] = 2
    return opt


def _stand_in_backends(monkeypatch) -> list:
    """``capture_backend`` replaced: every run gets a fresh stand-in, appended to the list returned."""
    made = []

    def backend(device):
        made.append(TrainStandIn())
        return made[-1]

    monkeypatch.setattr(step_mod, "capture_backend", backend)
    return made


def _log_text(exp: Path) -> str:
    return "".join(p.read_text() for p in exp.glob("train_*.log"))


def _train_records(exp: Path) -> list:
    return [r for r in map(json.loads, (exp / "train_log.jsonl").read_text().splitlines()) if r["kind"] == "train"]


SHAPES_16 = ((2, 3, 16, 16), (2, 3, 16, 16))
SHAPES_8 = ((1, 3, 8, 8), (1, 3, 8, 8))


@pytest.fixture(scope="module")
def graph_runs(data, tmp_path_factory):
    """The 6-iteration configuration trained eagerly (--no-cuda-graphs) and graphed on the stand-in."""
    root = tmp_path_factory.mktemp("graphs")
    path = _write(_graph_options(data, "g"), root / "o.yml")
    from drsformer_fast import _dispatch

    available, _, reason = _dispatch._kernels_state()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_dispatch, "_STATE", (available, False, reason))
        backends = _stand_in_backends(mp)
        mp.chdir(root)
        torch.set_num_threads(1)
        assert cli.main(["train", str(path), "--set", "name=eager", "--no-cuda-graphs"]) == 0
        assert backends == []  # --no-cuda-graphs: no backend asked for
        assert cli.main(["train", str(path), "--set", "name=graphed"]) == 0
    assert len(backends) == 1
    return root, path, backends[0]


def test_graphed_training_is_eager_training_bit_for_bit(graph_runs):
    root, _, backend = graph_runs
    eager, graphed = root / "experiments/eager", root / "experiments/graphed"
    for it in (2, 4, 6, "latest"):
        for key in ("params", "params_ema"):
            _assert_same(_params(eager / f"models/net_g_{it}.pth", key),
                         _params(graphed / f"models/net_g_{it}.pth", key))
    # the losses logged (the warm-up iterations' own, the replays' from the static output) and the rates
    assert [(r["iter"], r["l_pix"], r["lr"]) for r in _train_records(eager)] == \
        [(r["iter"], r["l_pix"], r["lr"]) for r in _train_records(graphed)]
    # per patch size: iteration 1 eager, 2 warm-up + capture, 3 replayed; the first graph dropped at iteration 4
    assert backend.captured == [SHAPES_16, SHAPES_8]
    assert (backend.warmups, backend.replays, backend.released, backend.freed) == (2, 2, 1, 1)
    assert "CUDA graphs: on" in _log_text(graphed)
    assert "CUDA graphs: off (--no-cuda-graphs)" in _log_text(eager)


def test_training_states_hold_float_rates(graph_runs):
    root, _, _ = graph_runs
    for name in ("eager", "graphed"):
        state = torch.load(root / f"experiments/{name}/training_states/4.state", weights_only=True)
        group = state["optimizers"][0]["param_groups"][0]
        sched = state["schedulers"][0]
        assert type(group["lr"]) is float and type(group["initial_lr"]) is float
        assert all(type(v) is float for v in sched["_last_lr"] + sched["base_lrs"])
    a, b = (torch.load(root / f"experiments/{n}/training_states/4.state", weights_only=True)
            for n in ("eager", "graphed"))
    assert a["optimizers"][0]["param_groups"][0]["lr"] == b["optimizers"][0]["param_groups"][0]["lr"]
    assert a["schedulers"][0]["_last_lr"] == b["schedulers"][0]["_last_lr"]


@pytest.mark.parametrize("saved_by, state_iter", [("graphed", 4), ("eager", 2)])
def test_resume_across_graphed_and_eager_runs_is_exact(graph_runs, tmp_path, capsys, monkeypatch, saved_by, state_iter):
    """A graphed run's state resumed with --no-cuda-graphs, an eager run's state resumed graphed:
    both end bitwise where the uninterrupted runs end."""
    root, path, _ = graph_runs
    monkeypatch.chdir(tmp_path)
    backends = _stand_in_backends(monkeypatch)
    state = root / f"experiments/{saved_by}/training_states/{state_iter}.state"
    extra = ["--no-cuda-graphs"] if saved_by == "graphed" else []
    code, out, err = run(capsys, "train", path, "--set", "name=resumed", "--set", f"path.resume_state={state}", *extra)
    assert code == 0, err
    assert "Resuming" in out
    for key in ("params", "params_ema"):
        _assert_same(_params(root / "experiments/eager/models/net_g_6.pth", key),
                     _params(tmp_path / "experiments/resumed/models/net_g_6.pth", key))
    if saved_by == "eager":  # iterations 3 (patch 16) and 4 (patch 8) eager, 5 captured, 6 replayed
        assert backends[0].captured == [SHAPES_8] and backends[0].replays == 1
    else:
        assert backends == []


def test_cuda_graphs_option_false_captures_nothing(data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    backends = _stand_in_backends(monkeypatch)
    opt = _tiny_options(data, "off", iters=[2])
    opt["datasets"]["train"].update(mini_batch_sizes=[2], gt_sizes=[16])
    opt["train"].update(total_iter=2, cuda_graphs=False)
    opt["train"]["scheduler"]["periods"] = [1, 1]
    del opt["val"]
    code, out, err = run(capsys, "train", _write(opt, tmp_path / "o.yml"))
    assert code == 0, err
    assert backends == [] and "CUDA graphs: off (train.cuda_graphs: false)" in out


def test_cuda_graphs_option_and_flag(data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt = _tiny_options(data, "err")
    opt["train"]["cuda_graphs"] = "yes"  # a string (quoted in the file)
    code, _, err = run(capsys, "train", _write(opt, tmp_path / "o.yml"))
    assert_user_error(code, err, "train.cuda_graphs", "expected true or false", "'yes'")
    assert not (tmp_path / "experiments").exists()
    parser = cli.build_parser()
    assert parser.parse_args(["train", "o.yml"]).cuda_graphs is True
    assert parser.parse_args(["train", "o.yml", "--no-cuda-graphs"]).cuda_graphs is False
    assert validate(yaml.safe_load(ORIGINAL_OPTIONS))["train"]["cuda_graphs"] is True  # the default


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("warmup", [-1, 4])
@pytest.mark.parametrize("sched", [s for s, _ in SCHEDULES], ids=[s["type"] for s, _ in SCHEDULES])
def test_schedules_write_tensor_rates_in_place(sched, warmup):
    """With the rates as float64 tensors (a graphed run on the CPU) every schedule and the warm-up
    give exactly the float rates, written into the same tensor."""
    opt = yaml.safe_load(ORIGINAL_OPTIONS)
    opt["train"].update(total_iter=10, warmup_iter=warmup, scheduler=sched)
    opt = validate(opt)
    runs = []
    for tensor in (False, True):
        optimizer = step_mod.build_optimizer([torch.nn.Parameter(torch.zeros(1))], opt["train"]["optim_g"],
                                             capturable=False)
        scheduler = build_scheduler(optimizer, opt["train"]["scheduler"], 10)
        step_mod.prepare_optimizer(optimizer, capturable=False, lr_device=torch.device("cpu") if tensor else None)
        rate = optimizer.param_groups[0]["lr"]
        lrs = []
        for i in range(1, 11):
            if i > 1:
                scheduler.step()
            warm = warmup_lrs(optimizer, i, warmup)
            if warm is not None:
                set_lr(optimizer.param_groups[0], warm[0])
            if tensor:
                assert optimizer.param_groups[0]["lr"] is rate
            lrs.append(float(optimizer.param_groups[0]["lr"]))
        runs.append(lrs)
    assert runs[0] == runs[1]


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_rate_tensors_round_trip_through_state_dicts(dtype):
    """Saved (``with_float_lrs``) and loaded into a run with rate tensors, a rate is the same tensor
    value; loaded into an eager run, the same float; both continue with the same rates."""
    opt = validate(yaml.safe_load(ORIGINAL_OPTIONS))
    tr = opt["train"]

    def build(tensor_dtype):
        optimizer = step_mod.build_optimizer([torch.nn.Parameter(torch.zeros(2))], tr["optim_g"], capturable=False)
        scheduler = build_scheduler(optimizer, {**tr["scheduler"], "periods": [4, 10]}, 14)
        return optimizer, scheduler

    optimizer, scheduler = build(dtype)
    step_mod.prepare_optimizer(optimizer, capturable=False, lr_device=torch.device("cpu"), lr_tensor_dtype=dtype)
    for _ in range(5):
        optimizer.param_groups[0]["params"][0].grad = torch.ones(2)
        optimizer.step()
        scheduler.step()
    saved = with_float_lrs(optimizer.state_dict()), with_float_lrs(scheduler.state_dict())
    rate = optimizer.param_groups[0]["lr"]
    assert type(saved[0]["param_groups"][0]["lr"]) is float and float(rate) == saved[0]["param_groups"][0]["lr"]
    again, eager = build(dtype), build(None)
    for (o, s), device in ((again, torch.device("cpu")), (eager, None)):
        o.load_state_dict(saved[0])
        s.load_state_dict(saved[1])
        step_mod.prepare_optimizer(o, capturable=False, lr_device=device, lr_tensor_dtype=dtype)
    loaded = again[0].param_groups[0]["lr"]
    assert isinstance(loaded, torch.Tensor) and loaded is not rate and torch.equal(loaded, rate)
    assert eager[0].param_groups[0]["lr"] == float(rate)
    for _ in range(3):
        for s in (scheduler, again[1], eager[1]):
            s.step()
        assert float(optimizer.param_groups[0]["lr"]) == float(again[0].param_groups[0]["lr"]) \
            == float(torch.tensor(eager[0].param_groups[0]["lr"], dtype=dtype))


def test_validation_shows_progress_over_its_images_on_a_terminal(data, tmp_path, capsys, monkeypatch, torch_path):
    """Where the log is a terminal, validation shows progress over its images (here stderr is not a
    terminal: a line per image, with the ETA until the last)."""
    import sys

    from drsformer_fast import progress

    made = []

    class Recording(progress.Progress):
        def __init__(self, total, desc, **kw):
            super().__init__(total, desc, **kw)
            made.append(self)

    monkeypatch.setattr(progress, "Progress", Recording)
    monkeypatch.chdir(tmp_path)
    path = _write(_tiny_options(data, "bar"), tmp_path / "o.yml")
    torch.set_num_threads(1)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, _, err = run(capsys, "train", path)
    assert code == 0, err
    assert made and all(not p.quiet and p.done == p.total == 2 for p in made)
    assert err.count("[2/2] ") == len(made) and "ETA" in err
