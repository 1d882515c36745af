"""Regenerate README's tables of the device-independent figures (the level-1 block kinds at 256x256,
MEFC, the whole model) from a fresh ``bench.readme_figures()`` result, between the markers
``bench.README_START`` and ``bench.README_END``, and the end-to-end prediction on an H100
(``predict_model.readme_section``: the calibrated static model and the committed host cost) between
``predict_model.README_START`` and ``predict_model.README_END``, and the host-cost tables from the
committed ``hostcost`` results (``hostcost.replace_readme``).

    python scripts/readme_tables.py           # rewrite README.md
    python scripts/readme_tables.py --check   # exit 1 when README.md differs from what the code gives

Fake tensors only (no self-check, no host cost measured): about two minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# the figures follow the fast path's Triton launchers, which the CPU takes only under the interpreter
os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drsformer_fast.perf import bench, hostcost, predict_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="compare only; exit 1 when README.md is out of date")
    p.add_argument("--readme", default=str(ROOT / "README.md"), help="the file to rewrite (default README.md)")
    args = p.parse_args(argv)
    path = Path(args.readme)
    text = path.read_text()
    try:
        new = bench.replace_readme_tables(text, bench.format_readme_tables(bench.readme_figures()))
        new = predict_model.replace_readme(new, predict_model.readme_section(predict_model.predict(),
                                                                              predict_model.read_hostcost()))
        new = hostcost.replace_readme(new)
    except (bench.BenchError, ValueError) as exc:
        print(f"readme_tables: error: {exc}", file=sys.stderr)
        return 2
    if new == text:
        print(f"{path}: figures tables up to date")
        return 0
    if args.check:
        print(f"{path}: figures tables differ from what the code gives: run python scripts/readme_tables.py",
              file=sys.stderr)
        return 1
    path.write_text(new)
    print(f"{path}: figures tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
