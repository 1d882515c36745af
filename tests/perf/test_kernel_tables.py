"""The kernel modules' launch tables (``scripts/kernel_tables.py``) and the static report's launch data
they are generated from (``benchmarks/results/static-sm90-launches.json``)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from drsformer_fast.perf import static_report

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location("kernel_tables", ROOT / "scripts" / "kernel_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kt = _load_script()


def test_kernel_docstring_tables_are_current():
    """Every kernel module's launch table is what the generator writes from the committed launch data."""
    stale = [p.name for p, (old, new) in kt.render(kt.load_launches()).items() if old != new]
    assert not stale, f"launch tables out of date in {stale}: run python scripts/kernel_tables.py"


def test_check_fails_on_a_changed_table_and_the_rewrite_restores_it(tmp_path, capsys):
    for name in kt.MODULES:
        shutil.copy(ROOT / "kernels" / f"{name}.py", tmp_path / f"{name}.py")
    path = tmp_path / "layernorm.py"
    text = path.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| _ln_fwd_kernel |"))
    cells = row.split(" | ")
    cells[7] = str(int(cells[7]) + 1)  # the registers
    path.write_text(text.replace(row, " | ".join(cells)))
    assert kt.main(["--check", "--kernels", str(tmp_path)]) == 1
    assert "layernorm.py: its launch table differs" in capsys.readouterr().err
    assert path.read_text() != text  # --check compares only
    assert kt.main(["--kernels", str(tmp_path), "--only", "layernorm"]) == 0
    assert path.read_text() == text
    assert kt.main(["--check", "--kernels", str(tmp_path)]) == 0


def test_missing_markers_are_an_error(tmp_path, capsys):
    for name in kt.MODULES:
        shutil.copy(ROOT / "kernels" / f"{name}.py", tmp_path / f"{name}.py")
    path = tmp_path / "dwconv.py"
    path.write_text(path.read_text().replace(kt.TABLE_END, ""))
    assert kt.main(["--check", "--kernels", str(tmp_path)]) == 2
    assert "dwconv.py: no single" in capsys.readouterr().err


def test_every_launched_kernel_has_rows_in_its_own_module():
    """Each kernel the data launches at the tables' shapes appears in the table of the module that
    defines it, and in no other."""
    launches = kt.load_launches()
    shown = {r["kernel"] for r in launches
             if r["shape"].startswith(kt.BLOCK_PREFIX) or r["shape"] == kt.MODEL_SHAPE}
    assert len(shown) >= 20
    owners = {}
    for name in kt.MODULES:
        text = (ROOT / "kernels" / f"{name}.py").read_text()
        table = text[text.index(kt.TABLE_START):text.index(kt.TABLE_END)]
        in_table = set(re.findall(r"^\| (\w+) \|", table, re.M)) - {"kernel"}
        assert in_table <= set(kt.module_kernels(text)), name
        for kernel in in_table:
            assert kernel not in owners, (kernel, owners.get(kernel), name)
            owners[kernel] = name
    assert shown == set(owners)


def test_selection_takes_the_heaviest_launch_and_drops_a_repeat():
    def row(shape, dtype, pass_, index, config, predicted, grid=(4, 1, 1)):
        return {"shape": shape, "dtype": dtype, "pass": pass_, "index": index, "kernel": "_k", "config": config,
                "grid": list(grid), "predicted_us": predicted}

    launches = [
        row("infer256-enc1-1x48x256x256", "fp32", "fwd", 0, "fp32: BLOCK_N=8;w4,s3", 2.0),
        row("infer256-dec1-1x96x256x256", "fp32", "fwd", 0, "fp32: BLOCK_N=8;w4,s3", 5.0, (8, 1, 1)),
        row("infer256-dec1-1x96x256x256", "fp32", "bwd", 3, "fp32: BLOCK_N=8;w4,s3", 5.0, (8, 1, 1)),
        row("train4x128-dec1-4x96x128x128", "fp32", "fwd", 0, "fp32: BLOCK_N=8;w4,s3", 9.0),
        row(kt.MODEL_SHAPE, "fp32", "fwd", 7, "fp32: BLOCK_N=8;w4,s3", 50.0),
        row("infer256-enc1-1x48x256x256", "bf16", "bwd", 2, "bf16: BLOCK_N=16;w4,s3", 1.0),
        row("infer256-dec1-1x96x256x256", "bf16", "fwd", 1, "fp32: BLOCK_N=8;w4,s3", 5.0, (8, 1, 1)),
    ]
    chosen = kt.select_rows(launches, ["_k"])
    assert [(r["shape"], r["dtype"], r["pass"]) for r in chosen] == [
        ("infer256-dec1-1x96x256x256", "fp32", "fwd"), ("infer256-enc1-1x48x256x256", "bf16", "bwd")]
    # a kernel only the whole model launches takes its model rows
    model_only = [dict(r, kernel="_m") for r in launches if r["shape"] == kt.MODEL_SHAPE]
    assert [r["index"] for r in kt.select_rows(model_only, ["_m"])] == [7]
    assert kt._tile_cell("bf16,fp32: HEADS=1,BLOCK_C=64,BLOCK_N=32,ITERS=16;w8,s3") == "C64 N32"


def _row(**model):
    return static_report.Row(
        "infer256-enc1-1x48x256x256", "1", "infer256", "fp32", "fwd", 0, "_ln_fwd_kernel",
        "_ln_fwd_kernel[fp32](HAS_BIAS=True,BLOCK_C=64,BLOCK_N=64;w8,s3)", (1024, 1, 1), 1024, 8, 3, 10**8,
        {"regs": 60, "shared": 2048, "local": 0, "stack": 8}, {},
        {"compulsory_bytes": 25_700_000, "hbm_us": 7.6716, "predicted_us": 7.9, "bound": "hbm", "warps_per_sm": 32,
         **model})


def test_launch_data_rows_follow_their_fields(tmp_path):
    data = static_report.launch_data([_row(), _row(predicted_us=9.25)], 90, {"triton": "3.9.0"})
    path = tmp_path / "launches.json"
    static_report.write_launch_data(str(path), data)
    assert json.loads(path.read_text()) == data
    assert sum(line.startswith("[") for line in path.read_text().splitlines()) == 2  # one line per launch
    rows = [dict(zip(data["fields"], r, strict=True)) for r in data["rows"]]
    assert rows[0]["config"] == "fp32: HAS_BIAS=True,BLOCK_C=64,BLOCK_N=64;w8,s3"
    assert (rows[0]["regs"], rows[0]["spill"], rows[0]["compulsory_mb"], rows[0]["roofline_us"]) == (60, 8, 25.7, 7.672)
    assert [r["predicted_us"] for r in rows] == [7.9, 9.25]
    assert rows[0]["grid"] == [1024, 1, 1] and rows[0]["pass"] == "fwd"


def test_committed_launch_data_is_the_committed_report():
    """static-sm90.md and its launch data come from one static report run: every per-launch row of a
    block shape in the markdown has the data's registers and predicted time."""
    launches = {(r["shape"], r["dtype"], r["pass"], r["index"]): r for r in kt.load_launches()}
    section, seen = None, 0
    for line in kt.REPORT.read_text().splitlines():
        m = re.fullmatch(r"## (\S+) (fp32|bf16|fp16) (fwd|bwd)", line)
        if m:
            section = m.groups()
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if section and len(cells) == 18 and cells[0].isdigit():
            r = launches[(*section, int(cells[0]))]
            assert (r["kernel"], str(r["regs"])) == (cells[1], cells[7]), line
            assert abs(r["predicted_us"] - float(cells[15])) <= 0.05 + 1e-9, line
            seen += 1
    assert seen == sum(1 for k in launches if k[0] != kt.MODEL_SHAPE and not k[0].startswith("model-"))
    assert seen > 300


@pytest.mark.parametrize("argv", [["--check", "--regenerate"], ["--only", "nosuch"]])
def test_bad_arguments_exit_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        kt.main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err
