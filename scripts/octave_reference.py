"""One-off: reference figures of the paper's two MATLAB evaluation scripts, run under GNU Octave, on
the generated image pairs of ``tests/matlab_images.py``. NOT part of the tests (they read the
figures this wrote to ``tests/data/matlab_reference.json``); rerun it only to regenerate them.

Needs GNU Octave with its image package (Debian: ``apt-get install octave octave-image``) and the
``evaluations`` folder of a checkout of the original repository (github.com/cschenxiang/DRSformer),
whose scripts are used unchanged and never copied into this project:

    python scripts/octave_reference.py /path/to/DRSformer/evaluations [--upstream-commit SHA] [-o FILE.json]
    python scripts/octave_reference.py /path/to/DRSformer/evaluations --pair RESULT.png TARGET.png

How each script runs, one image pair per Octave process (each script sums over its whole folder):
- ``Evalution_Rain200L_Rain200H_SPA-Data/evaluate_PSNR_SSIM.m``: in a scratch folder laid out as
  it expects (``results/Rain200L/`` and ``Datasets/Rain200L/targets/``, one image each). Octave runs
  a script's local functions only when they are defined before the code that calls them, so the
  functions at its end are moved up to just after its first line (whose ``clear all`` would
  otherwise remove them); nothing else changes. The figures are its ``qm_psnr`` and ``qm_ssim``
  (the means over one image), printed in full precision after it ends.
- ``Evaluation_DID-Data_DDN-Data/statistic.m`` with its ``psnr.m`` and ``ssim.m`` (which take
  precedence over Octave's own ``psnr``/``ssim`` from the current folder), unchanged: it reads
  ``.\\results\\<i>_GT.png`` (a Windows path; here a file whose name is that string) for i = 1 to
  1200. Given only pair 1, it stops with a missing-file error at i = 2, after adding pair 1's
  figures to its sums ``tp`` and ``ts``; the driver checks that it stopped there and prints them.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

RAIN200 = "Evalution_Rain200L_Rain200H_SPA-Data"
DID = "Evaluation_DID-Data_DDN-Data"


def _octave(workdir: Path, code: str) -> str:
    command = f"pkg load image; cd('{workdir}'); {code}"
    run = subprocess.run(["octave", "--no-gui", "--norc", "--quiet", "--eval", command],
                         capture_output=True, text=True, timeout=600)
    return run.stdout + run.stderr


def _number(text: str) -> float | str:
    v = float(text)  # Octave prints Inf / -Inf / NaN, which float() reads
    return v if math.isfinite(v) else ("Inf" if v > 0 else "-Inf" if v < 0 else "NaN")


def rain200_script(upstream: Path) -> str:
    """evaluate_PSNR_SSIM.m with its local functions moved up to just after its first line."""
    lines = (upstream / RAIN200 / "evaluate_PSNR_SSIM.m").read_text(encoding="latin-1").splitlines(keepends=True)
    first_fn = next(i for i, line in enumerate(lines) if line.startswith("function"))
    return "".join(lines[:1] + lines[first_fn:] + ["\n"] + lines[1:first_fn])


def run_rain200(upstream: Path, result: Path, target: Path, scratch: Path) -> dict:
    work = scratch / "rain200"
    shutil.rmtree(work, ignore_errors=True)
    (work / "results" / "Rain200L").mkdir(parents=True)
    (work / "Datasets" / "Rain200L" / "targets").mkdir(parents=True)
    shutil.copy(result, work / "results" / "Rain200L" / "1.png")
    shutil.copy(target, work / "Datasets" / "Rain200L" / "targets" / "1.png")
    (work / "evaluate_PSNR_SSIM.m").write_text(rain200_script(upstream), encoding="latin-1")
    out = _octave(work, "try, evaluate_PSNR_SSIM; catch err, printf('ERROR %s\\n', err.message); end; "
                        "if exist('qm_psnr', 'var'), printf('RESULT %.17g %.17g\\n', qm_psnr, qm_ssim); end")
    m = re.search(r"^RESULT (\S+) (\S+)$", out, re.M)
    if m:
        return {"psnr": _number(m.group(1)), "ssim": _number(m.group(2))}
    err = re.search(r"^ERROR (.*)$", out, re.M)
    if err:
        return {"error": err.group(1).strip()}
    raise RuntimeError(f"evaluate_PSNR_SSIM.m gave no figures:\n{out}")


def run_did(upstream: Path, result: Path, target: Path, scratch: Path) -> dict:
    work = scratch / "did"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in ("statistic.m", "psnr.m", "ssim.m"):
        shutil.copy(upstream / DID / name, work / name)
    shutil.copy(result, work / ".\\results\\1_DR.png")
    shutil.copy(target, work / ".\\results\\1_GT.png")
    out = _octave(work, "printf('WHICH %s %s\\n', which('ssim'), which('psnr')); "
                        "try, statistic; catch err, printf('ERROR %s\\n', err.message); end; "
                        "printf('RESULT %d %.17g %.17g\\n', i, tp, ts);")
    which = re.search(r"^WHICH (\S+) (\S+)$", out, re.M)
    if not which or not all(Path(p).parent == work for p in which.groups()):
        raise RuntimeError(f"statistic.m would not use its own ssim.m/psnr.m:\n{out}")
    m = re.search(r"^RESULT (\d+) (\S+) (\S+)$", out, re.M)
    err = re.search(r"^ERROR (.*)$", out, re.M)
    if not m or m.group(1) != "2" or not err or "2_GT.png" not in err.group(1):
        raise RuntimeError(f"statistic.m did not stop at the missing pair 2 as expected:\n{out}")
    return {"psnr": _number(m.group(2)), "ssim": _number(m.group(3))}


def figures(upstream: Path, result: Path, target: Path, scratch: Path) -> dict:
    return {"matlab-rain200": run_rain200(upstream, result, target, scratch),
            "matlab-did": run_did(upstream, result, target, scratch)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("evaluations", type=Path, help="the 'evaluations' folder of a DRSformer checkout")
    parser.add_argument("-o", "--output", type=Path,
                        default=Path(__file__).resolve().parent.parent / "tests" / "data" / "matlab_reference.json")
    parser.add_argument("--upstream-commit", default="unknown", help="the commit of that checkout, recorded")
    parser.add_argument("--pair", nargs=2, type=Path, metavar=("RESULT", "TARGET"),
                        help="print the figures of one pair of image files instead")
    args = parser.parse_args()
    version = subprocess.run(["octave", "--no-gui", "--norc", "--quiet", "--eval",
                              "pkg load image; [~, info] = pkg('list', 'image'); "
                              "printf('%s %s\\n', version(), info{1}.version);"],
                             capture_output=True, text=True).stdout.split()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        if args.pair:
            print(json.dumps(figures(args.evaluations, *args.pair, scratch), indent=2))
            return 0
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from matlab_images import reference_pairs

        images = {}
        for name, (result, target) in reference_pairs().items():
            Image.fromarray(result).save(scratch / "result.png")
            Image.fromarray(target).save(scratch / "target.png")
            for arr, path in ((result, "result.png"), (target, "target.png")):  # PNG is lossless
                assert np.array_equal(np.asarray(Image.open(scratch / path)), arr)
            images[name] = {"shape": list(result.shape[:2]),
                            **figures(args.evaluations, scratch / "result.png", scratch / "target.png", scratch)}
            print(name, json.dumps(images[name]), file=sys.stderr, flush=True)
    doc = {
        "about": "Figures of the paper's evaluate_PSNR_SSIM.m (matlab-rain200) and statistic.m (matlab-did), run "
                 "unchanged under GNU Octave by scripts/octave_reference.py on the pairs of tests/matlab_images.py "
                 "(result, target). 'error': the script stopped with that error.",
        "octave": version[0] if version else "unknown",
        "octave_image_package": version[1] if len(version) > 1 else "unknown",
        "upstream_commit": args.upstream_commit,
        "images": images,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
