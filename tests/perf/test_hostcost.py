"""The host-cost measurement's parts (``drsformer_fast.perf.hostcost``); the measurement itself runs in
``test_bench.py::test_no_gpu_bench_end_to_end`` (a fresh process: it needs Triton's real launch path,
which this process, under Triton's interpreter, does not have)."""

from __future__ import annotations

import ctypes
import json
import re
import shutil
from pathlib import Path

import pytest

from drsformer_fast.perf import hostcost


def _driver_calls() -> set[str]:
    """The CUDA driver functions Triton's NVIDIA backend calls (its C helpers and launcher source)."""
    import triton.backends.nvidia as nvidia

    folder = Path(nvidia.__file__).parent
    text = "".join(p.read_text() for p in (folder / "driver.c", folder / "driver.py") if p.exists())
    names = set(re.findall(r"\b(cu[A-Z][A-Za-z0-9]*)\s*\(", text))  # called
    names |= set(re.findall(r"defineGetFunctionHandle\([^,]+,\s*(cu[A-Z][A-Za-z0-9]*)\)", text))  # looked up
    return {n for n in names if not n.endswith(("Handle", "_t"))}


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_noop_driver_exports_every_call_triton_makes(tmp_path):
    lib = hostcost.build_noop_driver(tmp_path)
    assert lib.name == "libcuda.so.1" and hostcost.build_noop_driver(tmp_path) == lib  # built once
    loaded = ctypes.CDLL(str(lib))
    calls = _driver_calls()
    assert {"cuModuleLoadData", "cuPointerGetAttribute", "cuOccupancyMaxActiveClusters"} <= calls
    missing = sorted(n for n in calls if not hasattr(loaded, n))
    assert missing == [], f"the no-op driver lacks {missing}"
    count = ctypes.c_int(-1)
    assert loaded.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value == 1
    major = ctypes.c_int()
    assert loaded.cuDeviceGetAttribute(ctypes.byref(major), 75, 0) == 0 and major.value == 9


def test_without_a_compiler_it_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(hostcost.HostCostUnavailable, match="no C compiler"):
        hostcost.build_noop_driver(tmp_path / "new")
    assert hostcost.format_markdown({"unavailable": "no C compiler"}) == "Host cost: not measured (no C compiler)."


def test_refused_under_triton_interpreter(tmp_path):
    # this process runs kernels in Triton's interpreter (conftest): the launch path to measure is absent
    with pytest.raises(hostcost.HostCostUnavailable, match="TRITON_INTERPRET"):
        hostcost.activate_noop_driver(tmp_path / "libcuda.so.1")


def test_markdown_of_a_result():
    row = {"scenario": "infer", "shape": [1, 3, 8, 8], "pass": "forward", "original_host_ms": 100.0,
           "fast_host_ms": 25.0, "ratio": 0.25,
           "original_launches": {"triton": 0, "aten": 3594, "custom_ops": 0},
           "fast_launches": {"triton": 340, "aten": 374, "custom_ops": 168}}
    result = {"method": "m", "machine": {"cpu": "cpu", "torch": "t", "triton": "tr"}, "rows": [row]}
    assert "| infer | 1x3x8x8 | forward | 340 | 168 | 3594 → 374 | 100.0 | 25.0 | 0.25 |" in \
        hostcost.format_markdown(result)


def test_markdown_names_the_width():
    result = {"method": "m", "machine": {"cpu": "cpu", "torch": "t", "triton": "tr"}, "dim": 8, "rows": []}
    assert "base width 8;" in hostcost.format_markdown(result)
    del result["dim"]  # results written before the width was recorded: DRSformer's 48
    assert "base width 48;" in hostcost.format_markdown(result)


@pytest.mark.parametrize("argv", [["--dim", "1"], ["--dim", "0"], ["--repeats", "0"], ["--scenarios", "nope"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        hostcost.main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_readme_tables_are_the_committed_results():
    """README's host-cost tables are what ``scripts/readme_tables.py`` writes from benchmarks/results."""
    readme = (hostcost.RESULTS.parent.parent / "README.md").read_text()
    assert hostcost.replace_readme(readme) == readme, (
        "README.md's host-cost tables differ from benchmarks/results/hostcost-cpu*.json: "
        "run python scripts/readme_tables.py")


def test_readme_tables_follow_the_results(tmp_path):
    readme = (hostcost.RESULTS.parent.parent / "README.md").read_text()
    for file in ("hostcost-cpu.json", "hostcost-cpu-dim8.json"):
        data = json.loads((hostcost.RESULTS / file).read_text())
        data["rows"][0]["fast_host_ms"] = 1234.5
        (tmp_path / file).write_text(json.dumps(data))
    new = hostcost.replace_readme(readme, tmp_path)
    assert new.count("| 1234.5 |") == 2 and new.count("<!-- hostcost:") == 4
    with pytest.raises(ValueError, match="hostcost:wide:start"):
        hostcost.replace_readme("no markers here", tmp_path)
