"""``drsformer-fast train``: the original training loop (``basicsr/train.py`` with ``ImageCleanModel``)
on the fast DRSformer.

Per iteration ``i`` (1-based), as the original: the scheduler steps (from ``i = 2`` on) and warm-up
overrides the rate while ``i < warmup_iter``; the progressive phase ``j`` is the first with
``i <= sum(iters[:j + 1])`` (the last one past the end); when ``mini_batch_sizes[j] <
batch_size_per_gpu`` a random subset of the batch (``random.sample``) is kept, and when ``gt_sizes[j]
< gt_size`` one random ``gt_sizes[j]`` window (``int((gt_size - s) * random())`` for rows, then
columns) of every image; mixup (``mixing_augs``) then mixes the batch with a permutation of itself
with a Beta(``mixup_beta``, ``mixup_beta``) weight (skipped with probability 1/2 when
``use_identity``); L1 loss, backward, ``clip_grad_norm_(..., 0.01)`` when ``use_grad_clip``, the
optimizer step, the EMA update (parameters only). The per-iteration randomness comes from a
``random.Random`` seeded with ``manual_seed + rank`` (the original uses the global one, seeded the
same way); its state, the global RNGs, the data position and the optimizer/scheduler/scaler states
go into ``training_states/<iter>.state``, so a resumed run continues bitwise as the uninterrupted
one on the CPU.

The iteration's body (zero_grad to the EMA update) is ``step.TrainStep``. On a GPU it is served
from CUDA graphs (``step.GraphedStep``: per patch size and batch, the first iteration eager, the
second a warm-up on a side stream and then a capture, every later one a replay), unless
``--no-cuda-graphs``, ``train.cuda_graphs: false``, several processes (DDP), ``--compile`` or
``--precision fp16`` (its GradScaler reads the gradients' finiteness on the host): the log says
once whether graphs are on and, if not, why. A graphed run builds Adam/AdamW with
``capturable=True``, keeps the learning rates as 0-d tensors on the device (the schedulers and the
warm-up write them in place) and copies batches to the GPU through pinned memory; training states
hold the rates as floats, so a state of either kind of run resumes in the other. Nothing reads the
device from the host per iteration: the loss at ``print_freq`` only (and for the terminal's
progress bar at most every 0.5 s), the rate as ``float(g["lr"])`` when printed or saved. Under DDP
a Ctrl-C is agreed on (an all-reduce read on the host) at print and save points only: every process
checks at the same iterations, so all stop, and save, at the first such point after it.

Validation (``val``, every ``val_freq`` iterations and once at the end unless the last iteration
was just validated) runs on rank 0 with the EMA weights when there are any. It logs the mean of each
metric and the best value of each so far with its iteration; the best values are kept in the
training states (a resumed run continues them), and when the first PSNR metric improves the weights
are written to ``models/net_g_best.pth`` (the format of the other ``net_g`` files). With
``val.save_img: true`` each derained validation image is written where the original writes it,
``visualization/<image stem>/<image stem>_<iter>.png`` (8-bit RGB). The state of the last
iteration is always saved, and a run resumed from it (the same command again) says that the
experiment is finished and exits 0 without writing anything.

Records (``train_log.jsonl``, and TensorBoard/wandb when asked for and installed): ``train`` at
``print_freq`` (``lr``, ``l_pix``, ``epoch``, ``it_per_s``), ``val`` per validation (one value per
metric). ``logger.wandb.project`` logs them to that wandb project (``logger.wandb.resume_id``
continues a run, as the original); without wandb installed the log says so once and training goes
on. ``drsformer-fast plot`` (``plot``) draws them.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import CheckpointError, _compare, _mismatch_message, extract_state_dict
from . import data as data_mod
from . import step as step_mod
from .options import OptionsError, apply_overrides, dump_options, load_options, validate
from .schedulers import build_scheduler, set_lr, warmup_lrs, with_float_lrs

__all__ = ["TrainArgs", "prepare", "train", "STATE_FORMAT"]

STATE_FORMAT = "drsformer-fast training state 1"
_AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainArgs:
    options: str
    overrides: tuple[str, ...] = ()
    precision: str = "fp32"
    compile: bool = False
    original: bool = False
    cuda_graphs: bool = True  # False: --no-cuda-graphs
    root: str = "."  # the folder that holds experiments/ (the working directory)


@dataclass
class Plan:
    """Everything checked before the first image is decoded or the model built."""

    opt: dict
    args: TrainArgs
    dist: bool
    rank: int
    world: int
    local_rank: int
    device: torch.device
    exp_root: Path
    train_pairs: list
    val_pairs: list | None
    resume_path: Path | None
    resume_auto: bool
    pretrain: dict | None  # {'params': sd, 'params_ema': sd | None}


# --------------------------------------------------------------------------------------------
# Preparation: options, environment, data and checkpoints, all checked up front
# --------------------------------------------------------------------------------------------


def _dist_env() -> tuple[bool, int, int, int]:
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        world = int(os.environ["WORLD_SIZE"])
        return world > 1, int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))
    return False, 0, 1, 0


def _read_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OptionsError(f"options: path.resume_state: cannot read {path}: {first}") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise OptionsError(f"options: path.resume_state: {path} is not a drsformer-fast training state")
    return state


def _state_iter(path: Path) -> int:
    try:
        return int(path.name[: -len(".state")])
    except ValueError:
        raise OptionsError(f"options: path.resume_state: {path} is not named training_states/<iter>.state") from None


def _model_file_of(state_path: Path) -> Path:
    """models/net_g_<k>.pth of the experiment folder that holds training_states/<k>.state (the original's rule)."""
    return state_path.parent.parent / "models" / f"net_g_{_state_iter(state_path)}.pth"


def _network_kwargs(opt: dict) -> dict:
    return {k: v for k, v in opt["network_g"].items() if k != "type"}


def _network_class(original: bool):
    if original:
        from ..reference import DRSformer
    else:
        from ..model import DRSformer
    return DRSformer


def _check_state_dict(sd: dict, opt: dict, strict: bool, what: str) -> None:
    """``sd`` fits ``network_g`` (shapes from a model built on the meta device: nothing allocated)."""
    with torch.device("meta"):
        model_sd = _network_class(True)(**_network_kwargs(opt)).state_dict()
    missing, unexpected, conflicts = _compare(model_sd, sd)
    if not strict:
        missing, unexpected = [], []
    if missing or unexpected or conflicts:
        msg = _mismatch_message(_network_kwargs(opt), missing, unexpected, conflicts)
        raise CheckpointError(f"{what}: " + msg.replace("the DRSformer it describes", "network_g"))


def _load_pretrain(path: str, opt: dict) -> dict:
    from ..checkpoint import _load_file

    strict = opt["path"]["strict_load_g"]
    ckpt = _load_file(path, "cpu")
    key = opt["path"]["param_key"]
    sd = extract_state_dict(ckpt, use_ema=(key == "params_ema"))
    _check_state_dict(sd, opt, strict, f"path.pretrain_network_g {path}")
    ema = None
    if opt["train"]["ema_decay"] > 0 and isinstance(ckpt, dict) and "params_ema" in ckpt:
        ema = extract_state_dict(ckpt, use_ema=True)
        _check_state_dict(ema, opt, strict, f"path.pretrain_network_g {path} (params_ema)")
    return {"params": sd, "params_ema": ema}


def prepare(args: TrainArgs) -> Plan:
    """Read and check the options, the machine, the data folders and every checkpoint named; raises
    :class:`OptionsError` / :class:`CheckpointError` / ``FileNotFoundError`` at the first problem."""
    if args.precision not in _AMP:
        raise OptionsError(f"--precision must be fp32, bf16 or fp16, got {args.precision!r}")
    opt = validate(apply_overrides(load_options(args.options), list(args.overrides)))
    dist, rank, world, local_rank = _dist_env()
    t = opt["datasets"]["train"]
    pairs = data_mod.pair_files(t["dataroot_gt"], t["dataroot_lq"], t["filename_tmpl"], "datasets.train")
    data_mod.check_dataset(pairs, "datasets.train", min_size=t["gt_size"])
    per_rank = math.ceil(len(pairs) * t["dataset_enlarge_ratio"] / world)
    if per_rank < t["batch_size_per_gpu"]:
        raise OptionsError(f"options: datasets.train.batch_size_per_gpu: {t['batch_size_per_gpu']} is more than the "
                           f"{per_rank} image(s) each of the {world} process(es) gets per epoch "
                           f"({len(pairs)} pairs x dataset_enlarge_ratio {t['dataset_enlarge_ratio']})")
    val_pairs = None
    if opt.get("val") is not None:
        v = opt["datasets"]["val"]
        val_pairs = data_mod.pair_files(v["dataroot_gt"], v["dataroot_lq"], v.get("filename_tmpl", "{}"),
                                        "datasets.val")
        data_mod.check_dataset(val_pairs, "datasets.val")
        ws = opt["val"]["window_size"]
        if ws:
            from ..images.imageio import probe_image

            for lq, _ in val_pairs:
                h, w = probe_image(lq)
                if (h % ws and -h % ws >= h) or (w % ws and -w % ws >= w):
                    raise OptionsError(f"options: val.window_size: {lq} ({h}x{w}) is too small to reflect-pad "
                                       f"to a multiple of {ws}")

    num_gpu = opt["num_gpu"]
    if num_gpu > 0:
        if not torch.cuda.is_available():
            raise OptionsError(f"options: num_gpu: {num_gpu} but this machine has no CUDA device "
                               "(--set num_gpu=0 trains on the CPU)")
        if not dist and num_gpu > 1:
            raise OptionsError(f"options: num_gpu: {num_gpu} GPUs train as {num_gpu} processes: "
                               f"torchrun --nproc_per_node={num_gpu} -m drsformer_fast.cli train ... "
                               "(or --set num_gpu=1 for one GPU)")
        if dist and local_rank >= torch.cuda.device_count():
            raise OptionsError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s)")
        device = torch.device("cuda", local_rank if dist else 0)
    else:
        device = torch.device("cpu")
    if args.precision == "fp16" and device.type != "cuda":
        raise OptionsError("--precision fp16 trains with a GradScaler on CUDA only; on the CPU use bf16 or fp32")

    exp_root = Path(args.root).resolve() / "experiments" / opt["name"]
    resume_path, auto = None, False
    if opt["path"]["resume_state"]:
        resume_path = Path(os.path.expanduser(opt["path"]["resume_state"]))
        if not resume_path.is_file():
            raise OptionsError(f"options: path.resume_state: file not found: {resume_path}")
    else:  # the original resumes automatically from the newest state of experiments/<name>/
        states = sorted((exp_root / "training_states").glob("*.state"),
                        key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
        states = [p for p in states if p.stem.isdigit()]
        if states:
            resume_path, auto = states[-1], True
    pretrain = None
    if resume_path is not None:
        _read_state(resume_path)  # readable and ours
        model_file = _model_file_of(resume_path)
        if not model_file.is_file():
            raise OptionsError(f"options: path.resume_state: the network of {resume_path.name} is missing: "
                               f"{model_file}")
        ckpt = torch.load(model_file, map_location="cpu", weights_only=True)
        sd = extract_state_dict(ckpt)
        _check_state_dict(sd, opt, True, f"resume network {model_file}")
        ema = ckpt.get("params_ema") if isinstance(ckpt, dict) else None
        if opt["train"]["ema_decay"] > 0 and ema is None:
            raise OptionsError(f"options: train.ema_decay: resuming needs params_ema in {model_file}, which has none")
        pretrain = {"params": sd, "params_ema": ema}
    elif opt["path"]["pretrain_network_g"]:
        pretrain = _load_pretrain(os.path.expanduser(opt["path"]["pretrain_network_g"]), opt)
    return Plan(opt=opt, args=args, dist=dist, rank=rank, world=world, local_rank=local_rank, device=device,
                exp_root=exp_root, train_pairs=pairs, val_pairs=val_pairs, resume_path=resume_path,
                resume_auto=auto, pretrain=pretrain)


# --------------------------------------------------------------------------------------------
# RNG states (every one of them, in a form torch.load(weights_only=True) reads back)
# --------------------------------------------------------------------------------------------


def _py_state(r: random.Random | None = None) -> list:
    version, internal, gauss = (r or random).getstate()
    return [version, list(internal), gauss]


def _set_py_state(s: list, r: random.Random | None = None) -> None:
    (r or random).setstate((s[0], tuple(s[1]), s[2]))


def _rng_snapshot(loop_rng: random.Random, device: torch.device) -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": _py_state(), "loop": _py_state(loop_rng),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _rng_restore(s: dict, loop_rng: random.Random, device: torch.device) -> None:
    _set_py_state(s["python"])
    _set_py_state(s["loop"], loop_rng)
    name, keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(s["torch"])
    if device.type == "cuda" and s.get("cuda") is not None:
        torch.cuda.set_rng_state(s["cuda"], device)


# --------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------


class _Log:
    """Log file + stdout (rank 0), JSON lines, TensorBoard and wandb when installed and asked for, a
    progress bar on a terminal."""

    def __init__(self, plan: Plan, stamp: str):
        self.on = plan.rank == 0
        self.tty = self.on and sys.stdout.isatty()
        self.file = None
        self.jsonl = None
        self.tb = None
        self.wandb = None
        self._bar = False
        if not self.on:
            return
        name = plan.opt["name"]
        self.file = open(plan.exp_root / f"train_{name}_{stamp}.log", "a")
        self.jsonl_path = plan.exp_root / "train_log.jsonl"
        self.jsonl = open(self.jsonl_path, "a")
        if plan.opt["logger"]["use_tb_logger"] and "debug" not in name:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(Path(plan.args.root).resolve() / "tb_logger" / name))
            except ImportError:
                self.info("use_tb_logger: TensorBoard is not installed; the metrics are in "
                          f"{self.jsonl_path} (JSON lines)")
        if (plan.opt["logger"].get("wandb") or {}).get("project") is not None:
            self._init_wandb(plan.opt)

    def _init_wandb(self, opt: dict) -> None:
        """The original's ``init_wandb_logger``: a run in ``logger.wandb.project`` named after the
        experiment, continuing the run ``logger.wandb.resume_id`` when given; not for experiments
        named ``*debug*`` (as TensorBoard, and as the original)."""
        w = opt["logger"]["wandb"]
        if "debug" in opt["name"]:
            self.info("logger.wandb: not logging to wandb for a debug experiment (its name contains 'debug')")
            return
        try:
            import wandb
        except ImportError:
            self.info("logger.wandb is set but wandb is not installed: not logging to wandb")
            return
        kwargs = {"project": w["project"], "name": opt["name"], "config": opt}
        if w.get("resume_id"):
            kwargs.update(id=w["resume_id"], resume="allow")
        try:
            run = wandb.init(**kwargs)
        except Exception as exc:  # a login or network problem must not stop the training
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.info(f"logger.wandb: wandb.init failed ({first}): not logging to wandb")
            return
        self.wandb = wandb
        run_id = getattr(run, "id", None) or w.get("resume_id")
        self.info(f"logger.wandb: logging to wandb project {w['project']}" + (f", run id {run_id}" if run_id else "")
                  + (" (resumed)" if w.get("resume_id") else ""))

    def info(self, msg: str) -> None:
        if not self.on:
            return
        line = f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S} {msg}"
        self.file.write(line + "\n")
        self.file.flush()
        if self._bar:
            sys.stdout.write("\r\033[K")
            self._bar = False
        print(msg, flush=True)

    def record(self, kind: str, it: int, values: dict) -> None:
        if not self.on:
            return
        self.jsonl.write(json.dumps({"kind": kind, "iter": it, **values}) + "\n")
        self.jsonl.flush()
        scalars = {f"{'losses' if kind == 'train' else 'metrics'}/{k}": v for k, v in values.items()
                   if isinstance(v, (int, float))}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, it)
        if self.wandb is not None:
            self.wandb.log(scalars, step=it)

    def bar(self, text: str) -> None:
        if self.tty:
            sys.stdout.write("\r\033[K" + text)
            sys.stdout.flush()
            self._bar = True

    def close(self) -> None:
        if self._bar:
            sys.stdout.write("\n")
        for f in (self.file, self.jsonl):
            if f is not None:
                f.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=int(seconds)))


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def _save_model(path: Path, net, ema) -> None:
    sd = {"params": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
    if ema is not None:
        sd["params_ema"] = {k: v.detach().cpu() for k, v in ema.state_dict().items()}
    tmp = path.with_name(f".tmp-{path.name}")
    torch.save(sd, tmp)
    os.replace(tmp, path)


def _graphs_off_reason(plan: Plan, args: TrainArgs, tr: dict) -> str | None:
    """Why this run's training step is not captured in CUDA graphs, None when nothing stands in the
    way but the device (``step.capture_backend`` decides that)."""
    if not args.cuda_graphs:
        return "--no-cuda-graphs"
    if not tr["cuda_graphs"]:
        return "train.cuda_graphs: false"
    if plan.dist:
        return "several processes: DistributedDataParallel's gradient all-reduce is not captured"
    if args.compile:
        return "--compile: torch.compile's mode='reduce-overhead' has CUDA graphs of its own"
    if args.precision == "fp16":
        return "--precision fp16: the GradScaler reads on the host whether the gradients are finite"
    return None


def _phase(current_iter: int, groups: list[int]) -> int:
    for j, g in enumerate(groups):
        if current_iter <= g:
            return j
    return len(groups) - 1


def _to_device(t: torch.Tensor, device: torch.device, pinned: bool) -> torch.Tensor:
    """``t`` on ``device``, the host not waiting for the copy; ``pinned``: through page-locked
    memory (a copy to the GPU from pageable memory may wait for the GPU's stream)."""
    if pinned:
        t = t.contiguous().pin_memory()
    return t.to(device, non_blocking=True)


def _mixup(gt, lq, rng: random.Random, beta: float, use_identity: bool, pinned: bool = False):
    """The original's Mixing_Augment with mixup its only augmentation."""
    if use_identity and rng.randint(0, 1) == 1:
        return gt, lq
    lam = rng.betavariate(beta, beta)
    perm = list(range(gt.shape[0]))
    rng.shuffle(perm)
    idx = _to_device(torch.tensor(perm), gt.device, pinned)
    return lam * gt + (1 - lam) * gt[idx], lam * lq + (1 - lam) * lq[idx]


def _selection_metric(metrics: dict) -> str | None:
    """The metric whose improvement writes ``models/net_g_best.pth``: the first PSNR."""
    return next((m for m, mopt in metrics.items() if mopt["type"] == "calculate_psnr"), None)


def _update_best(plan: Plan, results: dict, best: dict, current_iter: int, net, ema, log: _Log) -> None:
    """Updates ``best`` ({metric: {"value", "iter"}}, kept in the training states) with a validation's
    ``results``, logs the best values and writes ``models/net_g_best.pth`` when the PSNR improved."""
    metrics = plan.opt["val"].get("metrics") or {}
    for m, v in results.items():
        if math.isnan(v):
            continue
        if m not in best or v > best[m]["value"]:
            best[m] = {"value": float(v), "iter": current_iter}
    if not best:
        return
    key = _selection_metric(metrics)
    improved = key is not None and key in best and best[key]["iter"] == current_iter
    if improved:
        _save_model(plan.exp_root / "models" / "net_g_best.pth", net, ema)
    parts = []
    for m, b in best.items():
        label = m.upper() if m.lower() in ("psnr", "ssim") else m
        unit = " dB" if m in metrics and metrics[m]["type"] == "calculate_psnr" else ""
        parts.append(f"best {label} {b['value']:.4f}{unit} at iter {b['iter']}")
    log.info(", ".join(parts) + ("; saved models/net_g_best.pth" if improved else ""))


def _validate_model(net, plan: Plan, log: _Log, current_iter: int) -> dict:
    from ..images.imageio import to_uint8, write_png
    from ..images.inference import pad_to_multiple
    from ..images.metrics import calculate_psnr, calculate_ssim, score_pair
    from ..progress import Progress

    vopt = plan.opt["val"]
    protocol = vopt["protocol"]
    metrics = vopt.get("metrics") or {}
    totals = {m: 0.0 for m in metrics}
    ws = vopt["window_size"]
    was_training = net.training
    net.eval()
    ds = data_mod.ValPairs(plan.val_pairs)
    # a tqdm bar over the images on a terminal (a log gets the result line below)
    bar = Progress(len(ds), f"validation, iter {current_iter}", unit="image", quiet=not log.tty)
    with torch.no_grad(), bar:
        for i in range(len(ds)):
            item = ds[i]
            lq = item["lq"][None].to(plan.device)
            h, w = lq.shape[-2:]
            x = pad_to_multiple(lq, ws) if ws else lq
            out = net(x)[..., :h, :w].float()
            if vopt["save_img"]:  # the original's path: visualization/<stem>/<stem>_<iter>.png
                stem = item["name"]
                folder = plan.exp_root / "visualization" / stem
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{stem}_{current_iter}.png"
                tmp = path.with_name(f".tmp-{path.name}")
                write_png(tmp, to_uint8(out))
                os.replace(tmp, path)
            if vopt["use_image"]:
                sr, gt = to_uint8(out), to_uint8(item["gt"])
            else:
                sr = out[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0
                gt = item["gt"].permute(1, 2, 0).numpy() * 255.0
            for m, mopt in metrics.items():
                is_psnr = mopt["type"] == "calculate_psnr"
                if protocol == "basicsr":
                    fn = calculate_psnr if is_psnr else calculate_ssim
                    totals[m] += fn(sr, gt, crop_border=mopt["crop_border"], test_y_channel=mopt["test_y_channel"])
                else:  # the paper's MATLAB scripts: Y channel, whole image (crop_border was checked to be 0)
                    totals[m] += score_pair(sr, gt, protocol)[0 if is_psnr else 1]
            bar.step(item["name"])
    net.train(was_training)
    results = {m: v / len(ds) for m, v in totals.items()}
    name = plan.opt["datasets"]["val"].get("name") or "val"
    log.info(f"Validation {name} at iter {current_iter}: " +
             ", ".join(f"{m} {v:.4f}" for m, v in results.items()))
    log.record("val", current_iter, results)
    return results


def _prepare_folders(plan: Plan, log_stamp: str) -> None:
    if plan.rank != 0:
        return
    root = plan.exp_root
    if plan.resume_path is None and root.exists():
        # the original's mkdir_and_rename: an existing experiment is archived, never overwritten
        root.rename(root.with_name(f"{root.name}_archived_{log_stamp}"))
    for sub in ("models", "training_states"):
        (root / sub).mkdir(parents=True, exist_ok=True)


def train(plan: Plan) -> int:
    """Run the training described by ``plan``; returns the exit code (130 after Ctrl-C, state saved)."""
    opt, args = plan.opt, plan.args
    t_opt, tr = opt["datasets"]["train"], opt["train"]
    device = plan.device
    if plan.dist:
        import torch.distributed as dist

        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
    try:
        return _train(plan, opt, args, t_opt, tr, device)
    finally:
        if plan.dist:
            import torch.distributed as dist

            dist.destroy_process_group()


def _broadcast(obj, plan: Plan):
    if not plan.dist:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _train(plan: Plan, opt, args, t_opt, tr, device) -> int:
    stamp = _broadcast(datetime.datetime.now().strftime("%Y%m%d_%H%M%S"), plan)
    state = _read_state(plan.resume_path) if plan.resume_path is not None else None
    if state is not None and state["iter"] >= tr["total_iter"]:
        if plan.rank == 0:
            print(f"{opt['name']}: already finished at iter {state['iter']}: nothing to do (train.total_iter "
                  f"{tr['total_iter']}, state {plan.resume_path})", flush=True)
        return 0
    seed = opt["manual_seed"]
    if seed is None:
        seed = state["manual_seed"] if state is not None else _broadcast(random.randint(1, 10000), plan)
        opt["manual_seed"] = seed
    _prepare_folders(plan, stamp)
    if plan.dist:
        import torch.distributed as dist

        dist.barrier()
    log = _Log(plan, stamp)
    try:
        return _loop(plan, opt, args, t_opt, tr, device, seed, state, log, stamp)
    finally:
        log.close()


def _loop(plan, opt, args, t_opt, tr, device, seed, state, log: _Log, stamp) -> int:
    rank, world = plan.rank, plan.world
    if rank == 0:
        (plan.exp_root / f"options_{stamp}.yml").write_text(dump_options(opt))
    # the original's set_random_seed(seed + rank): model initialisation and any global randomness
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed + rank)
        torch.backends.cudnn.benchmark = True  # the original's setting (cuDNN picks algorithms per shape)
    loop_rng = random.Random(seed + rank)

    cls = _network_class(args.original)
    net = cls(**_network_kwargs(opt)).to(device)
    if plan.pretrain is not None:
        net.load_state_dict(plan.pretrain["params"], strict=opt["path"]["strict_load_g"] or state is not None)
    ema = None
    if tr["ema_decay"] > 0:
        ema = copy.deepcopy(net).eval()
        if plan.pretrain is not None and plan.pretrain.get("params_ema") is not None:
            ema.load_state_dict(plan.pretrain["params_ema"], strict=opt["path"]["strict_load_g"] or state is not None)
        for p in ema.parameters():
            p.requires_grad_(False)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    backend = None
    graphs_off = _graphs_off_reason(plan, args, tr)
    if graphs_off is None:
        backend = step_mod.capture_backend(device)
        if backend is None:
            graphs_off = f"training on the {device.type.upper()}"
    capturable = backend is not None and device.type == "cuda"
    optimizer = step_mod.build_optimizer(params, tr["optim_g"], capturable=capturable)
    scheduler = build_scheduler(optimizer, tr["scheduler"], tr["total_iter"])
    scaler = torch.amp.GradScaler("cuda") if args.precision == "fp16" else None

    current_iter, epoch, batch_in_epoch = 0, 0, 0
    best: dict = {}  # validation metric -> {"value", "iter"} of its best value so far
    if state is not None:
        optimizer.load_state_dict(state["optimizers"][0])
        scheduler.load_state_dict(state["schedulers"][0])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        current_iter, epoch, batch_in_epoch = state["iter"], state["epoch"], state["batch_in_epoch"]
        best = {m: dict(b) for m, b in (state.get("best") or {}).items()}
        rngs = state["rng"]
        if state["world_size"] == world:
            _rng_restore(rngs[rank], loop_rng, device)
        else:
            log.info(f"note: the state was saved by {state['world_size']} process(es), this run has {world}: "
                     "data order and random sub-batches continue but not exactly as an uninterrupted run")
            _rng_restore(rngs[0], loop_rng, device)
        how = "automatically (the newest state of the experiment)" if plan.resume_auto else ""
        log.info(f"Resuming {how} from {plan.resume_path}: iter {current_iter}, epoch {epoch}")
    # capturable, and the rates as tensors on the device for a graphed run; also after a state
    # saved by the other kind of run
    step_mod.prepare_optimizer(optimizer, capturable=capturable, lr_device=device if backend is not None else None)

    model = net
    if plan.dist:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=opt.get("find_unused_parameters", False))
    if args.compile:
        model = torch.compile(model)

    from .._dispatch import kernel_path

    n_params = sum(p.numel() for p in net.parameters())
    path = "reference (--original)" if args.original else f"fast model, {kernel_path(device)} path"
    log.info(f"drsformer-fast train {opt['name']}: DRSformer {_network_kwargs(opt)} ({n_params:,} parameters; "
             f"{path}) on {device} x {world} process(es), {args.precision}" + (", compiled" if args.compile else ""))
    log.info(f"experiment folder: {plan.exp_root}")
    if graphs_off is None:
        log.info("CUDA graphs: on (per patch size and batch: the first iteration eager, the second eager on a side "
                 "stream and captured, the rest replayed; --no-cuda-graphs trains eagerly)")
    else:
        log.info(f"CUDA graphs: off ({graphs_off})")
    bs = t_opt["batch_size_per_gpu"]
    n_pairs = len(plan.train_pairs)
    per_epoch = math.ceil(n_pairs * t_opt["dataset_enlarge_ratio"] / world) // bs
    total = tr["total_iter"]
    log.info(f"{n_pairs} training pairs, enlarge ratio {t_opt['dataset_enlarge_ratio']}, batch {bs} per process, "
             f"{per_epoch} iterations per epoch, {total} iterations ({math.ceil(total / per_epoch)} epochs)")

    dataset = data_mod.TrainPairs(plan.train_pairs, t_opt["gt_size"], t_opt["geometric_augs"], seed)
    groups = list(np.cumsum(t_opt["iters"]))
    announced = set()
    amp_dtype = _AMP[args.precision]
    mix = tr["mixing_augs"]
    train_step = step_mod.TrainStep(
        model, net, optimizer, loss_weight=tr["pixel_opt"]["loss_weight"], reduction=tr["pixel_opt"]["reduction"],
        grad_clip=tr["use_grad_clip"], ema=ema, ema_decay=tr["ema_decay"], amp_dtype=amp_dtype, scaler=scaler,
        uncached_autocast=backend is not None)
    run_step = step_mod.GraphedStep(train_step, backend) if backend is not None else train_step
    pinned = backend is not None and device.type == "cuda"  # a graphed run's copies never wait for the GPU
    print_freq, save_freq = opt["logger"]["print_freq"], opt["logger"]["save_checkpoint_freq"]
    stop = {"flag": False}

    def on_sigint(signum, frame):
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True
        if rank == 0:
            print("\nCtrl-C: saving a training state after this iteration (press again to quit without saving)",
                  file=sys.stderr, flush=True)

    def save(it: int) -> None:
        snap = _rng_snapshot(loop_rng, device)
        if plan.dist:
            import torch.distributed as dist

            snaps = [None] * world
            dist.all_gather_object(snaps, snap)
        else:
            snaps = [snap]
        if rank != 0:
            return
        _save_model(plan.exp_root / "models" / f"net_g_{it}.pth", net, ema)
        st = {"format": STATE_FORMAT, "iter": it, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
              "optimizers": [with_float_lrs(optimizer.state_dict())],
              "schedulers": [with_float_lrs(scheduler.state_dict())],
              "scaler": scaler.state_dict() if scaler is not None else None, "manual_seed": seed,
              "world_size": world, "rng": snaps, "best": best,
              "data": {"epoch": epoch, "batch_in_epoch": batch_in_epoch, "worker_seed_base": seed,
                       "sample_seed": [seed, "epoch", "position"]}}
        path = plan.exp_root / "training_states" / f"{it}.state"
        tmp = path.with_name(f".tmp-{path.name}")
        torch.save(st, tmp)
        os.replace(tmp, path)
        log.info(f"saved models/net_g_{it}.pth and training_states/{it}.state")

    previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    start_iter, t0 = current_iter, time.time()
    last_print = 0.0
    validated = saved = None  # the last iterations validated and saved
    loss_value = torch.zeros((), device=device)
    try:
        while current_iter < total:
            if batch_in_epoch >= per_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
            positions = data_mod.epoch_positions(n_pairs, world, rank, t_opt["dataset_enlarge_ratio"], epoch,
                                                 t_opt["use_shuffle"])
            keys = [(i, epoch, p) for i, p in positions[batch_in_epoch * bs: per_epoch * bs]]
            workers = t_opt["num_worker_per_gpu"]
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=bs, sampler=keys, drop_last=True, num_workers=workers,
                pin_memory=t_opt["pin_memory"] and device.type == "cuda",
                worker_init_fn=(_WorkerInit(seed + rank * workers) if workers else None))
            for batch in loader:
                current_iter += 1
                batch_in_epoch += 1
                if current_iter > 1:
                    scheduler.step()
                warm = warmup_lrs(optimizer, current_iter, tr["warmup_iter"])
                if warm is not None:
                    for g, lr in zip(optimizer.param_groups, warm):
                        set_lr(g, lr)

                j = _phase(current_iter, groups)
                mini_gt, mini_bs = t_opt["gt_sizes"][j], t_opt["mini_batch_sizes"][j]
                if j not in announced:
                    announced.add(j)
                    log.info(f"iter {current_iter}: patch size {mini_gt}, batch {mini_bs} per process "
                             f"({mini_bs * world} in all)")
                lq, gt = batch["lq"], batch["gt"]
                if mini_bs < bs:
                    idx = loop_rng.sample(range(bs), k=mini_bs)
                    lq, gt = lq[idx], gt[idx]
                gs = t_opt["gt_size"]
                if mini_gt < gs:
                    x0 = int((gs - mini_gt) * loop_rng.random())
                    y0 = int((gs - mini_gt) * loop_rng.random())
                    lq = lq[:, :, x0:x0 + mini_gt, y0:y0 + mini_gt]
                    gt = gt[:, :, x0:x0 + mini_gt, y0:y0 + mini_gt]
                lq, gt = _to_device(lq, device, pinned), _to_device(gt, device, pinned)
                if mix["mixup"]:
                    gt, lq = _mixup(gt, lq, loop_rng, mix["mixup_beta"], mix["use_identity"], pinned)

                loss_value = run_step(lq, gt)  # the loss stays on the device: read at print time only

                now = time.time()
                rate = (current_iter - start_iter) / max(now - t0, 1e-9)
                if current_iter % print_freq == 0:
                    lv = loss_value.clone()
                    if plan.dist:
                        import torch.distributed as dist

                        dist.all_reduce(lv)
                        lv /= world
                    lr = float(optimizer.param_groups[0]["lr"])
                    log.info(f"[epoch {epoch} iter {current_iter}/{total}] lr {lr:.3e} l_pix {lv.item():.4e} "
                             f"{rate:.2f} it/s ETA {_fmt_eta((total - current_iter) / rate)}")
                    log.record("train", current_iter, {"epoch": epoch, "lr": lr, "l_pix": lv.item(), "it_per_s": rate})
                elif log.tty and now - last_print > 0.5:
                    last_print = now
                    log.bar(f"iter {current_iter}/{total} l_pix {loss_value.item():.4e} "
                            f"lr {float(optimizer.param_groups[0]['lr']):.3e} {rate:.2f} it/s "
                            f"ETA {_fmt_eta((total - current_iter) / rate)}")
                # validation before the state of the same iteration, so that the state holds its best
                if opt.get("val") is not None and current_iter % opt["val"]["val_freq"] == 0:
                    _run_validation(plan, net, ema, log, current_iter, best)
                    validated = current_iter
                if current_iter % save_freq == 0:
                    save(current_iter)
                    saved = current_iter
                # under DDP the processes agree at print and save points only (an all-reduce and a
                # host read): every process checks at the same iterations, so all stop at the same one
                checkpoint = current_iter % print_freq == 0 or current_iter % save_freq == 0
                if (checkpoint or not plan.dist) and _stop_requested(stop, plan, device):
                    if current_iter >= total:  # nothing left to interrupt: the run ends as usual
                        log.info(f"Ctrl-C at the last iteration ({current_iter}): finishing the run")
                        break
                    if current_iter % save_freq != 0:
                        save(current_iter)
                    log.info(f"interrupted at iter {current_iter}: resume with --set "
                             f"path.resume_state={plan.exp_root / 'training_states' / f'{current_iter}.state'} "
                             "(or run the same command again)")
                    return 130
                if current_iter >= total:
                    break
        elapsed = datetime.timedelta(seconds=int(time.time() - t0))
        log.info(f"End of training ({elapsed}). Saving models/net_g_latest.pth")
        if rank == 0:
            _save_model(plan.exp_root / "models" / "net_g_latest.pth", net, ema)
        if opt.get("val") is not None and validated != current_iter:
            _run_validation(plan, net, ema, log, current_iter, best)
            saved = None  # the state holds the best of this validation too
        if saved != current_iter:  # a state of the last iteration: running again finds the run finished
            save(current_iter)
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


class _WorkerInit:
    def __init__(self, base: int):
        self.base = base

    def __call__(self, worker_id: int) -> None:
        data_mod.seed_worker(worker_id, base=self.base)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _stop_requested(stop: dict, plan: Plan, device) -> bool:
    if not plan.dist:
        return stop["flag"]
    import torch.distributed as dist

    flag = torch.tensor([1 if stop["flag"] else 0], device=device)
    dist.all_reduce(flag)  # every process stops at the same iteration
    return bool(flag.item())


def _run_validation(plan: Plan, net, ema, log: _Log, current_iter: int, best: dict) -> Any:
    # the original validates on rank 0 only (its dist_validation), with the EMA weights when there are any
    if plan.rank == 0:
        results = _validate_model(ema if ema is not None else net, plan, log, current_iter)
        _update_best(plan, results, best, current_iter, net, ema, log)
    if plan.dist:
        import torch.distributed as dist

        dist.barrier()
