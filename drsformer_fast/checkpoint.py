"""Loading and saving DRSformer checkpoints, with the configuration read off the weights.

Checkpoints of the original code (a BasicSR code base) are ``torch.save`` d dicts holding the state
dict under ``'params'`` (and, for EMA runs, ``'params_ema'``). :func:`load_checkpoint` accepts those,
bare state dicts, and state dicts saved from a ``DistributedDataParallel`` wrapper (``module.``
prefixes). It infers every constructor keyword from the keys and shapes (:func:`infer_config`),
builds the model, and loads it strictly: anything that does not fit raises one
:class:`CheckpointError` naming every missing key, unexpected key and shape conflict. Nothing is
ever partially loaded.

Which model class is built: with ``fast=True`` the fused model ``drsformer_fast.model.DRSformer``
when that module exists, else the plain-PyTorch reference :class:`drsformer_fast.reference.DRSformer`
(see :func:`_model_class`). Both take the same constructor keywords and have identical state-dict
keys, so the same checkpoint loads into either.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from . import reference

__all__ = ["CheckpointError", "infer_config", "load_checkpoint", "save_checkpoint", "extract_state_dict"]

#: the value :func:`infer_config` picks whenever it is consistent with the weights (the upstream default)
DEFAULT_FFN_EXPANSION_FACTOR = 2.66

_ENCODER_LEVELS = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
# decoder level -> (the num_blocks / heads index the original builds it from, the encoder level sharing it)
_DECODER_LEVELS = {
    "decoder_level1": (0, "encoder_level1"),
    "decoder_level2": (1, "encoder_level2"),
    "decoder_level3": (2, "encoder_level3"),
}
_LIST_LIMIT = 8  # entries shown per list in error messages (the counts are always complete)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as a DRSformer; the message names everything wrong."""


def _fmt_list(items: list[str], limit: int = _LIST_LIMIT) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# --------------------------------------------------------------------------------------------
# From a file or dict to a plain state dict
# --------------------------------------------------------------------------------------------


def _is_state_dict(d: Mapping) -> bool:
    return len(d) > 0 and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def _strip_module_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop ``module.`` prefixes (DistributedDataParallel / DataParallel), when every key has one."""
    sd = dict(sd)
    while sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def extract_state_dict(checkpoint: Mapping, *, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: ``checkpoint['params']`` (``'params_ema'`` with
    ``use_ema``) of the BasicSR layout, or the checkpoint itself if it is a bare state dict.
    ``module.`` prefixes are removed."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"not a DRSformer checkpoint: expected a dict, got {type(checkpoint).__name__}")
    key = "params_ema" if use_ema else "params"
    if key in checkpoint:
        sd = checkpoint[key]
        if not isinstance(sd, Mapping) or not _is_state_dict(sd):
            raise CheckpointError(f"checkpoint[{key!r}] is not a state dict (a non-empty dict of named tensors)")
        return _strip_module_prefix(sd)
    if use_ema:
        present = "'params'" if "params" in checkpoint else "no 'params' either"
        if _is_state_dict(checkpoint):
            raise CheckpointError("use_ema=True but this is a bare state dict, which has no 'params_ema' (EMA) weights")
        raise CheckpointError(f"use_ema=True but the checkpoint has no 'params_ema' (EMA) weights; it has {present}"
                              f" (top-level keys: {_fmt_list(sorted(map(str, checkpoint)))})")
    if "params_ema" in checkpoint:
        raise CheckpointError("the checkpoint has no 'params' but has 'params_ema' (EMA weights): "
                              "load those with use_ema=True (--use-ema on the command line)")
    if _is_state_dict(checkpoint):
        return _strip_module_prefix(checkpoint)
    raise CheckpointError(
        "not a DRSformer checkpoint: expected a dict with 'params' (BasicSR layout) or a state dict of tensors; "
        f"top-level keys: {_fmt_list(sorted(map(str, checkpoint)))}"
    )


def _load_file(path: str | os.PathLike, map_location: Any) -> Any:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types here (UnpicklingError, RuntimeError, EOFError, ...)
        reason = _not_a_torch_file(path)
        if reason is not None:  # torch's message (often its weights_only advice) would mislead here
            raise CheckpointError(f"{path} is not a PyTorch checkpoint ({reason}; torch.save writes a zip "
                                  f"archive)") from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path} with torch.load(weights_only=True): {first}") from exc


def _not_a_torch_file(path: str) -> str | None:
    """What the file at ``path`` is when its first bytes show that ``torch.save`` did not write it
    (a zip archive, or a pickle or tar archive in the legacy formats); None when it could have."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80") or head[257:262] == b"ustar":
        return None
    if not head:
        return "the file is empty"
    text = head.decode("utf-8", errors="replace")
    if "\ufffd" not in text[:-3] and all(c.isprintable() or c.isspace() for c in text):
        first = text.strip().splitlines()[0] if text.strip() else ""
        return f"it is text: {first[:40]!r}" + ("..." if len(first) > 40 else "")
    return f"it begins with the bytes {head[:12]!r}"


# --------------------------------------------------------------------------------------------
# Configuration inference
# --------------------------------------------------------------------------------------------


def _block_indices(sd: Mapping[str, torch.Tensor], level: str) -> list[int]:
    pat = re.compile(rf"^{re.escape(level)}\.(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pat.match(k))})


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...] | None:
    t = sd.get(key)
    return None if t is None else tuple(t.shape)


def _per_block(sd, level: str, blocks: list[int], suffix: str, dim: int, what: str, problems: list[str]) -> int | None:
    """The value ``sd[f'{level}.{i}.{suffix}'].shape[dim]`` shared by every block of a level."""
    values = {}
    for i in blocks:
        s = _shape(sd, f"{level}.{i}.{suffix}")
        if s is not None and len(s) > dim:
            values.setdefault(s[dim], []).append(i)
    if not values:
        if blocks:
            problems.append(f"cannot tell the {what} of {level}: no {level}.<i>.{suffix}")
        return None
    if len(values) > 1:
        detail = "; ".join(f"{v} in blocks {b}" for v, b in sorted(values.items()))
        problems.append(f"the blocks of {level} disagree on the {what}: {detail}")
        return None
    return next(iter(values))


def _ffn_factor(level_widths: list[tuple[str, int, int]], problems: list[str]) -> float | None:
    """A factor ``f`` with ``int(d * f) == h`` for every (level, d, h); 2.66 when it fits, else the
    shortest decimal that does (any such ``f`` builds the identical model)."""
    if not level_widths:
        return DEFAULT_FFN_EXPANSION_FACTOR

    def fits(f: float) -> bool:
        return all(int(d * f) == h for _, d, h in level_widths)

    if fits(DEFAULT_FFN_EXPANSION_FACTOR):
        return DEFAULT_FFN_EXPANSION_FACTOR
    lo = max(h / d for _, d, h in level_widths)
    hi = min((h + 1) / d for _, d, h in level_widths)
    for digits in range(0, 9):
        scale = 10**digits
        base = int(lo * scale)
        for f in (base / scale, (base + 1) / scale, (base + 2) / scale):
            if lo - 1e-12 <= f < hi and fits(f):
                return f
    detail = ", ".join(f"{name}: {d} -> {h}" for name, d, h in level_widths)
    problems.append(f"no ffn_expansion_factor f gives int(width * f) == hidden for every level ({detail})")
    return None


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The constructor keywords of the DRSformer that produced ``state_dict`` (``module.`` prefixes
    allowed): ``inp_channels, out_channels, dim, num_blocks, heads, ffn_expansion_factor, bias,
    LayerNorm_type, mefc``, such that ``DRSformer(**config)`` has exactly these keys and shapes
    when the checkpoint is consistent.

    Read off: MEFC from ``encoder_level0.*``; ``dim`` and ``inp_channels`` from
    ``patch_embed.proj.weight`` [dim, inp, 3, 3]; ``out_channels`` from ``output.weight``; blocks per
    level by counting ``encoder_level1.<i>.`` ... ``latent.<i>.`` (decoder levels 3, 2, 1 must have
    as many as encoder levels 3, 2, 1, as the original builds them from the same ``num_blocks``
    entry); heads from ``attn.temperature`` [heads, 1, 1] (decoders must agree likewise); ``bias``
    from ``attn.qkv.bias``; ``LayerNorm_type`` 'WithBias' when ``norm1.body.bias`` exists, else
    'BiasFree'; ``ffn_expansion_factor`` from ``ffn.project_in.weight`` [2h, d]: 2.66 when
    ``int(d * 2.66) == h`` at every level, else the shortest decimal ``f`` with ``int(d * f) == h``
    at every level.

    Raises :class:`CheckpointError` listing every inconsistency found.
    """
    sd = _strip_module_prefix(state_dict)
    problems: list[str] = []

    pe = _shape(sd, "patch_embed.proj.weight")
    if pe is None or len(pe) != 4:
        raise CheckpointError(
            "not a DRSformer state dict: no 4-d 'patch_embed.proj.weight'"
            + (f" (first keys: {_fmt_list(list(sd), 5)})" if sd else " (it is empty)")
        )
    dim, inp_channels = pe[0], pe[1]
    out = _shape(sd, "output.weight")
    if out is None or len(out) != 4:
        problems.append("no 4-d 'output.weight' (the final 3x3 convolution)")
        out_channels = None
    else:
        out_channels = out[0]
    mefc = any(k.startswith("encoder_level0.") for k in sd)

    blocks = {level: _block_indices(sd, level) for level in (*_ENCODER_LEVELS, *_DECODER_LEVELS)}
    num_blocks = [(blocks[level][-1] + 1 if blocks[level] else 0) for level in _ENCODER_LEVELS]
    for dec, (i, enc) in _DECODER_LEVELS.items():
        n_dec = blocks[dec][-1] + 1 if blocks[dec] else 0
        if n_dec != num_blocks[i]:
            problems.append(f"{dec} has {n_dec} blocks but {enc} has {num_blocks[i]} "
                            f"(the original builds both from num_blocks[{i}])")

    heads = [_per_block(sd, level, blocks[level], "attn.temperature", 0, "number of heads", problems) or 1
             for level in _ENCODER_LEVELS]
    for dec, (i, enc) in _DECODER_LEVELS.items():
        h_dec = _per_block(sd, dec, blocks[dec], "attn.temperature", 0, "number of heads", problems)
        if h_dec is not None and blocks[enc] and h_dec != heads[i]:
            problems.append(f"{dec} has {h_dec} heads but {enc} has {heads[i]} "
                            f"(the original builds both from heads[{i}])")

    widths = {"encoder_level1": dim, "encoder_level2": 2 * dim, "encoder_level3": 4 * dim, "latent": 8 * dim,
              "decoder_level1": 2 * dim, "decoder_level2": 2 * dim, "decoder_level3": 4 * dim}
    level_widths = []
    for level, d in widths.items():
        h2 = _per_block(sd, level, blocks[level], "ffn.project_in.weight", 0, "feed-forward width", problems)
        if h2 is not None:
            if h2 % 2:
                problems.append(f"{level}: ffn.project_in.weight has {h2} output channels, expected an even number")
            else:
                level_widths.append((level, d, h2 // 2))
    ffn = _ffn_factor(level_widths, problems)

    bias = any(k.endswith(".attn.qkv.bias") for k in sd) or (not any(blocks.values()) and "output.bias" in sd)
    layer_norm = "WithBias" if any(k.endswith(".norm1.body.bias") for k in sd) else "BiasFree"

    if problems:
        raise CheckpointError("inconsistent DRSformer checkpoint: " + "; ".join(problems))
    return {
        "inp_channels": inp_channels,
        "out_channels": out_channels,
        "dim": dim,
        "num_blocks": num_blocks,
        "heads": heads,
        "ffn_expansion_factor": ffn,
        "bias": bias,
        "LayerNorm_type": layer_norm,
        "mefc": mefc,
    }


# --------------------------------------------------------------------------------------------
# Building and loading
# --------------------------------------------------------------------------------------------


def _model_class(fast: bool) -> type[nn.Module]:
    """The class :func:`load_checkpoint` builds: ``drsformer_fast.model.DRSformer`` (fused kernels)
    with ``fast=True``, :class:`drsformer_fast.reference.DRSformer` (the original arithmetic)
    otherwise. Both take the same constructor keywords and have the same state-dict keys. The fast
    model runs plain PyTorch where Triton cannot run (see ``drsformer_fast.kernel_path``)."""
    if not fast:
        return reference.DRSformer
    from .model import DRSformer

    return DRSformer


def _compare(model_sd: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]):
    missing = [k for k in model_sd if k not in sd]
    unexpected = [k for k in sd if k not in model_sd]
    conflicts = [
        f"{k} (checkpoint {list(sd[k].shape)}, model {list(v.shape)})"
        for k, v in model_sd.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    return missing, unexpected, conflicts


def _mismatch_message(config: dict, missing: list[str], unexpected: list[str], conflicts: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{_plural(len(missing), 'missing key')}: {_fmt_list(missing)}")
    if unexpected:
        parts.append(f"{_plural(len(unexpected), 'unexpected key')}: {_fmt_list(unexpected)}")
    if conflicts:
        parts.append(f"{_plural(len(conflicts), 'shape conflict')}: {_fmt_list(conflicts)}")
    cfg = ", ".join(f"{k}={v!r}" for k, v in config.items())
    return f"checkpoint does not match the DRSformer it describes ({cfg}): " + "; ".join(parts)


def load_checkpoint(
    source: str | os.PathLike | Mapping,
    *,
    map_location: Any = "cpu",
    use_ema: bool = False,
    strict: bool = True,
    fast: bool = True,
) -> nn.Module:
    """Build the DRSformer a checkpoint describes and load its weights; returns it in eval mode.

    source: a path to a ``torch.save`` d checkpoint (read with ``weights_only=True``) or an already
        loaded dict. Accepted layouts: ``{'params': state_dict, ...}`` (BasicSR, the original's),
        ``{'params_ema': ...}`` with ``use_ema=True``, or a bare state dict; ``module.`` key
        prefixes (DistributedDataParallel) are removed.
    map_location: passed to ``torch.load``; when it is a device (``str`` or ``torch.device``) the
        returned model is moved there too.
    use_ema: load ``'params_ema'`` (an error if absent) instead of ``'params'``.
    strict: with ``False``, checkpoint entries the model does not have are ignored (with a warning).
        Missing keys and shape conflicts are errors either way: every parameter of the returned
        model comes from the checkpoint, never from initialisation.
    fast: build the fused model when available (see :func:`_model_class`), else the reference.

    The returned model has ``model.config``: the inferred constructor keywords (see
    :func:`infer_config`), so ``type(model)(**model.config)`` builds an identical model. Its
    parameters are float32 whatever the checkpoint's dtype. Raises :class:`CheckpointError` (one
    error naming every missing key, unexpected key and shape conflict), or ``FileNotFoundError``.
    """
    if isinstance(source, (str, os.PathLike)):
        checkpoint = _load_file(source, map_location)
    elif isinstance(source, Mapping):
        checkpoint = source
    else:
        raise TypeError(f"source must be a path or a dict, got {type(source).__name__}")
    sd = extract_state_dict(checkpoint, use_ema=use_ema)
    config = infer_config(sd)
    cls = _model_class(fast)
    try:
        model = cls(**config)
    except ValueError as exc:
        raise CheckpointError(f"the configuration read from the checkpoint is invalid ({exc})") from exc

    model_sd = model.state_dict()
    missing, unexpected, conflicts = _compare(model_sd, sd)
    if not strict and unexpected and not (missing or conflicts):
        warnings.warn(f"ignoring {_plural(len(unexpected), 'unexpected checkpoint entry')}: {_fmt_list(unexpected)}",
                      stacklevel=2)
        sd = {k: v for k, v in sd.items() if k in model_sd}
        unexpected = []
    if missing or unexpected or conflicts:
        raise CheckpointError(_mismatch_message(config, missing, unexpected, conflicts))
    non_float = [k for k, v in sd.items() if not v.is_floating_point()]
    if non_float:
        raise CheckpointError(f"{_plural(len(non_float), 'entry')} not floating point: {_fmt_list(non_float)}")
    model.load_state_dict(sd, strict=True)
    model.config = dict(config)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()


def save_checkpoint(
    model: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike, *, ema: bool = False
) -> None:
    """Save in the original's (BasicSR) layout: ``{'params': state_dict}``, or
    ``{'params_ema': state_dict}`` with ``ema=True``. Tensors are stored on the CPU; a
    ``DistributedDataParallel`` / ``DataParallel`` wrapper is unwrapped (no ``module.`` prefixes).
    The file is written atomically (a temporary file renamed into place)."""
    if isinstance(model, nn.Module):
        while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        sd = model.state_dict()
    elif isinstance(model, Mapping):
        sd = model
    else:
        raise TypeError(f"expected an nn.Module or a state dict, got {type(model).__name__}")
    sd = {k: v.detach().cpu() for k, v in _strip_module_prefix(sd).items()}
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=directory)
    os.close(fd)
    try:
        torch.save({"params_ema" if ema else "params": sd}, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
