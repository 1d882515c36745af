"""Compile what runs, for real GPUs, with no GPU present: fail on spills or too much shared memory.

    python -m drsformer_fast.perf.compile_check [--arch 80 90] [--json PATH] [--jobs N] [--quiet]
                                                  [--registered] [--filter TEXT]

The fast model and its blocks run on fake tensors at a few small shapes chosen to reach every
configuration the launchers choose (``CHECK_CASES``: every level's channel and head count, fp32
with TF32 on and off, bf16 under autocast, fp16, batch 1 and 2, sizes whose H*W and W are and are not
multiples of 16, inference and training), and every Triton launch is captured with Triton's own
specialisation of its arguments (``drsformer_fast.perf.launches``). Each distinct specialisation is
compiled for ``GPUTarget("cuda", arch, 32)`` with the launch's own options (``num_warps``,
``num_stages`` (Triton's default 3 where the launcher passes none), ``LAUNCH_OPTIONS``), and the
cubin's resource usage is read with the ``cuobjdump`` shipped in the Triton wheel: registers, shared
memory (and Triton's own figure) and local memory (LOCAL/STACK, where register spills go). It exits
non-zero if any launch fails to compile, spills, or needs more shared memory than the target has.

Kernels of ``KERNEL_MODULES`` that no captured launch reaches fall back to the configurations their
module registers with ``@register_compile_configs`` (``--registered`` compiles all registered
configurations as well; they are compiled with plain i32 arguments and their own ``num_stages``, so
they are not exactly what runs).

It must run without ``TRITON_INTERPRET=1`` (the interpreter does not compile anything).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

# usable shared memory per block (opt-in maximum): A100 (sm_80) 163 KB, H100 (sm_90) 227 KB
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}

# (module kind, dtype, autocast dtype, input shape, training, tf32): see the module docstring
CHECK_CASES = (
    ("model", "float32", None, (1, 3, 64, 64), False, True),  # every level; H*W, W multiples of 16
    ("model", "float32", None, (2, 3, 40, 48), True, True),  # batch 2, W = 40, 20, 10, 5: no x16 divisibility
    ("model", "float32", None, (1, 3, 24, 40), True, False),  # exact fp32 dots (allow_tf32 = False)
    ("model", "float32", "bfloat16", (1, 3, 64, 64), True, True),  # bf16 autocast (what bench runs)
    ("block", "float16", None, (1, 48, 16, 32), True, True),  # fp16 module, x16 sizes
    ("block", "float16", None, (2, 96, 13, 21), True, True),  # fp16, odd sizes, decoder width
)


def captured_launches(arch: int) -> list:
    """Every launch of :data:`CHECK_CASES` on sm_<arch> (its SM count and compute capability), with
    ``tags`` saying where it was captured."""
    import torch

    from . import launches as L

    out = []
    for kind, dtype, autocast, shape, training, tf32 in CHECK_CASES:
        dt = getattr(torch, dtype)
        heads = 1 if shape[1] in (3, 48, 96) else shape[1] // 48
        m = L.build_module(kind, shape[1] if kind != "model" else 48, heads, dt)
        tags = {"case": f"{kind} {dtype}{'/autocast ' + autocast if autocast else ''} {'x'.join(map(str, shape))}"
                        f"{' train' if training else ''}{'' if tf32 else ' no-tf32'}"}
        ctx = (torch.autocast("cpu", dtype=getattr(torch, autocast)) if autocast
               else torch.autocast("cpu", enabled=False))
        with ctx:
            fwd, bwd = L.capture(m, shape, backward=training, arch=arch, tags=tags, tf32=tf32)
        out += fwd + bwd
    return out


def _registered_rows(archs, jobs, only_kernels=None) -> list[dict]:
    """The registered configurations (of ``only_kernels`` when given), compiled as registered."""
    from ..kernels._registry import all_compile_configs
    from . import launches as L
    from . import static_report as S

    specs = []
    for cfg in all_compile_configs():
        fn = cfg.kernel
        name = fn.fn.__name__
        if only_kernels is not None and name not in only_kernels:
            continue
        names = [p.name for p in fn.params]
        constexprs = tuple(((names.index(k),), v) for k, v in cfg.constexprs.items())
        signature = tuple((n, cfg.signature.get(n, "constexpr")) for n in names)
        from ..kernels._utils import LAUNCH_OPTIONS

        options = tuple(sorted({"num_warps": cfg.num_warps, "num_stages": cfg.num_stages, **LAUNCH_OPTIONS,
                                **getattr(cfg, "extra", {})}.items()))
        specs.append((cfg.name, L.Specialisation(fn.fn.__module__, name, signature, constexprs, (), options,
                                                 tuple(names)), cfg.archs))
    rows = []
    for arch in archs:
        mine = [(label, s) for label, s, cfg_archs in specs if not cfg_archs or arch in cfg_archs]
        compiled = S.compile_all([s for _, s in mine], arch, jobs, sass=False)
        for label, s in mine:
            rows.append({"name": f"registered {label}", "source": "registered", **compiled[s]})
    return rows


def run(archs=(80, 90), jobs: int | None = None, registered: bool = False, name_filter: str = "") -> list[dict]:
    from ..kernels import KERNEL_MODULES
    from ..kernels._utils import is_interpreter
    from . import launches as L
    from . import static_report as S

    if is_interpreter():
        raise RuntimeError("compile_check needs real Triton JIT functions: unset TRITON_INTERPRET")
    rows = []
    captured_names = set()
    for arch in archs:
        launches = captured_launches(arch)
        first = {}
        for launch in launches:
            captured_names.add(launch.name)
            spec = L.specialise(launch, arch)
            if name_filter in spec.describe():
                first.setdefault(spec, launch)
        compiled = S.compile_all(list(first), arch, jobs, sass=False)
        for spec, launch in first.items():
            rows.append({"name": spec.describe(), "source": launch.tags["case"], **compiled[spec]})
    import triton

    all_kernels = {n for m in KERNEL_MODULES for n, v in vars(m).items()
                   if isinstance(v, triton.runtime.jit.JITFunction) and n.endswith("_kernel")}
    missing = {n for n in all_kernels - captured_names if name_filter in n}
    if registered:
        rows += [r for r in _registered_rows(archs, jobs) if name_filter in r["name"]]
    elif missing:
        rows += _registered_rows(archs, jobs, missing)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'kernel launch':<100} {'sm':>3} {'regs':>5} {'smem':>7} {'local':>6}  status"]
    for r in rows:
        name = r["name"][:100]
        if "regs" in r:
            lines.append(f"{name:<100} {r['arch']:>3} {r['regs']:>5} {r['shared']:>7} {r['local'] + r['stack']:>6}  "
                         f"{r.get('error', 'ok')}")
        else:
            lines.append(f"{name:<100} {r['arch']:>3} {'-':>5} {'-':>7} {'-':>6}  {r['error']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SHARED_LIMIT))
    parser.add_argument("--json", help="write the per-launch report here")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile processes")
    parser.add_argument("--quiet", action="store_true", help="print only failures and the summary")
    parser.add_argument("--filter", default="", help="only launches whose description contains this")
    parser.add_argument("--registered", action="store_true",
                        help="also compile every configuration registered with @register_compile_configs")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    rows = run(tuple(args.arch), args.jobs, args.registered, args.filter)
    bad = [r for r in rows if "error" in r]
    print(format_table(bad if args.quiet else rows))
    n_reg = sum(1 for r in rows if r.get("source") == "registered")
    print(f"{len(rows)} compilations ({len(rows) - n_reg} captured launches, {n_reg} registered configurations; "
          f"sm_{', sm_'.join(map(str, args.arch))}), {len(bad)} failed, {time.perf_counter() - t0:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
