"""The static performance report's own arithmetic: SASS parsing, occupancy, grid efficiency, and the
work/bytes of one small launch counted in the interpreter (the compilation path is exercised by
tests/perf/test_compile_check.py, which compiles every captured launch through the same code)."""

import json

import pytest
import torch

from drsformer_fast.perf import launches as L
from drsformer_fast.perf import static_report as S

# sm_90 SASS of a kernel computing y[i] = x[i] * x[i + 1] + x[i] with 4 fp32 per thread: the aligned
# load is one LDG.E.128, the shifted one four scalar LDG.E (lanes 16 bytes apart)
SASS = """
        /*0120*/              @!P0 LDG.E R13, desc[UR4][R2.64+0x4] ;          /* 0x00000404020d8981 */
        /*0130*/              @!P0 LDG.E.128 R4, desc[UR4][R2.64] ;           /* 0x0000000402048981 */
        /*0140*/              @!P0 LDG.E R0, desc[UR4][R2.64+0x8] ;           /* 0x0000080402008981 */
        /*0150*/              @!P0 LDG.E R15, desc[UR4][R2.64+0xc] ;          /* 0x00000c04020f8981 */
        /*0160*/              @!P0 LDG.E R10, desc[UR4][R2.64+0x10] ;         /* 0x00001004020a8981 */
        /*0170*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR4][R4.64] ;  /* 0x0000000004037fae */
        /*0180*/                   FFMA R4, R13, R4, R4 ;                     /* 0x000000040d047223 */
        /*0190*/                   FFMA R5, R0, R5, R5 ;                      /* 0x0000000500057223 */
        /*01a0*/                   HMMA.1684.F32.TF32 R20, R4, R8, R20 ;      /* 0x000000080414723c */
        /*01b0*/                   HGMMA.64x64x8.F32.TF32 R24, gdesc[UR8], R24 ;  /* 0x00000000081879f0 */
        /*01d0*/                   STG.E.128 desc[UR4][R8.64], R4 ;           /* 0x0000000408007986 */
        /*01e0*/                   STG.E.U16 desc[UR4][R8.64], R4 ;           /* 0x0000000408007986 */
"""


def test_sass_counts():
    c = S.sass_counts(SASS)
    assert c["ldg"] == {"4": 4, "16": 1}
    assert c["ldgsts"] == {"16": 1}
    assert c["stg"] == {"2": 1, "16": 1}
    assert (c["ffma"], c["hmma"], c["hgmma"]) == (2, 1, 1)
    assert c["widest_bytes_per_lane"] == 16
    # 4 scalar loads touch 16 bytes per lane each, the two 128-bit ones 16: (4 * 16 + 2 * 16) / (4 * 4 + 2 * 16)
    assert c["l1_factor"] == pytest.approx(96 / 48)
    assert S.load_pattern(c) == "mixed 2v/4s+async"
    assert S.load_pattern(S.sass_counts(SASS.replace("LDG.E ", "LDG.E.64 "))) == "vector+async"


@pytest.mark.parametrize("regs, warps, shared, ctas, limiter", [
    (212, 8, 16384, 1, "registers"),  # 6912 registers per warp: 9 warps fit, one CTA of 8
    (128, 8, 0, 2, "registers"),  # the bound: 16 resident warps at 8 warps per CTA
    (64, 8, 2048, 4, "registers"),
    (70, 8, 0, 3, "registers"),  # 70 -> 72 per thread: 2304 per warp, 28 warps, 3 CTAs
    (32, 4, 0, 16, "warps"),  # 64 warps per SM at most
    (16, 1, 0, 32, "ctas"),  # 32 CTAs per SM at most
    (32, 4, 100 * 1024, 2, "shared"),  # 228 KB / (100 KB + 1 KB reserved)
])
def test_occupancy(regs, warps, shared, ctas, limiter):
    occ = S.occupancy(regs, warps, shared)
    assert (occ["ctas_per_sm"], occ["warps_per_sm"], occ["limited_by"]) == (ctas, ctas * warps, limiter)


def test_grid_efficiency():
    assert S.grid_efficiency(3, 5) == pytest.approx(3 / 132)  # 3 of 132 SMs busy
    assert S.grid_efficiency(132, 1) == 1.0
    assert S.grid_efficiency(1024, 1) == pytest.approx(1024 / 1056)  # 8 waves, the last one 76% full
    assert S.grid_efficiency(200, 2) == pytest.approx(200 / 264)


def test_layer_norm_launch_work_and_compulsory_bytes():
    """A LayerNorm forward at 1x48x16x32 (fake tensors, captured; one program run in the interpreter):
    its compulsory bytes are exactly x, y, mean, rstd, weight and bias, each once."""
    from drsformer_fast.kernels._utils import is_interpreter

    assert is_interpreter()  # tests/conftest.py: the interpreter runs the sampled program
    m = L.build_module("layernorm", 48, 1)
    fwd, bwd = L.capture(m, (1, 48, 16, 32), backward=False)
    assert [l.name for l in fwd] == ["_ln_fwd_kernel"] and not bwd
    launch = fwd[0]
    work = S.count_work(launch)
    elems, pixels = 48 * 16 * 32, 16 * 32
    expected = 2 * elems * 4 + 2 * pixels * 4 + 2 * 48 * 4
    model = S.predict(launch.programs, 8, {"regs": 64, "shared": 0, "sass": {"l1_factor": 1.0}}, work)
    assert model["compulsory_bytes"] == expected
    assert model["loaded_bytes"] >= elems * 4 and model["stored_bytes"] >= elems * 4
    assert model["ffma"] > elems  # normalise and scale: several float ops per element
    assert model["hbm_us"] == pytest.approx(expected / S.HBM_BYTES_PER_S * 1e6)
    assert model["predicted_us"] >= model["hbm_us"]


def test_word_loads_and_fused_multiply_adds_are_counted_once():
    """The FFN's stage-1 depthwise convs in fp16 at an even width run the word kernel: its 4-byte
    loads and stores of two fp16 pixels count every byte (compulsory = y, both outputs and both
    weights, each exactly once), and each tap's ``acc += w * x`` counts one FFMA, not two."""
    from drsformer_fast.kernels._utils import is_interpreter
    from drsformer_fast.kernels.dwconv import WORDS_BLOCK_Q

    assert is_interpreter()
    m = L.build_module("feedforward", 8, 1, torch.float16)
    fwd, _ = L.capture(m, (1, 8, 6, 20), backward=False)
    launch = next(l for l in fwd if l.name == "_dw_fwd_words_kernel")
    work = S.count_work(launch)
    channels = 2 * m.hidden_features  # y: the 3x3 and the 5x5 branch read the same 2h channels
    plane = 6 * 20 * 2  # fp16 bytes of one channel
    expected = 3 * channels * plane + channels * (9 + 25) * 4
    model = S.predict(launch.programs, 8, {"regs": 64, "shared": 0, "sass": {"l1_factor": 1.0}}, work)
    assert model["compulsory_bytes"] == expected
    # every lane of the program's quad tile (the GPU's: captures take the GPU's tiles; masked lanes
    # included, as on the GPU): 9 + 25 taps x 4 pixels
    assert work["program"]["ffma"] == (9 + 25) * 4 * WORDS_BLOCK_Q


def test_markdown_and_json_round_trip():
    """The markdown renders every launch, and --from-json renders the same from the saved rows."""
    work = {"program": {"load_bytes": 4096, "store_bytes": 4096, "ffma": 2048, "dot": {"tf32": 1 << 20}},
            "tensors": {"x_ptr": {"program_bytes": 4096, "extent_bytes": 1 << 22},
                        "y_ptr": {"program_bytes": 4096, "extent_bytes": 1 << 22}}}
    comp = {"regs": 100, "shared": 8192, "local": 0, "stack": 0,
            "sass": S.sass_counts(SASS)}
    rows = []
    for i, (kernel, programs) in enumerate((("_a_kernel", 1024), ("_b_kernel", 3))):
        row = S.Row("infer256-enc1-1x48x256x256", "enc1", "infer256", "fp32", "fwd", i, kernel, f"{kernel}(X=1;w4,s3)",
                    (programs, 1, 1), programs, 4, 3, 1 << 24, comp, work)
        row.model = S.predict(programs, 4, comp, work)
        rows.append(row)
    assert rows[1].model["predicted_us"] > rows[0].model["predicted_us"] / 100  # 3 programs: 3 of 132 SMs
    md = S.format_markdown(rows, 90, {"triton": "x"})
    assert "_a_kernel" in md and "_b_kernel" in md and "| 1024 |" in md
    saved = json.loads(json.dumps([S._row_json(r) for r in rows], default=str))
    again = S.format_markdown([S._row_from_json(r) for r in saved], 90, {"triton": "x"})
    assert again == md


# Two tiny stencils for the L1 rule, compiled for sm_90 in a process without the interpreter (it
# compiles nothing, and its jit helpers such as tl.sum's combine function break in-process compiles).
# STENCIL: y = x[n - 1] + x[n + 1] on a [BLOCK_C, BLOCK_N] tile; the aligned store makes the coalesce
# pass give every tile 4 fp32 per thread, so the shifted taps are scalar loads with lanes 16 B apart.
# With HINT the pixel offsets claim no divisibility: 1 per thread, lanes 4 B apart; a [BLOCK_C] bias
# (a slice layout: one address per warp) and a 16-B vector weight load in its own layout stay beside.
_STENCIL = '''
import triton
import triton.language as tl


@triton.jit
def _stencil_kernel(x_ptr, w_ptr, b_ptr, y_ptr, N, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
                    HINT: tl.constexpr):
    o_c = tl.arange(0, BLOCK_C)
    o_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    if HINT:
        o_n = tl.multiple_of(o_n, 1)
    m = (o_n < N)[None, :]
    p_x = x_ptr + o_c[:, None] * N + o_n[None, :]
    b_y = tl.load(p_x - 1, mask=m & (o_n >= 1)[None, :], other=0.0)
    b_y += tl.load(p_x + 1, mask=m & (o_n + 1 < N)[None, :], other=0.0)
    if HINT:
        b_y += tl.load(b_ptr + o_c)[:, None]
        b_y += tl.sum(tl.load(w_ptr + tl.arange(0, 128)))
    tl.store(y_ptr + o_c[:, None] * N + o_n[None, :], b_y, mask=m)
'''

_COMPILE_STENCILS = '''
import json, sys
from types import SimpleNamespace
from drsformer_fast.perf import static_report as S

rows = {}
for hint in (False, True):
    spec = SimpleNamespace(
        module="l1_stencil", kernel="_stencil_kernel", num_warps=1, num_stages=3,
        signature=(("x_ptr", "*fp32"), ("w_ptr", "*fp32"), ("b_ptr", "*fp32"), ("y_ptr", "*fp32"), ("N", "i32"),
                   ("BLOCK_C", "constexpr"), ("BLOCK_N", "constexpr"), ("HINT", "constexpr")),
        constexprs=(((5,), 4), ((6,), 128), ((7,), hint)),
        attrs=tuple(((i,), (("tt.divisibility", 16),)) for i in range(5)),
        options=(("num_warps", 1), ("num_stages", 3)))
    rows[str(hint)] = S.compile_spec(spec, 90)
json.dump(rows, sys.stdout)
'''


def _compile_in_subprocess(d, module: str, source: str, script: str) -> dict:
    """Write ``source`` as ``d/<module>.py`` and run ``script`` (which prints JSON) in a process
    without the interpreter, ``d`` on its path."""
    import os
    import subprocess
    import sys

    (d / f"{module}.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(d), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def stencil_rows(tmp_path_factory):
    return _compile_in_subprocess(tmp_path_factory.mktemp("l1"), "l1_stencil", _STENCIL, _COMPILE_STENCILS)


def test_l1_layout_rule_strided_taps(stencil_rows):
    """Without the hint both rules agree: every load is a shifted scalar tap whose lanes are 16 B apart."""
    row = stencil_rows["False"]
    assert "error" not in row, row.get("error")
    assert set(row["sass"]["stg"]) == {"16"} and set(row["sass"]["ldg"]) == {"4"}  # 16-B stores, scalar taps
    assert row["l1"]["fell_back"] == 0 and row["l1"]["l1_rule"] == "layout" and row["l1"]["counted"] == "sass"
    assert row["l1"]["loads"] == sum(row["sass"]["ldg"].values())
    assert row["l1"]["l1_factor"] == pytest.approx(4.0)
    assert row["l1"]["l1_factor_per_warp"] == pytest.approx(4.0)  # 32 lanes x 16 B: 4 wavefronts for 1
    assert row["sass"]["l1_factor"] == pytest.approx(4.0)


def test_l1_layout_rule_coalesced_taps_beside_a_vector_load(stencil_rows):
    """With the hint the taps are coalesced (lanes 4 B apart) and the bias a broadcast: factor 1, where the
    widest rule, seeing the 16-B weight load, still charges every scalar load 4x."""
    row = stencil_rows["True"]
    assert "error" not in row, row.get("error")
    assert "16" in row["sass"]["ldg"] and row["l1"]["widest_bytes_per_lane"] == 16  # the vector weight load
    assert row["l1"]["fell_back"] == 0 and row["l1"]["l1_rule"] == "layout"
    assert row["l1"]["l1_factor"] == pytest.approx(1.0)
    assert row["l1"]["l1_factor_per_warp"] > 1.01  # the bias loads: a whole wavefront per warp for 4 bytes each
    assert row["sass"]["l1_factor"] > 3.0
    model = S.predict(1, 1, row, {"program": {"load_bytes": 1280, "store_bytes": 2048, "ffma": 0, "dot": {}},
                                  "tensors": {}})
    # the prediction charges the per-warp factor (broadcast loads at their full wavefront)
    assert (model["l1_factor"], model["l1_rule"]) == (row["l1"]["l1_factor_per_warp"], "layout")


_BLOCKED = {"taps": {"sizePerThread": [1, 4], "threadsPerWarp": [1, 32], "order": [1, 0]},
            "rows": {"sizePerThread": [1, 1], "threadsPerWarp": [32, 1], "order": [1, 0]}}


@pytest.mark.parametrize("layout, shape, elem, spacing", [
    ("#taps", (16, 128), 4, 16),  # 4 per thread along the pixels: lanes 16 B apart
    ("#taps", (16, 128), 2, 8),
    ("#ttg.slice<{dim = 1, parent = #taps}>", (16,), 4, 0),  # the lanes' dim is sliced away: one address
    ("#ttg.slice<{dim = 0, parent = #taps}>", (128,), 4, 16),
    ("#taps", (16, 4), 4, 0),  # 4 pixels: one thread's worth, the other lanes repeat it
    ("#rows", (32, 8), 4, None),  # lanes step across rows: their stride is not in the layout
    ("#ttg.slice<{dim = 1, parent = #mma}>", (64,), 4, None),  # not a blocked parent
    ("#taps", (), 4, 0),  # a scalar
])
def test_lane_spacing(layout, shape, elem, spacing):
    assert S.lane_spacing(layout, shape, elem, _BLOCKED) == spacing


# A kernel that needs ~200 registers per thread at 16 warps (every element of two tiles live across a
# reduction), compiled for sm_90 with an explicit maxnreg of 255 and with register_cap(16).
_WIDE = '''
import triton
import triton.language as tl


@triton.jit
def _wide_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr, EXTRA: tl.constexpr):
    o = tl.arange(0, BLOCK)
    e = tl.arange(0, EXTRA)
    b_x = tl.load(x_ptr + o)
    b_e = tl.load(x_ptr + BLOCK + e)
    s = tl.sum(b_x * b_x, axis=0) + tl.sum(b_e * b_e, axis=0)
    tl.store(y_ptr + o, b_x * s)
    tl.store(y_ptr + BLOCK + e, b_e * s)
'''

_COMPILE_WIDE = '''
import json, sys
from types import SimpleNamespace
from drsformer_fast.perf import static_report as S
from drsformer_fast.kernels._utils import register_cap

rows = {}
for maxnreg in (255, register_cap(16)):
    spec = SimpleNamespace(
        module="wide_kernel", kernel="_wide_kernel", num_warps=16, num_stages=3,
        signature=(("x_ptr", "*fp32"), ("y_ptr", "*fp32"), ("BLOCK", "constexpr"), ("EXTRA", "constexpr")),
        constexprs=(((2,), 512 * 128), ((3,), 512 * 16)),
        attrs=tuple(((i,), (("tt.divisibility", 16),)) for i in range(2)),
        options=(("num_warps", 16), ("num_stages", 3), ("maxnreg", maxnreg)))
    rows[maxnreg] = S.compile_spec(spec, 90, sass=False)
json.dump(rows, sys.stdout)
'''


def test_a_cta_beyond_the_register_file_is_refused(tmp_path):
    """ptxas honours an explicit maxnreg above what 16 warps leave per thread (65536 / 512 = 128): the
    kernel compiles but could not launch. The compile check (compile_spec) refuses it; capped with
    register_cap(16) the same kernel fits (and spills, which the check refuses for its own reason)."""
    rows = _compile_in_subprocess(tmp_path, "wide_kernel", _WIDE, _COMPILE_WIDE)
    uncapped, capped = rows["255"], rows["128"]
    assert uncapped["regs"] > 128 and "cannot launch" in uncapped.get("error", ""), uncapped
    assert capped["regs"] <= 128 and "cannot launch" not in capped.get("error", ""), capped
