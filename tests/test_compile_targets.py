"""Every kernel configuration the package can launch compiles for sm_80 and sm_90, without spills.

Runs ``python -m drsformer_fast.kernels.compile_check`` in a fresh process without
TRITON_INTERPRET (the interpreter compiles nothing), and checks that every ``@triton.jit``
kernel in the kernel modules registered at least one configuration.
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
        [sys.executable, "-m", "drsformer_fast.kernels.compile_check", "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=1800,
    )
    print(proc.stdout[-20000:])  # the full table (registers, shared memory, spills) in the test log
    rows = json.loads(out.read_text()) if out.exists() else []
    return proc, rows


def test_all_configurations_compile_without_spills(report):
    proc, rows = report
    failed = [r for r in rows if "error" in r]
    assert proc.returncode == 0 and rows and not failed, (
        proc.stderr[-5000:] + "\n" + "\n".join(f"{r['name']} sm_{r['arch']}: {r['error']}" for r in failed)
    )
    assert {r["arch"] for r in rows} == {80, 90}


def test_every_kernel_is_registered(report):
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
    compiled = {r["name"].split("[", 1)[0] for r in rows}
    assert names, "no kernels found"
    missing = sorted(set(names) - compiled)
    assert not missing, f"kernels with no registered compile configuration: {missing}"
