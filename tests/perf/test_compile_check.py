"""What runs compiles for sm_80 and sm_90, without spills and within shared memory.

Runs ``python -m drsformer_fast.perf.compile_check`` in a fresh process without TRITON_INTERPRET
(the interpreter compiles nothing): the fast model and blocks run on fake tensors at a few small
shapes (``compile_check.CHECK_CASES``), every Triton launch is captured with Triton's own
specialisation and options, and each distinct one is compiled. Also checks that every
``@triton.jit`` kernel of the kernel modules is compiled, and says which ones only through their
registered configurations (no captured launch reaches them).
"""

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "drsformer_fast.perf.compile_check", "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=1800,
    )
    print(proc.stdout[-20000:])  # the full table (registers, shared memory, spills) in the test log
    rows = json.loads(out.read_text()) if out.exists() else []
    return proc, rows


def test_all_launches_compile_without_spills(report):
    proc, rows = report
    failed = [r for r in rows if "error" in r]
    assert proc.returncode == 0 and rows and not failed, (
        proc.stderr[-5000:] + "\n" + "\n".join(f"{r['name']} sm_{r['arch']} ({r.get('source')}): {r['error']}"
                                               for r in failed)
    )
    assert {r["arch"] for r in rows} == {80, 90}


def test_every_kernel_is_compiled(report):
    _, rows = report
    code = (
        "import json, triton\n"
        "from drsformer_fast.kernels import KERNEL_MODULES\n"
        "names = sorted(n for m in KERNEL_MODULES for n, v in vars(m).items()\n"
        "               if isinstance(v, triton.runtime.jit.JITFunction) and n.endswith('_kernel'))\n"
        "print(json.dumps(names))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    names = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                      check=True).stdout)
    captured = {r["kernel"] for r in rows if r.get("source") != "registered"}
    registered = {r["kernel"] for r in rows if r.get("source") == "registered"}
    assert names, "no kernels found"
    missing = sorted(set(names) - captured - registered)
    assert not missing, f"kernels that no captured launch reaches and that register no configuration: {missing}"
    only_registered = sorted(set(names) & registered - captured)
    if only_registered:
        print(f"compiled from registered configurations only (no captured launch): {only_registered}")
