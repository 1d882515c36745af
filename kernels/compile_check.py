"""Compile every registered kernel configuration for real GPUs, with no GPU present.

    python -m drsformer_fast.kernels.compile_check [--arch 80 90] [--json PATH] [--jobs N]

For each configuration and target (``GPUTarget("cuda", arch, 32)``) it runs ``triton.compile``,
then reads the cubin's resource usage with the ``cuobjdump`` shipped in the Triton wheel:
registers (REG), shared memory (SHARED, plus Triton's own shared-memory figure) and local memory
(LOCAL/STACK, where register spills go). It exits non-zero if any configuration fails to compile,
spills, or needs more shared memory than the target has.

It must run without ``TRITON_INTERPRET=1`` (the interpreter does not compile anything).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import re
import subprocess
import sys
import tempfile
import time

# usable shared memory per block (opt-in maximum): A100 (sm_80) 163 KB, H100 (sm_90) 227 KB
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
_RESOURCE_RE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _compile_one(index: int, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ._registry import all_compile_configs
    from ._utils import LAUNCH_OPTIONS

    cfg = all_compile_configs()[index]
    row = {"name": cfg.name, "arch": arch, "num_warps": cfg.num_warps}
    t0 = time.perf_counter()
    try:
        src = ASTSource(cfg.kernel, cfg.signature, constexprs=cfg.constexprs)
        options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages, **LAUNCH_OPTIONS, **cfg.extra}
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as exc:  # report every failure, not just the first
        row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        return row
    row["compile_s"] = round(time.perf_counter() - t0, 3)
    row["triton_shared"] = int(compiled.metadata.shared)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
        path = f.name
    try:
        out = subprocess.run([_cuobjdump(), "--dump-resource-usage", path], capture_output=True, text=True,
                             check=True).stdout
    finally:
        os.unlink(path)
    m = _RESOURCE_RE.search(out)
    if m is None:
        row["error"] = f"could not read resource usage from cuobjdump: {out[:500]}"
        return row
    row["regs"], row["stack"], row["shared"], row["local"] = map(int, m.groups())
    problems = []
    if row["local"] or row["stack"]:
        problems.append(f"register spills: LOCAL={row['local']} STACK={row['stack']}")
    shared = max(row["shared"], row["triton_shared"])
    if shared > SHARED_LIMIT[arch]:
        problems.append(f"shared memory {shared} B exceeds sm_{arch}'s {SHARED_LIMIT[arch]} B")
    if problems:
        row["error"] = "; ".join(problems)
    return row


def run(archs=(80, 90), jobs: int | None = None, name_filter: str = "") -> list[dict]:
    from ._registry import all_compile_configs
    from ._utils import is_interpreter

    if is_interpreter():
        raise RuntimeError("compile_check needs real Triton JIT functions: unset TRITON_INTERPRET")
    configs = all_compile_configs()
    work = [(i, a) for a in archs for i, c in enumerate(configs) if name_filter in c.name]
    jobs = jobs or min(4, os.cpu_count() or 1)
    if jobs <= 1:
        return [_compile_one(i, a) for i, a in work]
    with cf.ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_compile_one, *zip(*work), chunksize=4))


def format_table(rows: list[dict]) -> str:
    lines = [f"{'kernel configuration':<92} {'sm':>3} {'regs':>5} {'smem':>7} {'local':>6}  status"]
    for r in rows:
        if "regs" in r:
            smem = max(r["shared"], r["triton_shared"])
            lines.append(f"{r['name']:<92} {r['arch']:>3} {r['regs']:>5} {smem:>7} {r['local']:>6}  "
                         f"{r.get('error', 'ok')}")
        else:
            lines.append(f"{r['name']:<92} {r['arch']:>3} {'-':>5} {'-':>7} {'-':>6}  {r['error']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SHARED_LIMIT))
    parser.add_argument("--json", help="write the per-configuration report here")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile processes")
    parser.add_argument("--quiet", action="store_true", help="print only failures and the summary")
    parser.add_argument("--filter", default="", help="only configurations whose name contains this")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    rows = run(tuple(args.arch), args.jobs, args.filter)
    bad = [r for r in rows if "error" in r]
    print(format_table(bad if args.quiet else rows))
    print(f"{len(rows)} compilations ({len(rows) // max(1, len(args.arch))} configurations x {len(args.arch)} "
          f"targets), {len(bad)} failed, {time.perf_counter() - t0:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
