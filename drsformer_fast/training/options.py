"""The original's training options (BasicSR's YAML schema, as in ``Options/Deraining.yml``):
reading, ``--set`` overrides and validation, all before any data is read or any model built.

Every key of the original options file is known here with the original's meaning; a key that is
not (a typo, a key of another BasicSR model) is an :class:`OptionsError` naming the closest known
key. Values are checked for type and range; numbers written as YAML 1.1 reads them (``3e-4``
without a dot is a *string* in YAML 1.1, ``!!float 3e-4`` or ``3.0e-4`` a float) get a hint.

Additions to the original schema, all optional: ``network_g.mefc`` (the original chooses the
variant by editing its architecture file; default ``true``, the full model), ``val.protocol``
(how validation PSNR/SSIM are computed, the choices of ``drsformer-fast score --protocol``:
``basicsr``, the original's own validation and the default, or the paper's MATLAB scripts
``matlab-rain200`` / ``matlab-did``, Y channel of the whole 8-bit image), ``train.cuda_graphs``
(default ``true``: on a GPU the training step is captured in CUDA graphs and replayed, see
``drsformer_fast.training.step``; ``false``, or ``--no-cuda-graphs``, trains eagerly).
"""

from __future__ import annotations

import copy
import difflib
import math
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["OptionsError", "load_options", "apply_overrides", "validate", "SCHEDULERS", "dump_options"]


class OptionsError(ValueError):
    """Options that cannot be trained with; the message names the key (``a.b.c``) and why."""


# --------------------------------------------------------------------------------------------
# Schema: nested dicts of leaf kinds. A kind is a string; '?' at the end means "may be null (~)".
# --------------------------------------------------------------------------------------------

_ANY = "any"
_IO_BACKEND = {"type": "str"}
_TRAIN_SET = {
    "name": "str?", "type": "str", "dataroot_gt": "str", "dataroot_lq": "str", "geometric_augs": "bool",
    "filename_tmpl": "str", "io_backend": _IO_BACKEND, "use_shuffle": "bool", "num_worker_per_gpu": "int",
    "batch_size_per_gpu": "int", "mini_batch_sizes": "int_list", "iters": "int_list", "gt_size": "int",
    "gt_sizes": "int_list", "dataset_enlarge_ratio": "int", "prefetch_mode": "str?", "pin_memory": "bool",
    "num_prefetch_queue": "int",
}
_VAL_SET = {"name": "str?", "type": "str", "dataroot_gt": "str", "dataroot_lq": "str", "filename_tmpl": "str",
            "io_backend": _IO_BACKEND}
_METRIC = {"type": "str", "crop_border": "int", "test_y_channel": "bool"}

# every keyword of every scheduler the original's base_model.setup_schedulers can build
SCHEDULERS: dict[str, dict[str, Any]] = {
    # name: {keyword: default (REQUIRED when it must be given)}
    "MultiStepRestartLR": {"milestones": "REQUIRED", "gamma": 0.1, "restarts": [0], "restart_weights": [1]},
    "MultiStepLR": {"milestones": "REQUIRED", "gamma": 0.1, "restarts": [0], "restart_weights": [1]},
    "CosineAnnealingRestartLR": {"periods": "REQUIRED", "restart_weights": [1], "eta_min": 0.0},
    "CosineAnnealingRestartCyclicLR": {"periods": "REQUIRED", "restart_weights": [1], "eta_mins": [0.0]},
    "TrueCosineAnnealingLR": {"T_max": "REQUIRED", "eta_min": 0.0},
    "LinearLR": {},
    "VibrateLR": {},
}
_SCHEDULER = {"type": "str", "milestones": "int_list", "gamma": "float", "restarts": "int_list",
              "restart_weights": "float_list", "periods": "int_list", "eta_min": "float", "eta_mins": "float_list",
              "T_max": "int"}

SCHEMA: dict[str, Any] = {
    "name": "str",
    "model_type": "str",
    "scale": "int",
    "num_gpu": "int",
    "manual_seed": "int?",
    "find_unused_parameters": "bool",
    "datasets": {"train": _TRAIN_SET, "val": _VAL_SET},
    "network_g": {"type": "str", "inp_channels": "int", "out_channels": "int", "dim": "int", "num_blocks": "int_list",
                  "heads": "int_list", "ffn_expansion_factor": "float", "bias": "bool", "LayerNorm_type": "str",
                  "mefc": "bool"},
    "path": {"pretrain_network_g": "str?", "strict_load_g": "bool", "resume_state": "str?", "param_key": "str"},
    "train": {
        "total_iter": "int", "warmup_iter": "int", "use_grad_clip": "bool", "ema_decay": "float",
        "cuda_graphs": "bool", "scheduler": _SCHEDULER,
        "mixing_augs": {"mixup": "bool", "mixup_beta": "float", "use_identity": "bool"},
        "optim_g": {"type": "str", "lr": "float", "weight_decay": "float", "betas": "float_list", "eps": "float",
                    "amsgrad": "bool"},
        "pixel_opt": {"type": "str", "loss_weight": "float", "reduction": "str"},
    },
    "val": {"window_size": "int", "val_freq": "int", "save_img": "bool", "rgb2bgr": "bool", "use_image": "bool",
            "max_minibatch": "int", "protocol": "str", "metrics": {"*": _METRIC}},
    "logger": {"print_freq": "int", "save_checkpoint_freq": "int", "use_tb_logger": "bool",
               "wandb": {"project": "str?", "resume_id": "str?"}},
    "dist_params": {"backend": "str", "port": "int"},
}

DEFAULTS: dict[str, Any] = {
    "scale": 1, "num_gpu": 1, "manual_seed": None, "model_type": "ImageCleanModel",
    "datasets.train.filename_tmpl": "{}", "datasets.train.geometric_augs": False, "datasets.train.use_shuffle": True,
    "datasets.train.num_worker_per_gpu": 0, "datasets.train.dataset_enlarge_ratio": 1,
    "datasets.train.prefetch_mode": None, "datasets.train.pin_memory": False,
    "datasets.train.io_backend": {"type": "disk"},
    "network_g.inp_channels": 3, "network_g.out_channels": 3, "network_g.dim": 48, "network_g.num_blocks": [4, 6, 6, 8],
    "network_g.heads": [1, 2, 4, 8], "network_g.ffn_expansion_factor": 2.66, "network_g.bias": False,
    "network_g.LayerNorm_type": "WithBias", "network_g.mefc": True,
    "path.pretrain_network_g": None, "path.strict_load_g": True, "path.resume_state": None, "path.param_key": "params",
    "train.warmup_iter": -1, "train.use_grad_clip": False, "train.ema_decay": 0.0, "train.cuda_graphs": True,
    "train.mixing_augs": {"mixup": False}, "train.optim_g.weight_decay": 0.0,
    "train.pixel_opt.loss_weight": 1.0, "train.pixel_opt.reduction": "mean",
    "logger.print_freq": 100, "logger.save_checkpoint_freq": 5000, "logger.use_tb_logger": False,
    "dist_params.backend": "nccl", "dist_params.port": 29500,
}

GRAD_CLIP_MAX_NORM = 0.01  # the original's clip_grad_norm_(..., 0.01)


def _err(path: str, message: str) -> OptionsError:
    return OptionsError(f"options: {path}: {message}" if path else f"options: {message}")


def _closest(key: str, known) -> str:
    match = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.5)
    if match:
        return f" (did you mean '{match[0]}'?)"
    return f" (known keys here: {', '.join(sorted(map(str, known)))})"


def _all_paths(schema: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k, v in schema.items():
        p = f"{prefix}.{k}" if prefix else k
        out.append(p)
        if isinstance(v, Mapping):
            out.extend(_all_paths(v, p))
    return out


# --------------------------------------------------------------------------------------------
# Reading and overriding
# --------------------------------------------------------------------------------------------


def _yaml():
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - pyyaml is a dependency
        raise OptionsError("reading options needs PyYAML (pip install pyyaml)") from exc
    return yaml


def _plain(obj):
    """YAML's result with dict keys as strings (``1e3: x`` would otherwise give a float key)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def load_options(path: str | os.PathLike) -> dict:
    """The options file at ``path`` as a dict (no validation)."""
    yaml = _yaml()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise OptionsError(f"options file not found: {path}")
    try:
        with open(path) as fh:
            opt = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())
        raise OptionsError(f"{path}: not valid YAML: {first}") from exc
    if not isinstance(opt, Mapping):
        raise OptionsError(f"{path}: expected a mapping of options at the top level, got {type(opt).__name__}")
    return _plain(opt)


def _schema_at(path: list[str]):
    node: Any = SCHEMA
    for i, key in enumerate(path):
        if not isinstance(node, Mapping):
            raise _err(".".join(path[:i]), f"is a value, not a section: cannot set '{'.'.join(path)}'")
        if key in node:
            node = node[key]
        elif "*" in node:
            node = node["*"]
        else:
            raise _err(".".join(path[: i + 1]), "unknown key" + _closest(key, node))
    return node


def apply_overrides(opt: dict, overrides: list[str]) -> dict:
    """``KEY.PATH=VALUE`` assignments (VALUE read as YAML: ``3``, ``1.0e-4``, ``true``, ``[1, 2]``, ``~``),
    applied to a copy of ``opt``. Unknown keys are errors (with the closest known key)."""
    opt = copy.deepcopy(opt)
    yaml = _yaml()
    for item in overrides:
        if "=" not in item:
            raise OptionsError(f"--set {item!r}: expected KEY.PATH=VALUE")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not key.strip() or any(not p for p in parts):
            raise OptionsError(f"--set {item!r}: empty key")
        _schema_at(parts)
        try:
            value = _plain(yaml.safe_load(text)) if text.strip() else None
        except yaml.YAMLError as exc:
            raise OptionsError(f"--set {item!r}: value is not YAML ({' '.join(str(exc).split())})") from exc
        node = opt
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            elif not isinstance(nxt, dict):
                raise OptionsError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node = nxt
        node[parts[-1]] = value
    return opt


def dump_options(opt: Mapping) -> str:
    return _yaml().safe_dump(_plain(dict(opt)), sort_keys=False, default_flow_style=None)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _number_hint(value) -> str:
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return " (YAML 1.1 reads a number like 3e-4 as a string: write 3.0e-4 or !!float 3e-4)"
    return ""


def _check_leaf(path: str, kind: str, value):
    nullable = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None:
        if nullable:
            return None
        raise _err(path, f"must not be empty (~), expected {kind.replace('_', ' of ')}")
    if kind == "str":
        if not isinstance(value, str):
            raise _err(path, f"expected a string, got {value!r}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise _err(path, f"expected true or false, got {value!r}")
        return value
    if kind == "int":
        # YAML gives `!!float 1e3` as 1000.0: integral floats are accepted where the original takes them
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and (not math.isfinite(value) or value != int(value))):
            raise _err(path, f"expected an integer, got {value!r}" + _number_hint(value))
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _err(path, f"expected a number, got {value!r}" + _number_hint(value))
        return float(value)
    if kind in ("int_list", "float_list"):
        if not isinstance(value, list) or not value:
            raise _err(path, f"expected a non-empty list, got {value!r}")
        return [_check_leaf(f"{path}[{i}]", kind[:-5], v) for i, v in enumerate(value)]
    raise AssertionError(kind)


def _check_tree(schema: Mapping, opt, path: str) -> dict:
    if not isinstance(opt, Mapping):
        raise _err(path, f"expected a section (a mapping), got {opt!r}")
    out = {}
    for key, value in opt.items():
        p = f"{path}.{key}" if path else key
        if key in schema:
            spec = schema[key]
        elif "*" in schema:
            spec = schema["*"]
        else:
            raise _err(p, "unknown key" + _closest(key, schema))
        if isinstance(spec, Mapping):
            # `val: ~` means no validation, as in the original (`opt.get('val') is not None`)
            out[key] = None if value is None else _check_tree(spec, value, p)
        else:
            out[key] = _check_leaf(p, spec, value)
    return out


def _get(opt: Mapping, dotted: str, default=None):
    node: Any = opt
    for p in dotted.split("."):
        if not isinstance(node, Mapping) or p not in node:
            return default
        node = node[p]
    return node


def _setdefault(opt: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = opt
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        node = node[p]
    if parts[-1] not in node or (node[parts[-1]] is None and isinstance(value, dict)):
        node[parts[-1]] = copy.deepcopy(value)


def _require(opt: Mapping, dotted: str):
    value = _get(opt, dotted)
    if value is None:
        raise _err(dotted, "required but not given")
    return value


def _positive(opt, dotted, minimum=1):
    value = _get(opt, dotted)
    if value is not None and value < minimum:
        raise _err(dotted, f"must be at least {minimum}, got {value}")


def validate(raw: Mapping) -> dict:
    """Check every key and value (types, ranges, consistency); returns the options with the
    original's defaults filled in. Raises :class:`OptionsError` at the first problem. Reads no
    file: folders and images are checked by :func:`drsformer_fast.training.data.check_dataset`."""
    opt = _check_tree(SCHEMA, raw, "")
    for dotted, value in DEFAULTS.items():
        _setdefault(opt, dotted, value)
    for dotted in ("name", "datasets.train", "network_g", "train.total_iter", "train.optim_g", "train.scheduler",
                   "train.pixel_opt", "datasets.train.dataroot_gt", "datasets.train.dataroot_lq",
                   "datasets.train.batch_size_per_gpu", "datasets.train.gt_size"):
        _require(opt, dotted)
    name = opt["name"]
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise _err("name", f"must be a plain folder name (experiments/<name>/), got {name!r}")
    if opt["model_type"] != "ImageCleanModel":
        raise _err("model_type", f"only ImageCleanModel (the original's DRSformer training) is supported, "
                                 f"got {opt['model_type']!r}")
    if opt["scale"] != 1:
        raise _err("scale", f"deraining trains at scale 1, got {opt['scale']}")
    _positive(opt, "num_gpu", 0)

    t = opt["datasets"]["train"]
    for phase, ds in list(opt["datasets"].items()):
        if ds is None:
            del opt["datasets"][phase]
            continue
        dtype = ds.get("type", "Dataset_PairedImage")
        if dtype != "Dataset_PairedImage":
            raise _err(f"datasets.{phase}.type", f"only Dataset_PairedImage is supported, got {dtype!r}")
        backend = (ds.get("io_backend") or {}).get("type", "disk")
        if backend != "disk":
            raise _err(f"datasets.{phase}.io_backend.type", f"only 'disk' is supported, got {backend!r}")
        tmpl = ds.get("filename_tmpl", "{}")
        try:
            tmpl.format("x")
        except (IndexError, KeyError, ValueError) as exc:
            raise _err(f"datasets.{phase}.filename_tmpl", f"not a format template with one {{}}: {tmpl!r}") from exc
    if opt["datasets"].get("val") is not None:
        _require(opt, "datasets.val.dataroot_gt")
        _require(opt, "datasets.val.dataroot_lq")
    for key in ("batch_size_per_gpu", "gt_size", "dataset_enlarge_ratio"):
        _positive(opt, f"datasets.train.{key}")
    _positive(opt, "datasets.train.num_worker_per_gpu", 0)
    if t["prefetch_mode"] not in (None, "cpu", "cuda"):
        raise _err("datasets.train.prefetch_mode", f"must be ~, cpu or cuda, got {t['prefetch_mode']!r}")
    # progressive learning: defaults as the original loop reads them (one phase: the whole run)
    t.setdefault("iters", [opt["train"]["total_iter"]])
    t.setdefault("mini_batch_sizes", [t["batch_size_per_gpu"]])
    t.setdefault("gt_sizes", [t["gt_size"]])
    n = len(t["iters"])
    for key in ("mini_batch_sizes", "gt_sizes"):
        if len(t[key]) != n:
            raise _err(f"datasets.train.{key}", f"has {len(t[key])} entries but iters has {n}")
    for i, (it, mb, gs) in enumerate(zip(t["iters"], t["mini_batch_sizes"], t["gt_sizes"])):
        if it < 1:
            raise _err(f"datasets.train.iters[{i}]", f"must be at least 1, got {it}")
        if not 1 <= mb <= t["batch_size_per_gpu"]:
            raise _err(f"datasets.train.mini_batch_sizes[{i}]",
                       f"must be between 1 and batch_size_per_gpu ({t['batch_size_per_gpu']}), got {mb}")
        if not 1 <= gs <= t["gt_size"]:
            raise _err(f"datasets.train.gt_sizes[{i}]", f"must be between 1 and gt_size ({t['gt_size']}), got {gs}")

    net = opt["network_g"]
    if net.get("type", "DRSformer") != "DRSformer":
        raise _err("network_g.type", f"only DRSformer is supported, got {net.get('type')!r}")
    net.setdefault("type", "DRSformer")
    if net["LayerNorm_type"] not in ("WithBias", "BiasFree"):
        raise _err("network_g.LayerNorm_type", f"must be WithBias or BiasFree, got {net['LayerNorm_type']!r}")
    for key in ("num_blocks", "heads"):
        if len(net[key]) != 4:
            raise _err(f"network_g.{key}", f"needs 4 entries (one per level), got {net[key]}")
    for key in ("inp_channels", "out_channels", "dim"):
        _positive(opt, f"network_g.{key}")
    for i, v in enumerate(net["num_blocks"]):
        if v < 1:
            raise _err(f"network_g.num_blocks[{i}]", f"must be at least 1, got {v}")
    dim = net["dim"]
    for i, (width, h) in enumerate(zip((dim, 2 * dim, 4 * dim, 8 * dim), net["heads"])):
        if h < 1 or width % h or (i == 0 and (2 * dim) % h):
            raise _err(f"network_g.heads[{i}]", f"{h} heads do not divide the {width} channels of level {i + 1}")
    if net["ffn_expansion_factor"] <= 0:
        raise _err("network_g.ffn_expansion_factor", f"must be positive, got {net['ffn_expansion_factor']}")
    if net["inp_channels"] != 3 or net["out_channels"] != 3:
        raise _err("network_g.inp_channels" if net["inp_channels"] != 3 else "network_g.out_channels",
                   "training reads RGB images: inp_channels and out_channels must be 3")

    tr = opt["train"]
    _positive(opt, "train.total_iter")
    if tr["warmup_iter"] < -1:
        raise _err("train.warmup_iter", f"must be -1 (no warm-up) or a number of iterations, got {tr['warmup_iter']}")
    if not 0.0 <= tr["ema_decay"] < 1.0:
        raise _err("train.ema_decay", f"must be in [0, 1), got {tr['ema_decay']}")
    o = tr["optim_g"]
    if o.get("type") not in ("Adam", "AdamW"):
        raise _err("train.optim_g.type", f"must be Adam or AdamW (the original's choices), got {o.get('type')!r}")
    if o.get("lr") is None:
        raise _err("train.optim_g.lr", "required but not given")
    if o["lr"] <= 0:
        raise _err("train.optim_g.lr", f"must be positive, got {o['lr']}")
    if "betas" in o and (len(o["betas"]) != 2 or not all(0 <= b < 1 for b in o["betas"])):
        raise _err("train.optim_g.betas", f"needs two values in [0, 1), got {o['betas']}")
    p = tr["pixel_opt"]
    if p.get("type") != "L1Loss":
        raise _err("train.pixel_opt.type", f"only L1Loss (the original's deraining loss) is supported, "
                                           f"got {p.get('type')!r}")
    if p["reduction"] not in ("mean", "sum"):
        raise _err("train.pixel_opt.reduction", f"must be mean or sum, got {p['reduction']!r}")
    m = tr["mixing_augs"]
    m.setdefault("mixup", False)
    m.setdefault("mixup_beta", 1.2)
    m.setdefault("use_identity", False)
    if m["mixup_beta"] <= 0:
        raise _err("train.mixing_augs.mixup_beta", f"must be positive, got {m['mixup_beta']}")
    _validate_scheduler(opt)

    if opt.get("val") is None:
        opt.pop("val", None)
    else:
        v = opt["val"]
        v.setdefault("val_freq", None)
        v.setdefault("window_size", 0)
        v.setdefault("use_image", True)
        v.setdefault("save_img", False)
        v.setdefault("protocol", "basicsr")
        if v["val_freq"] is None:
            raise _err("val.val_freq", "required when val is given")
        _positive(opt, "val.val_freq")
        _positive(opt, "val.window_size", 0)
        from ..images.metrics import PROTOCOLS

        if v["protocol"] not in PROTOCOLS:
            raise _err("val.protocol", f"choose one of {', '.join(PROTOCOLS)} (basicsr: the original's "
                                       f"validation), got {v['protocol']!r}")
        if v["protocol"] != "basicsr" and not v["use_image"]:
            raise _err("val.use_image", f"the MATLAB protocol {v['protocol']} scores 8-bit images: "
                                        "use_image must be true")
        if opt["datasets"].get("val") is None:
            raise _err("datasets.val", "required when val is given (the validation images)")
        for mname, mopt in (v.get("metrics") or {}).items():
            if mopt.get("type") not in ("calculate_psnr", "calculate_ssim"):
                raise _err(f"val.metrics.{mname}.type", f"must be calculate_psnr or calculate_ssim, "
                                                        f"got {mopt.get('type')!r}")
            mopt.setdefault("crop_border", 0)
            mopt.setdefault("test_y_channel", False)
            _positive(opt, f"val.metrics.{mname}.crop_border", 0)
            if v["protocol"] != "basicsr" and mopt["crop_border"]:
                raise _err(f"val.metrics.{mname}.crop_border", f"the MATLAB protocol {v['protocol']} scores the "
                                                               "whole image: crop_border must be 0")
    _positive(opt, "logger.print_freq")
    _positive(opt, "logger.save_checkpoint_freq")
    if opt["dist_params"]["backend"] not in ("nccl", "gloo"):
        raise _err("dist_params.backend", f"must be nccl or gloo, got {opt['dist_params']['backend']!r}")
    return opt


def _validate_scheduler(opt: dict) -> None:
    s = opt["train"]["scheduler"]
    stype = s.get("type")
    if stype not in SCHEDULERS:
        raise _err("train.scheduler.type", f"unknown scheduler {stype!r}" + _closest(stype, SCHEDULERS))
    allowed = SCHEDULERS[stype]
    for key in s:
        if key != "type" and key not in allowed:
            where = f"train.scheduler.{key}"
            raise _err(where, f"not a keyword of {stype}" + (_closest(key, allowed) if allowed else
                                                               " (it takes none: total_iter sets it)"))
    for key, default in allowed.items():
        if key not in s:
            if default == "REQUIRED":
                raise _err(f"train.scheduler.{key}", f"required by {stype}")
            s[key] = copy.deepcopy(default)
    total = opt["train"]["total_iter"]
    if stype == "CosineAnnealingRestartCyclicLR" or stype == "CosineAnnealingRestartLR":
        periods = s["periods"]
        if any(p < 1 for p in periods):
            raise _err("train.scheduler.periods", f"every period must be at least 1, got {periods}")
        if len(s["restart_weights"]) != len(periods):
            raise _err("train.scheduler.restart_weights",
                       f"has {len(s['restart_weights'])} entries but periods has {len(periods)}")
        if stype == "CosineAnnealingRestartCyclicLR" and len(s["eta_mins"]) != len(periods):
            raise _err("train.scheduler.eta_mins", f"has {len(s['eta_mins'])} entries but periods has {len(periods)}")
        # the scheduler is at step i - 1 during iteration i: the periods must reach total_iter - 1
        if sum(periods) < total - 1:
            raise _err("train.scheduler.periods", f"cover {sum(periods)} iterations, fewer than total_iter - 1 "
                                                  f"({total - 1}): the original fails past its last period")
    if stype in ("MultiStepRestartLR", "MultiStepLR") and len(s["restarts"]) != len(s["restart_weights"]):
        raise _err("train.scheduler.restart_weights", "restarts and restart_weights must have the same length")
    if stype == "TrueCosineAnnealingLR" and s["T_max"] < 1:
        raise _err("train.scheduler.T_max", f"must be at least 1, got {s['T_max']}")
    if stype == "VibrateLR" and total < 160:
        raise _err("train.total_iter", "VibrateLR needs total_iter >= 160 (its period is total_iter // 80 >= 2)")


def known_keys() -> list[str]:
    """Every dotted key of the schema (``*`` stands for a metric's name)."""
    return _all_paths(SCHEMA)
