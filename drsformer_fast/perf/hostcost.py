"""Host cost of a forward (and backward) of the original and the fast model, measured without a GPU.

On a GPU host a model whose kernels are short waits on Python: every Triton launch pays its
launcher's body and ``JITFunction.run``, every custom op its dispatch (and autograd wrapper), every
ATen op its dispatcher. This module measures that cost on any Linux machine with a C compiler:

* a **no-op CUDA driver**: a ``libcuda.so.1`` built from a few lines of C (:data:`NOOP_DRIVER_C`)
  whose ``cu*`` functions return success at once (with an H100's device attributes where a caller
  reads them), loaded before Triton, and Triton's CUDA driver made active on it with device 0 and
  stream 0 (:func:`activate_noop_driver`). Triton then runs its real launch path for sm_90: binder,
  specialisation, compilation (once per specialisation, cached like any Triton compile) and the
  launcher, whose ``cuLaunchKernelEx`` returns at once.
* the launchers in their sm_90 configuration (``launches.forced_triton_path(90)``) on small CPU
  tensors: grids, tiles and splits as an H100 would get them; the kernels are never executed.
* ATen ops run for real on the CPU at the small size, so their time is their dispatch plus a small
  computation: an upper bound on their host cost on a GPU, paid by the original's ~10x more ATen
  ops more than by the fast model's. The weights are full size however small the image (48 to 384
  channels), so at DRSformer's width that computation is a large part of both models' time;
  ``--dim 8`` builds both models at base width 8 (the same launches, ops and module calls), where
  it almost vanishes and the time is closer to the host's own work.

What the timer sees is therefore the host's work per call; it depends on the machine (a GPU
host's CPU is usually faster than a CI runner's). The *ratio* fast / original on one machine is
what the numbers are for. Launch counts come from the same forward on fake tensors
(``accounting.profile``): Triton launches, ATen kernels, custom-op calls.

Run ``python -m drsformer_fast.perf.hostcost [--json PATH] [--repeats N] [--dim N]``: it must run in a process
without ``TRITON_INTERPRET`` (Triton's interpreter replaces the launch path being measured), which
:func:`run_in_subprocess` arranges (``drsformer-fast bench`` uses it on machines without a GPU).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["NOOP_DRIVER_C", "SCENARIOS", "HostCostUnavailable", "build_noop_driver", "activate_noop_driver",
           "measure", "format_markdown", "readme_table", "replace_readme", "run_in_subprocess", "main"]

NOOP_DRIVER_C = r"""
/* A CUDA driver that does nothing: every cu* call succeeds at once, outputs filled with an H100's
   values where a caller reads them. */
#include <stddef.h>
#include <stdint.h>
typedef int CUresult;
static int ctx_, mod_, fun_;
CUresult cuInit(unsigned flags) { return 0; }
CUresult cuDriverGetVersion(int *v) { *v = 12080; return 0; }
CUresult cuDeviceGetCount(int *n) { *n = 1; return 0; }
CUresult cuDeviceGet(int *d, int ordinal) { *d = ordinal; return 0; }
CUresult cuDeviceGetAttribute(int *v, int attr, int dev) {
  switch (attr) {
    case 1: *v = 1024; break;      /* max threads per block */
    case 8: *v = 49152; break;     /* shared memory per block */
    case 10: *v = 32; break;       /* warp size */
    case 12: *v = 65536; break;    /* registers per block */
    case 13: *v = 1980000; break;  /* clock rate, kHz */
    case 16: *v = 132; break;      /* multiprocessors */
    case 36: *v = 2619000; break;  /* memory clock, kHz */
    case 37: *v = 5120; break;     /* memory bus width */
    case 75: *v = 9; break;        /* compute capability 9.0 */
    case 76: *v = 0; break;
    case 97: *v = 232448; break;   /* shared memory per block, opt-in */
    default: *v = 0;
  }
  return 0;
}
CUresult cuGetErrorString(int e, const char **s) { *s = "no-op CUDA driver"; return 0; }
CUresult cuGetErrorName(int e, const char **s) { *s = "CUDA_SUCCESS"; return 0; }
CUresult cuCtxGetCurrent(void **c) { *c = &ctx_; return 0; }
CUresult cuCtxSetCurrent(void *c) { return 0; }
CUresult cuCtxGetDevice(int *d) { *d = 0; return 0; }
CUresult cuCtxSynchronize(void) { return 0; }
CUresult cuCtxGetLimit(size_t *v, int limit) { *v = 0; return 0; }
CUresult cuCtxSetLimit(int limit, size_t v) { return 0; }
CUresult cuDevicePrimaryCtxRetain(void **c, int dev) { *c = &ctx_; return 0; }
CUresult cuModuleLoadData(void **m, const void *image) { *m = &mod_; return 0; }
CUresult cuModuleGetFunction(void **f, void *m, const char *name) { *f = &fun_; return 0; }
CUresult cuModuleUnload(void *m) { return 0; }
CUresult cuFuncGetAttribute(int *v, int attr, void *f) { *v = attr == 0 ? 1024 : (attr == 4 ? 64 : 0); return 0; }
CUresult cuFuncSetAttribute(void *f, int attr, int v) { return 0; }
CUresult cuFuncSetCacheConfig(void *f, int config) { return 0; }
CUresult cuPointerGetAttribute(void *data, int attr, uint64_t ptr) { *(uint64_t *)data = ptr; return 0; }
CUresult cuPointerGetAttributes(unsigned n, int *attrs, void **data, uint64_t ptr) { return 0; }
CUresult cuStreamIsCapturing(void *stream, int *status) { *status = 0; return 0; }
CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void *stream, void **params, void **extra) { return 0; }
CUresult cuLaunchKernelEx(const void *config, void *f, void **params, void **extra) { return 0; }
CUresult cuLaunchCooperativeKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                   unsigned bz, unsigned shared, void *stream, void **params) { return 0; }
CUresult cuOccupancyMaxActiveClusters(int *n, void *f, const void *config) { *n = 1; return 0; }
CUresult cuTensorMapEncodeTiled(void *map, ...) { return 0; }
CUresult cuTensorMapEncodeIm2col(void *map, ...) { return 0; }
"""

# (name, batch, size, training): the bench scenarios' batches at the smallest image the model takes
# (8x8: its latent is one pixel), where the ATen ops' CPU work is smallest; the host's work per call
# does not grow with the image (only a few launch splits depend on it)
SCENARIOS = (("infer", 1, 8, False), ("train2", 2, 8, True), ("train4", 4, 8, True))


class HostCostUnavailable(RuntimeError):
    """The measurement cannot run here (no C compiler, no Triton, Triton's interpreter on)."""


def build_noop_driver(folder: str | os.PathLike | None = None) -> Path:
    """Compile :data:`NOOP_DRIVER_C` to ``libcuda.so.1`` (in ``folder``, by default a folder under
    the temporary directory named by the source's hash, reused when it exists); returns its path."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise HostCostUnavailable("no C compiler (cc, gcc or $CC) to build the no-op CUDA driver")
    digest = hashlib.sha256(NOOP_DRIVER_C.encode()).hexdigest()[:16]
    out_dir = Path(folder) if folder is not None else Path(tempfile.gettempdir()) / f"drsformer-fast-nocuda-{digest}"
    lib = out_dir / "libcuda.so.1"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / "nocuda.c"
    src.write_text(NOOP_DRIVER_C)
    tmp = out_dir / f".libcuda.so.1.{os.getpid()}"
    proc = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise HostCostUnavailable(f"building the no-op CUDA driver failed: {proc.stderr.strip()[:300]}")
    os.replace(tmp, lib)
    return lib


def activate_noop_driver(lib: Path) -> None:
    """Load the no-op ``libcuda.so.1`` and make Triton's CUDA driver active on it (device 0, stream 0,
    compute capability 9.0). Must run before Triton loads any CUDA library, in a process without
    ``TRITON_INTERPRET``."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise HostCostUnavailable("TRITON_INTERPRET=1: Triton's interpreter replaces the launch path to measure")
    os.environ["TRITON_LIBCUDA_PATH"] = str(lib.parent)
    # loaded first and globally: Triton's compiled helpers find libcuda.so.1 by its soname
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    try:
        from triton.backends.nvidia import driver as nvidia
        from triton.runtime import driver
    except ImportError as exc:
        raise HostCostUnavailable(f"Triton's CUDA backend cannot be imported: {exc}") from exc
    d = nvidia.CudaDriver.__new__(nvidia.CudaDriver)  # its __init__ asks torch for a CUDA device
    d.utils = nvidia.CudaUtils()
    d.launcher_cls = nvidia.CudaLauncher
    d.get_device_capability = lambda device=None: (9, 0)
    d.get_current_stream = lambda device=None: 0
    d.get_current_device = lambda: 0
    d.set_current_device = lambda device: None
    driver.set_active(d)


def _counts(model, shape, training: bool) -> dict:
    from . import accounting

    prof = accounting.profile(model, shape, backward=training, fake=True)
    records = prof.forward + prof.backward
    return {"triton": sum(r.kind == "triton" for r in records), "aten": sum(r.kind == "aten" for r in records),
            "custom_ops": sum(r.kind == "fused" for r in records)}


def measure(repeats: int = 20, warmup: int = 2, scenarios=SCENARIOS, variant: str = "with-mefc",
            progress=None, dim: int = 48) -> dict:
    """Host milliseconds per call (median of ``repeats``) of both models in eager mode, and their launch
    counts, per scenario; the no-op driver must be active (:func:`activate_noop_driver`).

    ``dim``: the models' base width (48: DRSformer's; levels 1-4 have 1, 2, 4 and 8 times as many
    channels). A narrow model (e.g. 8) keeps every launch, op and module call but leaves the CPU
    almost no arithmetic in the ATen ops, which a GPU would do on the device: its times are closer to
    the host work alone."""
    import torch

    from .bench import build_models, model_config
    from .launches import forced_triton_path

    torch.set_num_threads(1)  # the host's single Python thread; no intra-op parallelism in the timing
    config = {**model_config(variant), "dim": dim}
    ref, fast = build_models(config, seed=0)
    rows = []
    for name, batch, size, training in scenarios:
        shape = (batch, 3, size, size)
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        row = {"scenario": name, "shape": list(shape), "pass": "forward+backward" if training else "forward"}
        calls = {}
        for label, model in (("original", ref), ("fast", fast)):
            model.train(training)
            inp = x.clone().requires_grad_(training)

            def call(model=model, inp=inp, training=training):
                if training:
                    model.zero_grad(set_to_none=True)
                    model(inp).abs().mean().backward()
                else:
                    with torch.no_grad():
                        model(inp)

            calls[label] = call
            with forced_triton_path(90):
                row[f"{label}_launches"] = _counts(model, shape, training)
                for _ in range(warmup):  # the first call compiles every specialisation (cached after)
                    call()
        # the two models' calls interleaved, so that a change in the machine's load weighs on both
        times = {label: [] for label in calls}
        with forced_triton_path(90):
            for _ in range(repeats):
                for label, call in calls.items():
                    t0 = time.perf_counter()
                    call()
                    times[label].append((time.perf_counter() - t0) * 1e3)
        for label, model in (("original", ref), ("fast", fast)):
            row[f"{label}_host_ms"] = statistics.median(times[label])
            model.zero_grad(set_to_none=True)
        row["ratio"] = row["fast_host_ms"] / row["original_host_ms"]
        rows.append(row)
        if progress is not None:
            progress(f"host cost {name} {'x'.join(map(str, shape))}: original {row['original_host_ms']:.1f} ms, "
                     f"fast {row['fast_host_ms']:.1f} ms ({row['ratio']:.2f})")
    import triton

    return {"method": "eager, small CPU tensors, Triton's launch path on a no-op CUDA driver (sm_90 launchers); "
                      "median host milliseconds per call on this machine",
            "machine": {"python": sys.version.split()[0], "torch": torch.__version__, "triton": triton.__version__,
                        "cpu": _cpu_name()},
            "repeats": repeats, "variant": variant, "dim": dim, "rows": rows}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def format_markdown(result: dict) -> str:
    if "unavailable" in result:
        return f"Host cost: not measured ({result['unavailable']})."
    lines = [f"Host cost per call ({result['method']}; base width {result.get('dim', 48)}; "
             f"{result['machine']['cpu']}, torch "
             f"{result['machine']['torch']}, triton {result['machine']['triton']}):", "",
             "| scenario | shape | pass | Triton launches | custom-op calls | ATen kernels (original → fast) "
             "| host ms, original | host ms, fast | fast / original |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        o, f = r["original_launches"], r["fast_launches"]
        lines.append(f"| {r['scenario']} | {'x'.join(map(str, r['shape']))} | {r['pass']} | {f['triton']} "
                     f"| {f['custom_ops']} | {o['aten']} → {f['aten']} | {r['original_host_ms']:.1f} "
                     f"| {r['fast_host_ms']:.1f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


# README's two host-cost tables, written by scripts/readme_tables.py from the committed results
RESULTS = Path(__file__).resolve().parent.parent.parent / "benchmarks" / "results"
README_TABLES = {  # marker name: (result file, narrow table)
    "hostcost:wide": ("hostcost-cpu.json", False),
    "hostcost:narrow": ("hostcost-cpu-dim8.json", True),
}


def readme_table(result: dict, narrow: bool) -> str:
    """A ``measure`` result as README shows it: every column (DRSformer's width) or, for a narrow
    model, the launches and times only (its op counts are the wide table's)."""
    if not narrow:
        return "\n".join(format_markdown(result).splitlines()[2:])
    lines = ["| scenario | Triton launches | host ms, original | host ms, fast | fast / original |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        lines.append(f"| {r['scenario']} | {r['fast_launches']['triton']} | {r['original_host_ms']:.1f} "
                     f"| {r['fast_host_ms']:.1f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def replace_readme(text: str, results: Path = RESULTS) -> str:
    """``text`` with each ``<!-- hostcost:... -->`` marker pair's contents rebuilt from its result file."""
    for name, (file, narrow) in README_TABLES.items():
        start = f"<!-- {name}:start (generated by scripts/readme_tables.py from {file}) -->"
        end = f"<!-- {name}:end -->"
        i, j = text.find(start), text.find(end)
        if i < 0 or j < i:
            raise ValueError(f"README has no {start!r} ... {end!r} markers")
        table = readme_table(json.loads((results / file).read_text()), narrow)
        text = f"{text[:i]}{start}\n{table}\n{text[j:]}"
    return text


def run_in_subprocess(args: list[str] | None = None, timeout: float = 1800) -> dict:
    """:func:`main` in a fresh process without ``TRITON_INTERPRET``; returns its JSON result, or
    ``{"unavailable": reason}``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "hostcost.json"
        proc = subprocess.run([sys.executable, "-m", "drsformer_fast.perf.hostcost", "--json", str(out), *(args or [])],
                              env=env, capture_output=True, text=True, timeout=timeout)
        if out.exists():
            return json.loads(out.read_text())
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    return {"unavailable": tail[-1] if tail else f"exit code {proc.returncode}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m drsformer_fast.perf.hostcost", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20, help="timed calls per model and scenario (median; default 20)")
    p.add_argument("--scenarios", default=",".join(s[0] for s in SCENARIOS),
                   help=f"comma-separated, of {', '.join(s[0] for s in SCENARIOS)}")
    p.add_argument("--json", metavar="PATH", help="write the result as JSON")
    p.add_argument("--dim", type=int, default=48,
                   help="the models' base width (default 48, DRSformer's; 8 leaves the ATen ops almost no CPU "
                        "work; at least 2)")
    args = p.parse_args(argv)
    chosen = [s for s in SCENARIOS if s[0] in args.scenarios.split(",")]
    if not chosen or args.repeats < 1:
        p.error("no scenario chosen or --repeats below 1")
    if args.dim < 2:
        p.error(f"--dim must be at least 2 (the top-k attention needs 2 channels per head), got {args.dim}")
    try:
        activate_noop_driver(build_noop_driver())
    except HostCostUnavailable as exc:
        print(f"host cost not measured: {exc}", file=sys.stderr)
        if args.json:
            Path(args.json).write_text(json.dumps({"unavailable": str(exc)}) + "\n")
        return 0
    result = measure(repeats=args.repeats, scenarios=chosen, dim=args.dim,
                     progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
