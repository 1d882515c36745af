"""``drsformer-fast`` command line.

    drsformer-fast selfcheck      every fused kernel against the reference at small shapes
    drsformer-fast bench          benchmarks with an NVIDIA GPU; without one, the self-check

Without an NVIDIA GPU the self-check runs the Triton kernels in Triton's CPU interpreter: this is
the only place besides the tests that chooses the interpreter, and it does so before Triton is
imported (re-running itself in a fresh process if Triton was already loaded).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _ensure_interpreter(argv: list[str]) -> int | None:
    """Make the kernels run in Triton's interpreter; returns an exit code if we re-ran ourselves."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    if "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"
        return None
    env = dict(os.environ, TRITON_INTERPRET="1")
    return subprocess.call([sys.executable, "-m", "drsformer_fast.cli", *argv], env=env)


def _selfcheck(args, argv) -> int:
    import torch

    device = torch.device("cuda") if (_has_cuda() and not args.interpreter) else torch.device("cpu")
    if device.type == "cpu":
        code = _ensure_interpreter(argv)
        if code is not None:
            return code
    from . import selfcheck
    from ._dispatch import kernel_path

    path = kernel_path(device)
    print(f"drsformer-fast self-check on {device} ({path} path)")
    if device.type == "cpu":
        print("No NVIDIA GPU in use: kernels run in Triton's CPU interpreter. Timings need an NVIDIA GPU.")
    dtypes = [torch.float32, torch.float16] + ([torch.bfloat16] if device.type == "cuda" else [])
    rows = selfcheck.run(device, dtypes)
    print(selfcheck.format_rows(rows))
    bad = [r for r in rows if not r.ok]
    print(f"{len(rows) - len(bad)}/{len(rows)} checks within bounds")
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drsformer-fast", description="Fused Triton kernels for DRSformer.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("selfcheck", help="check every fused kernel against the reference at small shapes")
    p.add_argument("--interpreter", action="store_true", help="use Triton's CPU interpreter even with a GPU")
    p = sub.add_parser("bench", help="benchmark (NVIDIA GPU); without one, run the self-check")
    p.add_argument("--interpreter", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command in ("selfcheck", "bench"):
        return _selfcheck(args, argv)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
