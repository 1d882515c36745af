"""The calibration of the static model on published H100 timings, ``predict_launch`` on any Triton
launch, and the end-to-end prediction table (no timing is asserted: these check the machinery)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from drsformer_fast.perf import calibrate as C
from drsformer_fast.perf import calibration_kernels as K

ROOT = Path(__file__).resolve().parents[2]

def _no_interpret_env():
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_data_has_forward_and_backward_rows_of_several_kernels_and_no_reserved_kernel():
    rows = C.read_data()
    assert len(rows) >= 40
    kernels = {r.kernel for r in rows}
    assert len({(r.kernel, r.pass_) for r in rows}) >= 5  # distinct Triton kernels: forward and backward
    assert {r.pass_ for r in rows} == {"fwd", "bwd"}
    assert not kernels & set(C.RESERVED)
    sizes = sorted(r.rows * r.cols for r in rows)
    assert sizes[0] * 100 < sizes[-1]  # small and large sizes
    text = C.DATA.read_text()
    assert "neighborhood" not in text.split("fused_neighborhood_attention rows are deliberately absent")[1]


def test_reserved_kernel_in_the_data_is_an_error(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("kernel,pass,dtype,rows,cols,measured_us,p20_us,p80_us,liger_version,source_commit,timestamp\n"
                    "fused_neighborhood_attention,fwd,bf16,1,1,1,1,1,0,x,t\n")
    with pytest.raises(ValueError, match="reserved"):
        C.read_data(path)


def test_held_out_kernels_are_never_in_the_fit():
    rows = C.read_data()
    fit_rows, held = C.split(rows)
    assert fit_rows and held
    assert not {r.kernel for r in fit_rows} & {r.kernel for r in held}
    assert {r.kernel for r in held} == set(C.HELD_OUT_KERNELS)
    assert not set(C.FIT_KERNELS) & set(C.HELD_OUT_KERNELS)


def test_calibrate_fits_on_fit_rows_only(monkeypatch):
    """Synthetic launch terms (nothing compiled): the fit sees no held-out row, and scaling every held-out
    measurement leaves the fitted parameters as they were while their errors move."""
    rows = C.read_data()
    seen = []
    real_fit = C.fit

    def recording_fit(fit_rows, launches):
        seen.extend(fit_rows)
        return real_fit(fit_rows, launches)

    def synthetic(rs, progress=print):
        return [[{"kind": "aten", "name": "stream", "bytes": 3 * r.rows * r.cols * (4 if r.dtype == "fp32" else 2)}]
                for r in rs]

    monkeypatch.setattr(C, "fit", recording_fit)
    monkeypatch.setattr(C, "predict_rows", synthetic)
    a = C.calibrate(rows, progress=lambda s: None)
    assert seen and not {r.kernel for r in seen} & set(C.HELD_OUT_KERNELS)
    assert len(seen) == a["fit"]["rows"] == sum(r.kernel in C.FIT_KERNELS for r in rows)
    scaled = [C.Measured(**{**r.__dict__, "measured_us": r.measured_us * (7 if r.kernel in C.HELD_OUT_KERNELS
                                                                           else 1)}) for r in rows]
    b = C.calibrate(scaled, progress=lambda s: None)
    assert a["params"] == b["params"]
    assert a["held_out"]["median_abs_error"] != b["held_out"]["median_abs_error"]
    assert a["fit"] == b["fit"]


def test_launches_for_rows_and_bad_input():
    ls = K.launches_for("layer_norm", "bwd", "fp32", 4096, 1024)
    triton = [x for x in ls if isinstance(x, K.TritonLaunch)]
    assert [x.name for x in triton] == ["layer_norm_bwd_kernel"] and triton[0].grid == (132,)
    assert triton[0].kwargs["ROWS_PER_PROGRAM"] == 32 and triton[0].kwargs["num_warps"] == 4
    assert K.block_settings(16384) == (16384, 16) and K.block_settings(1000) == (1024, 4)
    with pytest.raises(ValueError, match="unknown kernel"):
        K.launches_for("softmax", "fwd", "fp32", 1, 1)
    with pytest.raises(ValueError, match="unknown pass"):
        K.launches_for("layer_norm", "full", "fp32", 1, 1)
    with pytest.raises(ValueError, match="rows and cols"):
        K.launches_for("layer_norm", "fwd", "fp32", 0, 1)


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_no_interpret_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_predict_launch_on_a_tiny_kernel_returns_sane_terms():
    """A 4-row relu-squared launch on meta tensors, compiled for sm_90 (a process without the interpreter)."""
    out = _run(
        "import json, torch\n"
        "from drsformer_fast.perf.static_report import predict_launch\n"
        "from drsformer_fast.perf.calibration_kernels import relu_squared_fwd_kernel as k\n"
        "x = torch.empty(4, 256, dtype=torch.float32, device='meta'); y = torch.empty_like(x)\n"
        "r = predict_launch(k, (4,), y, x, 256, N_COLS=256, BLOCK=256, num_warps=4)\n"
        "print(json.dumps({k: r[k] for k in ('predicted_us', 'hbm_us', 'compulsory_bytes', 'programs', 'trips',"
        " 'regs', 'efficiency', 'bound', 'error', 'num_warps')}))\n")
    import json

    r = json.loads(out.strip().splitlines()[-1])
    assert r["error"] is None
    assert r["compulsory_bytes"] == 2 * 4 * 256 * 4  # x read once, y written once
    assert r["programs"] == 4 and r["trips"] == 1 and r["num_warps"] == 4
    assert 0 < r["regs"] <= 255
    assert r["efficiency"] == pytest.approx(4 / 132)
    assert r["predicted_us"] >= r["hbm_us"] > 0


def test_calibration_runs_on_a_few_rows(tmp_path):
    """The smallest row of a forward and a backward kernel of each set (a loop kernel among them): the
    report has every row, the fit names only fit kernels, the held-out rows are marked held-out."""
    data = tmp_path / "few.csv"
    lines = [line for line in C.DATA.read_text().splitlines() if not line.startswith("#")]
    header, body = lines[0], lines[1:]
    picked = []
    for key in (("layer_norm", "bwd"), ("relu_squared", "fwd"), ("megatron_rms_norm", "fwd"),
                ("megatron_swiglu", "bwd")):
        picked += [line for line in body if tuple(line.split(",")[:2]) == key][:1]
    assert len(picked) == 4
    data.write_text("\n".join([header, *picked]) + "\n")
    md = tmp_path / "cal.md"
    proc = subprocess.run([sys.executable, "-m", "drsformer_fast.perf.calibrate", "--data", str(data), "--markdown",
                           str(md)], cwd=ROOT, env=_no_interpret_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = md.read_text()
    for line in picked:
        kernel, pass_, dtype, rows, cols = line.split(",")[:5]
        assert f"| {kernel} | {rows}x{cols} | {dtype} | {pass_} | " in text
    assert f"fitted on: {', '.join(C.FIT_KERNELS)}" in text
    for k in C.HELD_OUT_KERNELS:
        assert f"| {k} |" in text and f"| {k} | " in text.split("## Every row")[1]
    held_rows = [ln for ln in text.splitlines() if "| held-out |" in ln and ln.startswith("| megatron")]
    assert held_rows and all(any(k in ln for k in C.HELD_OUT_KERNELS) for ln in held_rows)


def test_end_to_end_table_is_generated_not_typed():
    """README's prediction table is what the code gives for the committed calibration and host cost."""
    from drsformer_fast.perf import predict_model as P

    readme = (ROOT / "README.md").read_text()
    assert P.README_START in readme and P.README_END in readme
    section = readme.split(P.README_START)[1].split(P.README_END)[0]
    assert "A prediction, not a measurement" in section
    rows = P.predict(scenarios=P.SCENARIOS[:1], dtypes=("bf16",))
    table = P.format_table(rows, P.read_hostcost())
    for line in table.splitlines()[2:]:
        assert line in section, f"README's prediction row is not what the code gives now: {line}"


def test_kernel_times_without_a_gpu_says_so(tmp_path, capsys):
    import torch

    from drsformer_fast.perf import kernel_times

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: gpu_session.sh runs the measurement")
    assert kernel_times.main(["--json", str(tmp_path / "k.json"), "--dtypes", "fp32"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "k.json").exists()
    with pytest.raises(SystemExit):
        kernel_times.main(["--json", str(tmp_path / "k.json"), "--dtypes", "fp64"])


def test_loop_term_applies_only_to_a_program_per_sm():
    """Synthetic terms: 32 trips of 1 MB per program cost 32 x 1 MB / sm_gbps when 132 programs loop; the
    same loop in a grid of 4 programs per SM is charged as streaming (the regime the data do not cover)."""
    p = C.Params(bw_fraction=1.0, floor_us=0.0, latency_us=0.0, sm_gbps=16.0, host_us=0.0)
    base = {"hbm_us": 10.0, "compute_us": 0.0, "l1_us": 0.0, "trips": 32, "ctas_per_sm": 4}
    alone = {**base, "programs": 132, "efficiency": 0.25, "loaded_bytes": 132 * 32e6, "stored_bytes": 0}
    assert C.triton_time(alone, p) == pytest.approx(32 * 1e6 / 16e9 * 1e6)
    many = {**base, "programs": 528, "efficiency": 1.0, "loaded_bytes": 528 * 32e6, "stored_bytes": 0}
    assert C.triton_time(many, p) == pytest.approx(10.0)
    assert C.triton_time({**many, "trips": 1}, p) == pytest.approx(10.0)
