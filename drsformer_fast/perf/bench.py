"""``drsformer-fast bench``: the original DRSformer against the fused one.

With an NVIDIA GPU (:func:`run_gpu`): whole-model inference (batch 1, 256x256 and 512x512) and a
training step (forward, L1 loss, backward, AdamW step; 4x3x128x128), for the original in eager
mode, the original under ``torch.compile``, the fast model, the fast model under ``torch.compile``
and the fast model through CUDA graphs (``graphs.graphed``; inference only), in fp32 and bf16
(``torch.autocast``); on request also the original through CUDA graphs and either model under
``torch.compile(mode="reduce-overhead", fullgraph=True)`` (Inductor's own CUDA graphs). Both models
hold the same random weights (the reference's state dict loaded into the fast one). Each
measurement: median of CUDA-event timings after warm-up (``benchmarking.cuda_time_ms``), peak
memory of one call above what was allocated before it (``benchmarking.peak_memory_bytes``: weights,
and for training the optimizer state, are not included), speed-up over the original in eager mode
at the same precision, and the largest absolute difference of the output (for training also of any
parameter gradient, first step) from the original in eager mode at the same precision and input.
Out of memory is recorded per measurement and the run goes on.

Without one (:func:`run_figures`, run by the command line in Triton's interpreter): the self-check
of every fused kernel against the reference, then figures that need no GPU, original vs fast, per
transformer-block shape (``benchmarking.block_shapes()``), per MEFC shape
(``benchmarking.mefc_shapes()``) and for the whole model: bytes saved for
backward (``memory.saved_tensor_bytes`` on fake tensors), kernel launches per forward and per
forward+backward, and bytes moved (the original's op by op, the fused kernels' compulsory bytes);
see ``accounting.py`` for the methods. These use fake tensors at the real shapes: no memory, no
compute, seconds on a laptop CPU. Timings need an NVIDIA GPU.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ..progress import Progress
from . import benchmarking

IMPLEMENTATIONS = ("original", "original-compiled", "original-graphed", "original-reduce-overhead",
                   "fast", "fast-compiled", "fast-graphed", "fast-reduce-overhead")
# the command line's default: eager and torch.compile for both models, and the fast one through CUDA
# graphs (``--no-cuda-graphs`` drops it); the rest on request (scripts/gpu_session.sh asks for them)
DEFAULT_IMPLEMENTATIONS = "original,original-compiled,fast,fast-compiled,fast-graphed"
GRAPHS_NOTE = "CUDA graphs (drsformer_fast.graphed) serve inference only: the training step runs eagerly"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODEL_VARIANTS = {"with-mefc": True, "without-mefc": False}
GPU_SCENARIOS = "infer256,infer512,train4x128"
FIGURE_SCENARIOS = "infer256,train2x128,train4x128"
BLOCKS = ("layernorm", "attention", "feedforward", "block")
TIMING_NOTE = "Timings need an NVIDIA GPU: none is in use, so this run reports device-independent figures only."


class BenchError(ValueError):
    """A bad option or setting (reported on one line by the command line)."""


# --------------------------------------------------------------------------------------------
# scenarios and options
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "inference" or "training"
    batch: int
    size: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 3, self.size, self.size)

    @property
    def training(self) -> bool:
        return self.kind == "training"


_SCENARIO_RE = re.compile(r"^(infer|train)(?:(\d+)x)?(\d+)$")


def parse_scenario(text: str) -> Scenario:
    """``infer256`` (batch 1), ``infer2x256``, ``train4x128``: kind, optional batch, square size
    (a multiple of 8, as the model's three down-samplings need)."""
    m = _SCENARIO_RE.match(text.strip())
    if not m:
        raise BenchError(f"unknown shape {text!r}: use infer<SIZE>, infer<B>x<SIZE> or train<B>x<SIZE> "
                         "(e.g. infer256, train4x128)")
    kind = "inference" if m.group(1) == "infer" else "training"
    batch, size = int(m.group(2) or 1), int(m.group(3))
    if batch < 1 or size < 8 or size % 8:
        raise BenchError(f"shape {text!r}: batch must be >= 1 and the size a positive multiple of 8")
    name = f"{m.group(1)}{'' if batch == 1 and kind == 'inference' else f'{batch}x'}{size}"
    return Scenario(name, kind, batch, size)


def _split(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise BenchError("empty list")
    return list(dict.fromkeys(items))


def parse_scenarios(text: str) -> list[Scenario]:
    return list({s.name: s for s in map(parse_scenario, _split(text))}.values())


def parse_dtypes(text: str) -> list[str]:
    items = _split(text)
    bad = [d for d in items if d not in DTYPES]
    if bad:
        raise BenchError(f"unknown dtype {bad[0]!r}: choose from {', '.join(DTYPES)}")
    return items


def parse_implementations(text: str) -> list[str]:
    items = _split(text)
    bad = [i for i in items if i not in IMPLEMENTATIONS]
    if bad:
        raise BenchError(f"unknown implementation {bad[0]!r}: choose from {', '.join(IMPLEMENTATIONS)}")
    return items


def model_config(variant: str) -> dict:
    """The default DRSformer (dim 48, blocks [4, 6, 6, 8], heads [1, 2, 4, 8]) with or without MEFC."""
    if variant not in MODEL_VARIANTS:
        raise BenchError(f"unknown model variant {variant!r}: choose from {', '.join(MODEL_VARIANTS)}")
    return {"inp_channels": 3, "out_channels": 3, "dim": 48, "num_blocks": [4, 6, 6, 8], "heads": [1, 2, 4, 8],
            "ffn_expansion_factor": 2.66, "bias": False, "LayerNorm_type": "WithBias",
            "mefc": MODEL_VARIANTS[variant]}


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------


def fast_unavailable_reason() -> str | None:
    """Why the fast model cannot be built in this build (None when it can)."""
    from .. import modules

    if not hasattr(modules, "MixedScaleFeedForward"):
        return ("the fused feed-forward (drsformer_fast.modules.MixedScaleFeedForward) is not part of this "
                "build, so the fast transformer block and model cannot be constructed")
    return None


def build_models(config: dict, seed: int = 0):
    """``(reference, fast)`` with the same random weights, on the CPU; ``fast`` is None (with
    :func:`fast_unavailable_reason`) when this build has no fast model."""
    from .. import reference

    torch.manual_seed(seed)
    ref = reference.DRSformer(**config)
    if fast_unavailable_reason() is not None:
        return ref, None
    from ..model import DRSformer

    fast = DRSformer(**config)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


# --------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------


def _git_commit() -> dict:
    """The checkout's commit; ``DRSFORMER_FAST_GIT_COMMIT`` where there is no git repository (a copy of
    the working tree on another machine: ``scripts/gpu_session.sh`` passes it on)."""
    root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return {"git_commit": commit, "git_dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": os.environ.get("DRSFORMER_FAST_GIT_COMMIT") or None, "git_dirty": None}


def environment(device: torch.device | None = None) -> dict:
    """Device, date and versions, for the JSON."""
    from .. import __version__

    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 (no triton on this platform)
        triton_version = None
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "drsformer_fast": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "triton_interpreter": os.environ.get("TRITON_INTERPRET") == "1",
        **_git_commit(),
    }
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device=torch.cuda.get_device_name(device), device_capability=f"{props.major}.{props.minor}",
                   device_memory_bytes=props.total_memory, cudnn=torch.backends.cudnn.version())
    else:
        env.update(device=f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    return env


def json_ready(obj):
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return str(obj)
    return obj


def write_json(result: dict, path: str) -> None:
    """Write atomically (a partial run never leaves half a file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(json_ready(result), fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def check_output_path(path: str | None, option: str) -> None:
    if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise BenchError(f"folder of {option} {path} does not exist")


# --------------------------------------------------------------------------------------------
# GPU timings
# --------------------------------------------------------------------------------------------


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def _autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def _measure(model: torch.nn.Module, impl: str, scenario: Scenario, dtype: str, device: torch.device,
             reference_values: dict | None, *, repeats: int, warmup: int, seed: int) -> dict:
    """Time one (implementation, scenario, precision). ``reference_values``: None (nothing to compare
    with), empty (this is the original in eager mode: its output, and for training its first-step
    gradients, are stored there), or the original's values, which the row's differences are taken from."""
    gen = torch.Generator().manual_seed(seed + scenario.batch * 1000 + scenario.size)
    x = torch.rand(scenario.shape, generator=gen).to(device)
    target = torch.rand(scenario.shape, generator=gen).to(device)
    run = _runner(model, impl)
    row: dict = {}
    if not scenario.training:
        model.eval()

        def step():
            with torch.no_grad(), _autocast(device, dtype):
                return run(x)

        out = step()  # first call: compiles when compiled (then warm-up as usual)
        if impl.endswith("-graphed"):
            out = step()  # the first call per shape runs eagerly; this one captures and replays
        if reference_values is not None:
            if "output" not in reference_values:
                reference_values["output"] = out.detach()
            else:
                row["max_abs_diff"] = _max_abs_diff(out, reference_values["output"])
        del out
    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.999), weight_decay=1e-4)

        def forward_backward():
            with _autocast(device, dtype):
                out = run(x)
                loss = torch.nn.functional.l1_loss(out.float(), target)
            loss.backward()
            return out

        # first step before any update: output and gradients compared with the original's
        opt.zero_grad(set_to_none=True)
        out = forward_backward()
        grads = {n: p.grad.detach() for n, p in model.named_parameters() if p.grad is not None}
        if reference_values is not None:
            if "output" not in reference_values:
                reference_values["output"], reference_values["grads"] = out.detach(), grads
            else:
                row["max_abs_diff"] = _max_abs_diff(out, reference_values["output"])
                ref_grads = reference_values["grads"]
                row["max_abs_diff_grad"] = max(
                    (_max_abs_diff(g, ref_grads[n]) for n, g in grads.items() if n in ref_grads), default=None)
        del out, grads

        def step():
            opt.zero_grad(set_to_none=True)
            forward_backward()
            opt.step()

    timing = benchmarking.cuda_time_ms(step, warmup=warmup, repeats=repeats)
    row.update(status="ok", **timing, peak_memory_bytes=benchmarking.peak_memory_bytes(step))
    return row


def _runner(model: torch.nn.Module, impl: str):
    if impl.endswith("-compiled"):
        return torch.compile(model)
    if impl.endswith("-reduce-overhead"):
        return torch.compile(model, mode="reduce-overhead", fullgraph=True)
    if impl.endswith("-graphed"):
        from ..graphs import GraphedModule

        return GraphedModule(model)
    return model


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_gpu(scenarios: list[Scenario], dtypes: list[str], implementations: list[str], *, variant: str = "with-mefc",
            repeats: int = 20, warmup: int = 5, seed: int = 0, device: torch.device | str = "cuda",
            progress: Callable[[str], None] | None = None, on_result: Callable[[dict], None] | None = None,
            config: dict | None = None) -> dict:
    """The timing run (see the module docstring). ``on_result(result)`` is called after every
    measurement with the result so far (the command line rewrites its JSON each time). With a
    ``progress`` callable (the command line's), progress over the measurements goes to stderr: a
    tqdm bar on a terminal, else a line per measurement with the ETA; without one the run is quiet."""
    device = torch.device(device)
    config = config or model_config(variant)
    quiet = progress is None
    ref, fast = build_models(config, seed)
    state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    del ref, fast
    result = {
        "mode": "gpu",
        "environment": environment(device),
        "model": {"variant": variant, "config": config,
                  "parameters": sum(v.numel() for k, v in state.items())},
        "settings": {"scenarios": [asdict(s) for s in scenarios], "dtypes": dtypes,
                     "implementations": implementations, "repeats": repeats, "warmup": warmup, "seed": seed,
                     "timing": "median of CUDA-event timings per call, warm-up (and compilation) excluded",
                     "peak_memory": "torch.cuda.max_memory_allocated during one call, above what was "
                                    "allocated before it (weights and optimizer state excluded)",
                     "max_abs_diff": "largest |output - original eager output| at the same precision and "
                                     "input; training: first step, before any update, also over gradients",
                     "training_step": "zero_grad, forward, L1 loss, backward, AdamW(lr 3e-4, betas "
                                      "(0.9, 0.999), weight decay 1e-4) step"},
        "fast_unavailable": fast_unavailable_reason(),
        "results": [],
    }
    total = len(scenarios) * len(dtypes) * len(implementations)
    # a tqdm bar on a terminal, one line per measurement with the ETA in a log
    with Progress(total, "bench", unit="measurement", quiet=quiet) as bar:
        _measure_all(scenarios, dtypes, implementations, config, state, device, result, bar, on_result,
                     repeats=repeats, warmup=warmup, seed=seed)
    return result


def _measure_all(scenarios, dtypes, implementations, config, state, device, result, bar, on_result, *, repeats,
                 warmup, seed) -> None:
    for scenario in scenarios:
        for dtype in dtypes:
            reference_values: dict = {}
            if "original" not in implementations:
                reference_values = None
            for impl in sorted(implementations, key=IMPLEMENTATIONS.index):  # the original eager first
                row = {"scenario": scenario.name, "kind": scenario.kind, "shape": list(scenario.shape),
                       "dtype": dtype, "implementation": impl}
                model = None
                try:
                    if impl.startswith("fast") and result["fast_unavailable"]:
                        row.update(status="unavailable", error=result["fast_unavailable"])
                    elif impl.endswith("-graphed") and scenario.training:
                        row.update(status="inference-only", error=GRAPHS_NOTE)
                    else:
                        model = _build(impl, config, state).to(device)
                        if impl.endswith(("-compiled", "-reduce-overhead")):
                            torch._dynamo.reset()  # a fresh compile per measurement (no cache-limit fallback)
                        refs = reference_values if (impl == "original" or reference_values) else None
                        row.update(_measure(model, impl, scenario, dtype, device, refs, repeats=repeats,
                                            warmup=warmup, seed=seed))
                except torch.cuda.OutOfMemoryError:
                    row.update(status="oom", error="out of memory")
                except Exception as exc:  # noqa: BLE001 (a failing measurement is recorded, the run goes on)
                    row.update(status="error", error=_first_line(exc))
                finally:
                    model = None
                    _free(device)
                result["results"].append(row)
                _add_speedups(result["results"])
                bar.step(_describe_row(row))
                if on_result is not None:
                    on_result(result)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _build(impl: str, config: dict, state: dict) -> torch.nn.Module:
    from .. import reference

    if impl.startswith("original"):
        model = reference.DRSformer(**config)
    else:
        from ..model import DRSformer

        model = DRSformer(**config)
    model.load_state_dict(state)
    return model


def _add_speedups(rows: list[dict]) -> None:
    base = {(r["scenario"], r["dtype"]): r["median_ms"] for r in rows
            if r["implementation"] == "original" and r.get("status") == "ok"}
    for r in rows:
        b = base.get((r["scenario"], r["dtype"]))
        if r.get("status") == "ok" and b:
            r["speedup_vs_original"] = b / r["median_ms"]


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}" if n / scale < 100 else f"{n / scale:.0f} {unit}"
    return f"{n} B"


def _describe_row(row: dict) -> str:
    head = f"{row['scenario']} {row['dtype']} {row['implementation']}"
    if row.get("status") != "ok":
        return f"{head}: {row.get('status', '?').upper()} ({row.get('error', '')})"
    diff = f", max |diff| {row['max_abs_diff']:.2e}" if row.get("max_abs_diff") is not None else ""
    return f"{head}: {row['median_ms']:.2f} ms, peak {_fmt_bytes(row['peak_memory_bytes'])}{diff}"


def format_gpu_markdown(result: dict) -> str:
    env = result["environment"]
    cfg = result["model"]["config"]
    s = result["settings"]
    lines = [
        f"### drsformer-fast bench on {env.get('device')}",
        "",
        f"{env['date']}; torch {env['torch']}, triton {env.get('triton')}, CUDA {env.get('cuda')}"
        + (f", commit {env['git_commit'][:12]}{' (dirty)' if env.get('git_dirty') else ''}"
           if env.get("git_commit") else ""),
        f"DRSformer dim {cfg['dim']}, blocks {cfg['num_blocks']}, heads {cfg['heads']}, "
        f"{'with' if cfg['mefc'] else 'without'} MEFC, random weights (same for both models). "
        f"Median of {s['repeats']} calls (CUDA events), {s['warmup']} warm-up calls excluded. "
        "Training step: forward, L1 loss, backward, AdamW step. Peak memory: above weights and optimizer "
        "state. Speed-up: over the original in eager mode at the same precision. Max abs diff: output vs "
        "the original in eager mode, same input and precision.",
        "",
        "| scenario | shape | precision | implementation | median ms | speed-up | peak memory | max abs diff |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in result["results"]:
        shape = "x".join(map(str, r["shape"]))
        if r.get("status") != "ok":
            status = {"oom": "OOM", "unavailable": "not in this build", "error": "error",
                      "inference-only": "inference only"}.get(r.get("status"), "?")
            lines.append(f"| {r['scenario']} | {shape} | {r['dtype']} | {r['implementation']} | {status} | | | |")
            continue
        speed = f"{r['speedup_vs_original']:.2f}x" if r.get("speedup_vs_original") else "n/a"
        diff = f"{r['max_abs_diff']:.1e}" if r.get("max_abs_diff") is not None else (
            "(reference)" if r["implementation"] == "original" else "n/a")
        lines.append(f"| {r['scenario']} | {shape} | {r['dtype']} | {r['implementation']} | {r['median_ms']:.2f} "
                     f"| {speed} | {_fmt_bytes(r['peak_memory_bytes'])} | {diff} |")
    errors = [r for r in result["results"] if r.get("status") in ("error", "unavailable", "inference-only")]
    if errors:
        lines += ["", "Not measured:"] + [f"* {r['scenario']} {r['dtype']} {r['implementation']}: {r['error']}"
                                          for r in errors]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# device-independent figures (no GPU)
# --------------------------------------------------------------------------------------------


def _block_modules(kind: str, dim: int, heads: int):
    """(original, fast or None) for one block kind at one width; the fast one shares the parameters."""
    from .. import modules as M
    from .. import reference as R

    ffn_factor = 2.66
    if kind == "layernorm":
        orig = R.LayerNorm(dim, "WithBias")
        return orig, M.ChannelLayerNorm.from_original(orig)
    if kind == "attention":
        orig = R.Attention(dim, heads, False)
        return orig, M.TopKSparseAttention.from_original(orig)
    have_ffn = hasattr(M, "MixedScaleFeedForward")
    if kind == "feedforward":
        orig = R.FeedForward(dim, ffn_factor, False)
        return orig, (M.MixedScaleFeedForward.from_original(orig) if have_ffn else None)
    if kind == "block":
        orig = R.TransformerBlock(dim, heads, ffn_factor, False, "WithBias")
        if not have_ffn:
            return orig, None
        fast = M.FastTransformerBlock.from_children(
            M.ChannelLayerNorm.from_original(orig.norm1), M.TopKSparseAttention.from_original(orig.attn),
            M.ChannelLayerNorm.from_original(orig.norm2), M.MixedScaleFeedForward.from_original(orig.ffn))
        return orig, fast
    raise BenchError(f"unknown block {kind!r}")


def _figures(module: torch.nn.Module, shape, *, training: bool) -> dict:
    from . import accounting
    from .memory import saved_tensor_bytes

    prof = accounting.profile(module, shape, backward=training)
    fig = {"saved_bytes": saved_tensor_bytes(module, shape) if training else None}
    summary = prof.summary()
    if not training:
        summary = {k: v for k, v in summary.items() if not k.endswith("_backward")}
    fig.update(summary)
    fused = prof.fused_parts()
    if fused["forward"] or fused["backward"]:
        fig["fused_kernels"] = fused
    return fig


def _check_fast_path() -> None:
    from .._dispatch import INTERPRETER, TRITON, kernel_path

    if kernel_path("cpu") not in (INTERPRETER, TRITON):
        raise BenchError("the device-independent figures follow the fast path's Triton launchers, which the "
                         "CPU takes only under Triton's interpreter: run `drsformer-fast bench` (it sets "
                         "TRITON_INTERPRET=1 before importing Triton), or set TRITON_INTERPRET=1 yourself")


def block_figures(shapes=None, blocks=BLOCKS, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Per transformer-block shape and block kind: original vs fast (None where this build has no
    fast module). Every block shape is a training shape here (forward and backward)."""
    _check_fast_path()
    progress = progress or (lambda line: None)
    shapes = benchmarking.block_shapes() if shapes is None else shapes
    rows = []
    for bs in shapes:
        shape = (bs.batch, bs.dim, bs.height, bs.width)
        for kind in blocks:
            torch.manual_seed(0)
            orig, fast = _block_modules(kind, bs.dim, bs.heads)
            row = {"shape": bs.id, "scenario": bs.scenario, "level": bs.level, "block": kind,
                   "input": list(shape), "heads": bs.heads, "original": _figures(orig, shape, training=True)}
            if fast is None:
                row["fast"], row["fast_unavailable"] = None, fast_unavailable_reason()
            else:
                row["fast"] = _figures(fast, shape, training=True)
            rows.append(row)
        progress(f"block figures: {bs.id}")
    return rows


def mefc_figures(shapes=None, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Per MEFC shape (``benchmarking.mefc_shapes()``): the original ``subnet`` vs ``FeatureCompensator``
    (sharing its parameters), forward and backward."""
    from .. import reference as R
    from ..modules import FeatureCompensator

    _check_fast_path()
    progress = progress or (lambda line: None)
    shapes = benchmarking.mefc_shapes() if shapes is None else shapes
    rows = []
    for ms in shapes:
        shape = (ms.batch, ms.dim, ms.height, ms.width)
        torch.manual_seed(0)
        orig = R.subnet(ms.dim)
        rows.append({"shape": ms.id, "scenario": ms.scenario, "level": ms.level, "block": "mefc",
                     "input": list(shape), "original": _figures(orig, shape, training=True),
                     "fast": _figures(FeatureCompensator.from_original(orig), shape, training=True)})
        progress(f"MEFC figures: {ms.id}")
    return rows


def model_figures(scenarios: list[Scenario], variant: str = "with-mefc",
                  progress: Callable[[str], None] | None = None, config: dict | None = None) -> list[dict]:
    """Whole-model figures per scenario (training: saved bytes and forward+backward too)."""
    _check_fast_path()
    progress = progress or (lambda line: None)
    ref, fast = build_models(config or model_config(variant))
    rows = []
    for sc in scenarios:
        row = {"scenario": sc.name, "kind": sc.kind, "input": list(sc.shape),
               "original": _figures(ref, sc.shape, training=sc.training)}
        if fast is None:
            row["fast"], row["fast_unavailable"] = None, fast_unavailable_reason()
        else:
            row["fast"] = _figures(fast, sc.shape, training=sc.training)
        rows.append(row)
        progress(f"model figures: {sc.name}")
    return rows


METHODS = {
    "saved_bytes": "bytes autograd keeps for backward in one forward (drsformer_fast.saved_tensor_bytes: "
                   "saved_tensors_hooks, each storage once, parameters excluded), on fake tensors at the real shape",
    "launches": "kernels launched per pass, counted op by op on fake tensors at the real shape: every ATen op "
                "that is not a view, an allocation or metadata is one launch (composite ops decomposed first), "
                "the fast path's custom ops run their real launchers, whose ATen ops count the same way and whose "
                "Triton launches are counted by wrapping Triton's run() (not executed: the launchers never read "
                "data back to the host, so what they launch does not depend on the data; the tests check the "
                "counts against real execution in Triton's interpreter). A cuDNN/cuBLAS call can launch more "
                "than one kernel: the ATen part is a lower bound, the same for both models",
    "bytes": "bytes moved per pass: each ATen op charged its tensor inputs and outputs once (broadcast inputs "
             "at their real size; the original's kernels, and the unfused parts of the fast model), each fused "
             "op its compulsory bytes from the byte tables of its kernel docstrings (drsformer_fast.perf.accounting: "
             "large tensors only; C x C matrices, partial sums and halo re-reads left out)",
    "training": "forward+backward: one forward, then the gradients of the input and every parameter from a "
                "ones upstream gradient (torch.autograd.grad: no accumulation into .grad, as after "
                "zero_grad(set_to_none=True)); the loss and the optimizer step are not included",
}


def run_figures(scenarios: list[Scenario], *, variant: str = "with-mefc", selfcheck: bool = True,
                blocks: bool = True, progress: Callable[[str], None] | None = None) -> dict:
    """The no-GPU report: self-check (in Triton's interpreter) and device-independent figures, fp32."""
    from . import selfcheck as sc

    quiet = progress is None
    progress = progress or (lambda line: None)
    result = {"mode": "no-gpu", "note": TIMING_NOTE, "environment": environment(),
              "model": {"variant": variant, "config": model_config(variant)},
              "dtype": "fp32", "methods": METHODS, "fast_unavailable": fast_unavailable_reason()}
    if selfcheck:
        device = torch.device("cpu")
        progress("self-check: every fused op against the reference in Triton's interpreter (a few minutes on "
                 "2 cores)")
        dtypes = [torch.float32, torch.float16]
        with Progress(sc.count_cases(dtypes), "self-check", unit="case", quiet=quiet) as bar:
            rows = sc.run(device, dtypes, progress=bar)
        result["selfcheck"] = {"rows": [{**asdict(r), "ok": r.ok} for r in rows],
                               "passed": sum(r.ok for r in rows), "total": len(rows),
                               "table": sc.format_rows(rows)}
        progress(f"self-check: {result['selfcheck']['passed']}/{len(rows)} within bounds")
    block_scenarios = {s.name for s in scenarios}
    shapes = [bs for bs in benchmarking.block_shapes() if bs.scenario in block_scenarios] if blocks else []
    result["blocks"] = block_figures(shapes, progress=progress)
    mefc = [ms for ms in benchmarking.mefc_shapes() if ms.scenario in block_scenarios] if blocks else []
    result["mefc"] = mefc_figures(mefc, progress=progress)
    result["whole_model"] = model_figures(scenarios, variant, progress=progress)
    return result


def _pair(orig, fast, fmt) -> str:
    if orig is None:
        return "—"
    if fast is None:
        return f"{fmt(orig)} → n/a"
    ratio = f" ({orig / fast:.1f}x)" if fast else ""
    return f"{fmt(orig)} → {fmt(fast)}{ratio}"


_FIGURE_COLUMNS = (("saved_bytes", _fmt_bytes), ("bytes_forward", _fmt_bytes), ("bytes_forward_backward", _fmt_bytes),
                   ("launches_forward", str), ("launches_forward_backward", str))


def _figure_cells(row: dict) -> str:
    """The five original -> fast cells of a figures row (a dash where the original has no figure,
    e.g. backward for inference)."""
    o, f = row["original"], row["fast"] or {}
    return " | ".join(_pair(o.get(key), f.get(key), fmt) for key, fmt in _FIGURE_COLUMNS)


def format_figures_markdown(result: dict) -> str:
    """Tables of the no-GPU report (markdown; also what the command line prints)."""
    cfg = result["model"]["config"]
    lines = [
        "### drsformer-fast: device-independent figures (fp32; original → fast)",
        "",
        f"_{result['note']}_",
        "",
        f"{result['environment']['date']}; torch {result['environment']['torch']}, "
        f"triton {result['environment'].get('triton')}"
        + (f", commit {result['environment']['git_commit'][:12]}" if result["environment"].get("git_commit") else ""),
        "",
    ]
    if result.get("fast_unavailable"):
        lines += [f"Fast side n/a where this build lacks it: {result['fast_unavailable']}.", ""]
    if result.get("blocks"):
        lines += [
            "Per transformer-block shape (training: forward and backward; launch and byte figures per pass):",
            "",
            "| shape | block | saved for backward | bytes fwd | bytes fwd+bwd | launches fwd | launches fwd+bwd |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in result["blocks"]:
            lines.append(f"| {r['shape']} | {r['block']} | {_figure_cells(r)} |")
        lines.append("")
    if not result.get("blocks"):
        lines += ["No per-block figures: block shapes are those of the scenarios "
                  f"{', '.join(name for name, _, _ in benchmarking.SCENARIOS)} (benchmarking.SCENARIOS), "
                  "none of which was chosen with --shapes.", ""]
    if result.get("mefc"):
        lines += [
            "MEFC compensators (original subnet → FeatureCompensator; forward and backward):",
            "",
            "| shape | saved for backward | bytes fwd | bytes fwd+bwd | launches fwd | launches fwd+bwd |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in result["mefc"]:
            lines.append(f"| {r['shape']} | {_figure_cells(r)} |")
        lines.append("")
    if result.get("whole_model"):
        lines += [
            f"Whole model (dim {cfg['dim']}, blocks {cfg['num_blocks']}, heads {cfg['heads']}, "
            f"{'with' if cfg['mefc'] else 'without'} MEFC; inference: forward only):",
            "",
            "| scenario | input | saved for backward | bytes fwd | bytes fwd+bwd | launches fwd | launches fwd+bwd |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in result["whole_model"]:
            lines.append(f"| {r['scenario']} | {'x'.join(map(str, r['input']))} | {_figure_cells(r)} |")
        lines.append("")
    lines.append("How these are measured:")
    lines += [f"* {name}: {text}." for name, text in result["methods"].items()]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# README's tables of the device-independent figures
# --------------------------------------------------------------------------------------------

README_START = "<!-- bench:figures:start (generated by scripts/readme_tables.py: do not edit) -->"
README_END = "<!-- bench:figures:end -->"
README_BLOCK_SHAPE = ("infer256", "enc1")  # (scenario, level) of README's per-block table: level 1 at 256x256
_README_MEFC_LEVELS = {"enc0": "encoder_level0", "refinement": "refinement"}
_README_RULE = "| --- | ---: | ---: | ---: | ---: | ---: |"
_README_COLUMNS = "saved for backward | bytes forward | bytes fwd+bwd | launches forward | launches fwd+bwd |"


def readme_figures(variant: str = "with-mefc", progress: Callable[[str], None] | None = None) -> dict:
    """The part of :func:`run_figures`'s result that README's tables show (no self-check, no host
    cost): the block kinds at ``README_BLOCK_SHAPE``, the MEFC shapes of its scenario, the whole
    model at ``FIGURE_SCENARIOS``."""
    scenario = README_BLOCK_SHAPE[0]
    shapes = [bs for bs in benchmarking.block_shapes() if (bs.scenario, bs.level) == README_BLOCK_SHAPE]
    return {"model": {"variant": variant, "config": model_config(variant)},
            "blocks": block_figures(shapes, progress=progress),
            "mefc": mefc_figures([ms for ms in benchmarking.mefc_shapes() if ms.scenario == scenario],
                                 progress=progress),
            "whole_model": model_figures(parse_scenarios(FIGURE_SCENARIOS), variant, progress=progress)}


def _readme_cells(row: dict) -> str:
    o, f = row["original"], row["fast"] or {}
    cells = []
    for key, fmt in _FIGURE_COLUMNS:
        if o.get(key) is None:
            cells.append("—")
        else:
            cells.append(f"{fmt(o[key])} → {fmt(f[key]) if f.get(key) is not None else 'n/a'}")
    return " | ".join(cells)


def format_readme_tables(result: dict) -> str:
    """README's three tables (per block kind at ``README_BLOCK_SHAPE``, MEFC, whole model), original →
    fast, from a :func:`run_figures` or :func:`readme_figures` result."""
    blocks = [r for r in result["blocks"] if (r["scenario"], r["level"]) == README_BLOCK_SHAPE]
    if not blocks:
        raise BenchError(f"the result has no block figures at {'-'.join(README_BLOCK_SHAPE)}")
    scenario = README_BLOCK_SHAPE[0]
    size = blocks[0]["input"][-1]
    lines = [f"| level 1 at {size}x{size} ({'x'.join(map(str, blocks[0]['input']))}) | {_README_COLUMNS}",
             _README_RULE]
    lines += [f"| {_block_label(r['block'])} | {_readme_cells(r)} |" for r in blocks]
    lines += ["", f"| MEFC (training figures at batch 1) | {_README_COLUMNS}", _README_RULE]
    lines += [f"| {_README_MEFC_LEVELS.get(r['level'], r['level'])}, {'x'.join(map(str, r['input']))} "
              f"| {_readme_cells(r)} |" for r in result["mefc"] if r["scenario"] == scenario]
    mefc = "with" if result["model"]["config"]["mefc"] else "without"
    lines += ["", f"| whole model ({mefc} MEFC) | {_README_COLUMNS}", _README_RULE]
    lines += [f"| {r['kind']} {'x'.join(map(str, r['input']))} | {_readme_cells(r)} |" for r in result["whole_model"]]
    return "\n".join(lines)


def _block_label(kind: str) -> str:
    return {"layernorm": "LayerNorm", "attention": "attention", "feedforward": "feed-forward",
            "block": "transformer block"}.get(kind, kind)


def replace_readme_tables(text: str, tables: str) -> str:
    """``text`` with what lies between ``README_START`` and ``README_END`` replaced by ``tables``."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise BenchError(f"README has no {README_START!r} ... {README_END!r} markers")
    return f"{text[:start]}{README_START}\n{tables}\n{text[end:]}"


def progress_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
