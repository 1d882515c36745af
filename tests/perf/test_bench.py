"""``drsformer-fast bench`` and the accounting behind its no-GPU figures.

Benchmarks measure, tests assert: nothing here asserts on a timing. The GPU path's logic and
formatting are tested on the CPU with the timers replaced (tiny models, no compilation); the real
GPU run is skipped without CUDA.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import GPU_MODE

from drsformer_fast import _dispatch, cli
from drsformer_fast import kernels as K
from drsformer_fast import reference as R
from drsformer_fast.modules import ChannelLayerNorm, TopKSparseAttention
from drsformer_fast.perf import accounting, bench, benchmarking

HAVE_FAST_MODEL = bench.fast_unavailable_reason() is None
TINY = {"inp_channels": 3, "out_channels": 3, "dim": 8, "num_blocks": [1, 1, 1, 1], "heads": [1, 2, 2, 4],
        "ffn_expansion_factor": 2.66, "bias": False, "LayerNorm_type": "WithBias", "mefc": True}


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


# --------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------


def test_scenarios_parse():
    assert bench.parse_scenario("infer256") == bench.Scenario("infer256", "inference", 1, 256)
    assert bench.parse_scenario("train4x128") == bench.Scenario("train4x128", "training", 4, 128)
    assert bench.parse_scenario("infer1x512").name == "infer512"
    assert [s.name for s in bench.parse_scenarios("infer256, train2x128,infer256")] == ["infer256", "train2x128"]
    for bad in ("foo", "infer", "train4x100", "infer0", "train0x128", "infer256x"):
        with pytest.raises(bench.BenchError):
            bench.parse_scenario(bad)
    assert bench.parse_dtypes("bf16,fp32") == ["bf16", "fp32"]
    assert bench.parse_implementations("fast,original") == ["fast", "original"]


def test_bench_options_parse():
    args = cli.build_parser().parse_args(
        ["bench", "--shapes", "infer512,train2x64", "--dtype", "bf16", "--impl", "original,fast-compiled",
         "--repeats", "7", "--warmup", "0", "--variant", "without-mefc", "--json", "x.json"])
    assert [s.name for s in args.shapes] == ["infer512", "train2x64"]
    assert args.dtype == ["bf16"] and args.impl == ["original", "fast-compiled"]
    assert (args.repeats, args.warmup, args.variant, args.json) == (7, 0, "without-mefc", "x.json")
    defaults = cli.build_parser().parse_args(["bench"])
    assert defaults.shapes is None and defaults.dtype == ["fp32", "bf16"] and defaults.impl is None
    assert bench.parse_implementations(bench.DEFAULT_IMPLEMENTATIONS) == [
        "original", "original-compiled", "fast", "fast-compiled", "fast-graphed"]


@pytest.mark.parametrize("extra, expected", [
    ([], ["original", "original-compiled", "fast", "fast-compiled", "fast-graphed"]),
    (["--no-cuda-graphs"], ["original", "original-compiled", "fast", "fast-compiled"]),
    (["--impl", "fast,fast-graphed,original-graphed", "--no-cuda-graphs"], ["fast"]),
    (["--impl", "fast-reduce-overhead,original-graphed"], ["fast-reduce-overhead", "original-graphed"]),
])
def test_gpu_bench_implementations_and_no_cuda_graphs(monkeypatch, capsys, extra, expected):
    """What the GPU path is asked to measure (the measurement itself is stubbed: no GPU here)."""
    asked = []

    def run_gpu(scenarios, dtypes, impls, **kw):
        asked.append(impls)
        return {"results": []}

    monkeypatch.setattr(cli, "_has_cuda", lambda: True)
    monkeypatch.setattr(cli, "_cuda_name", lambda: "a GPU")
    monkeypatch.setattr(bench, "run_gpu", run_gpu)
    monkeypatch.setattr(bench, "format_gpu_markdown", lambda result: "table")
    assert cli.main(["bench", *extra]) == 0
    assert asked == [expected]


def test_gpu_bench_refuses_no_cuda_graphs_with_only_graphed(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_has_cuda", lambda: True)
    assert cli.main(["bench", "--impl", "fast-graphed", "--no-cuda-graphs"]) == 2
    assert capsys.readouterr().err.strip() == (
        "drsformer-fast: error: --no-cuda-graphs leaves no implementation to measure")


@pytest.mark.parametrize("argv, message", [
    (["--shapes", "infer255"], "multiple of 8"),
    (["--shapes", "big"], "unknown shape"),
    (["--dtype", "fp16"], "unknown dtype 'fp16'"),
    (["--impl", "fast,turbo"], "unknown implementation 'turbo'"),
    (["--repeats", "0"], "at least 1"),
    (["--warmup", "x"], "not an integer"),
    (["--variant", "small"], "invalid choice"),
])
def test_bench_bad_options_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bench_missing_output_folder(tmp_path, capsys):
    for option in ("--json", "--markdown"):
        assert cli.main(["bench", "--interpreter", option, str(tmp_path / "nope" / "out")]) == 2
        err = capsys.readouterr().err
        assert f"folder of {option}" in err and "does not exist" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------
# accounting: the docstrings' byte tables, launch counting
# --------------------------------------------------------------------------------------------


def _prose(doc: str) -> str:
    """The docstring with its line breaks and runs of spaces as single spaces."""
    return " ".join(doc.split())


def _doc_number(doc: str, pattern: str) -> int:
    m = re.search(pattern, _prose(doc))
    assert m, f"{pattern!r} not found in the docstring"
    return int(m.group(1))


def test_attention_bytes_match_the_kernel_docstring(device):
    """Level 1 at 256x256 (d = 48, fp32): the original's forward moves 45 units of d*N*4 bytes, the
    fused forward 8 (+1 with the residual), the fused backward 29, as ``kernels/attention.py`` says."""
    doc = K.attention.__doc__
    shape = (1, 48, 256, 256)
    unit = 48 * 256 * 256 * 4
    assert "one unit = d*N*4 B = 12.6 MB" in _prose(doc) and round(unit / 1e6, 1) == 12.6
    orig_u = _doc_number(doc, r"the original's forward moves (\d+) units")
    fwd_u = _doc_number(doc, r"the fused forward (\d+) \(")
    bwd_u = _doc_number(doc, r"the fused backward (\d+) \(")
    assert _doc_number(doc, r"the fused forward \d+ \([^)]*\+(\d+) with the residual\)") == 1

    fused_fwd = sum(k.total for k in accounting.attention_bytes(shape))
    fused_bwd = sum(k.total for k in accounting.attention_bytes(shape, backward=True))
    assert fused_fwd == fwd_u * unit
    assert fused_bwd == bwd_u * unit
    assert sum(k.total for k in accounting.attention_bytes(shape, residual=True)) == (fwd_u + 1) * unit

    # the original, counted op by op, is the docstring's 45 units (+ its C x C matrices)
    orig = R.Attention(48, 1, False).to(device)
    prof = accounting.profile(orig, shape, backward=False).summary()
    assert orig_u * unit <= prof["bytes_forward"] < (orig_u + 0.1) * unit
    # and the fast module's forward is charged exactly the fused kernels' bytes
    fast = accounting.profile(TopKSparseAttention.from_original(orig), shape, backward=False).summary()
    assert fast["bytes_forward"] == fwd_u * unit


def test_layer_norm_bytes_match_the_kernel_docstring():
    doc = K.layernorm.__doc__
    fwd = _doc_number(doc, r"forward reads x and writes y \(\+ 8 B per pixel of mean and rstd\): (\d+) B;")
    bwd = _doc_number(doc, r"backward reads x and dy and writes dx: (\d+) B\.")
    B, C, H, W = 2, 48, 64, 32
    elems, pixels = B * C * H * W, B * H * W
    f = accounting.layer_norm_bytes((B, C, H, W))
    b = accounting.layer_norm_bytes((B, C, H, W), backward=True)
    assert sum(k.total for k in f) == fwd * elems + 8 * pixels  # + mean/rstd, 8 bytes per pixel
    assert sum(k.total for k in b) == bwd * elems + 8 * pixels
    assert sum(k.total for k in accounting.layer_norm_bytes((B, C, H, W), 2)) == fwd // 2 * elems + 8 * pixels


def test_feedforward_bytes_match_the_kernel_module():
    """Level 1 at 256x256 (d = 48, h = 127, fp32): fused forward 2d + 12h planes (1620) = 0.42 GB and
    backward 5d + 40h planes = 1.39 GB, as ``kernels/feedforward.py`` writes them; the backward as its
    ``traffic_bytes`` computes it."""
    from drsformer_fast.perf.benchmarking import ffn_hidden

    doc = K.feedforward.__doc__
    shape, h = (1, 48, 256, 256), ffn_hidden(48)
    plane = 256 * 256 * 4
    fwd = sum(k.total for k in accounting.feedforward_bytes(shape, h))
    assert fwd == (2 * 48 + 12 * h) * plane == 1620 * plane and round(fwd / 1e9, 2) == 0.42
    assert "(2d + 12h planes: 0.42 GB at level 1, 256x256, fp32)" in _prose(doc)
    assert "backward 5d + 40h (1.39 GB)" in _prose(doc)
    assert sum(k.total for k in accounting.feedforward_bytes(shape, h, residual=True)) == (1620 + 48) * plane
    bwd = sum(k.total for k in accounting.feedforward_bytes(shape, h, backward=True))
    assert bwd == (5 * 48 + 40 * h) * plane and round(bwd / 1e9, 2) == 1.39
    no_dx = sum(k.total for k in accounting.feedforward_bytes(shape, h, backward=True, input_grad=False))
    assert bwd - no_dx == (2 * h + 48) * plane  # dx = W_in^T dy: read dy, write dx

    traffic = getattr(K.feedforward, "traffic_bytes", None)
    if traffic is None:
        pytest.skip("kernels.feedforward.traffic_bytes is not in this build (its backward table in main predates "
                    "the uv buffer the backward writes)")
    for B, d, H, W in ((1, 48, 256, 256), (4, 96, 64, 64), (2, 384, 16, 16)):
        hid = ffn_hidden(d)
        for residual in (False, True):
            t = traffic(B, d, H, W, hid, 4, residual=residual)
            assert sum(k.total for k in accounting.feedforward_bytes((B, d, H, W), hid, residual=residual)) \
                == t["fused_fwd"]
        assert sum(k.total for k in accounting.feedforward_bytes((B, d, H, W), hid, backward=True)) == t["fused_bwd"]


def test_broadcast_inputs_count_their_memory():
    x = torch.zeros(4, 1).expand(4, 1000)
    assert accounting.tensor_bytes(x) == 16
    assert accounting.tensor_bytes(torch.zeros(3, 5, dtype=torch.float16)) == 30


def test_every_custom_op_has_a_byte_model():
    import drsformer_fast.ops  # noqa: F401 (registers the ops)

    ops = [name for name in dir(torch.ops.drsformer_fast) if not name.startswith("_")]
    ops = [n for n in ops if isinstance(getattr(torch.ops.drsformer_fast, n), torch._ops.OpOverloadPacket)]
    assert ops and set(ops) <= set(accounting.FUSED_OP_BYTES), set(ops) - set(accounting.FUSED_OP_BYTES)


@pytest.mark.parametrize("batch", [1, 2])
def test_fake_launch_counts_equal_real_execution(batch, device):
    """The figures count launches on fake tensors (Triton launches counted, not run); the same
    forward and backward executed in Triton's interpreter launch exactly the same, op for op."""
    kinds = ["layernorm", "attention"] + (["feedforward", "block"] if HAVE_FAST_MODEL else [])
    names = []
    for kind in kinds:
        torch.manual_seed(0)
        for module in bench._block_modules(kind, 16, 2):
            module = module.to(device)
            fake = accounting.profile(module, (batch, 16, 6, 5))
            real = accounting.profile(module, torch.randn(batch, 16, 6, 5, device=device), fake=False)
            assert [r.name for r in fake.forward] == [r.name for r in real.forward], kind
            assert [r.name for r in fake.backward] == [r.name for r in real.backward], kind
            assert fake.summary() == real.summary(), kind
            names += [r.name for r in fake.forward + fake.backward if r.kind == "triton"]
    # the fast path's Triton kernels are among what is counted
    assert "_attn_qk_gram_kernel" in names and "_attn_dqk_kernel" in names and "_ln_bwd_kernel" in names


def test_fused_blocks_launch_less_and_move_fewer_bytes(device):
    ln, attn = R.LayerNorm(48, "WithBias").to(device), R.Attention(96, 2, False).to(device)
    for orig, fast, shape in [(ln, ChannelLayerNorm.from_original(ln), (2, 48, 64, 64)),
                              (attn, TopKSparseAttention.from_original(attn), (2, 96, 64, 64))]:
        o, f = accounting.profile(orig, shape).summary(), accounting.profile(fast, shape).summary()
        for key in o:
            assert 0 < f[key] < o[key], (type(orig).__name__, key, o[key], f[key])


# --------------------------------------------------------------------------------------------
# the no-GPU bench, end to end
# --------------------------------------------------------------------------------------------


def test_no_gpu_bench_end_to_end(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: bench takes the timing path")
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    code = cli.main(["bench", "--shapes", "infer256,train2x128", "--json", str(out), "--markdown", str(md),
                     "--host-cost-repeats", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Timings need an NVIDIA GPU" in captured.out
    assert "checks within bounds" in captured.out and "| infer256-enc1-1x48x256x256 | attention |" in captured.out
    assert "self-check layer_norm " in captured.err and "self-check mefc " in captured.err  # progress per case

    result = json.loads(out.read_text())
    assert {"mode", "note", "environment", "model", "methods", "selfcheck", "blocks", "whole_model"} <= set(result)
    assert result["mode"] == "no-gpu" and "NVIDIA GPU" in result["note"]
    env = result["environment"]
    assert {"date", "torch", "triton", "cuda", "device", "git_commit"} <= set(env)
    assert result["selfcheck"]["passed"] == result["selfcheck"]["total"] > 0
    assert md.read_text().startswith("### drsformer-fast: device-independent figures")
    # the host cost of both models (a fresh process: Triton's launch path on a no-op CUDA driver)
    host = result["host_cost"]
    if "unavailable" in host:
        assert shutil.which("cc") is None and shutil.which("gcc") is None, host  # only for want of a compiler
    else:
        assert [r["scenario"] for r in host["rows"]] == ["infer", "train2", "train4"]
        for r in host["rows"]:
            assert r["original_host_ms"] > 0 and r["fast_host_ms"] > 0
            assert r["fast_launches"]["triton"] > 0 and r["original_launches"]["triton"] == 0
            assert 0 < r["fast_launches"]["aten"] < r["original_launches"]["aten"]
        assert "| infer | 1x3x8x8 | forward |" in md.read_text()

    # one row per infer256 block shape and block kind (train2x128 is not a block-shape scenario)
    shapes = [s for s in benchmarking.block_shapes() if s.scenario == "infer256"]
    assert [(r["shape"], r["block"]) for r in result["blocks"]] == [(s.id, b) for s in shapes for b in bench.BLOCKS]
    for row in result["blocks"]:
        o, f = row["original"], row["fast"]
        assert all(o[k] > 0 for k in ("saved_bytes", "bytes_forward", "bytes_forward_backward",
                                      "launches_forward", "launches_forward_backward"))
        if row["block"] in ("layernorm", "attention") or HAVE_FAST_MODEL:
            for key in ("saved_bytes", "bytes_forward", "bytes_forward_backward", "launches_forward",
                        "launches_forward_backward"):
                if row["block"] == "feedforward" and key == "launches_forward_backward":
                    # measured, not asserted: the fused feed-forward's forward+backward launches about as
                    # many kernels as the original (zero fills for absent biases on every call, clones in
                    # its batched einsums), though it moves about half the bytes
                    assert f[key] > 0
                    continue
                assert 0 < f[key] < o[key], (row["shape"], row["block"], key)
            assert f["fused_kernels"]["forward"] and f["fused_kernels"]["backward"]
        else:
            assert f is None and "feed-forward" in row["fast_unavailable"]

    # one MEFC row per infer256 MEFC shape: the fused compensator saves and moves less
    mefc = [s for s in benchmarking.mefc_shapes() if s.scenario == "infer256"]
    assert [r["shape"] for r in result["mefc"]] == [s.id for s in mefc]
    for row in result["mefc"]:
        o, f = row["original"], row["fast"]
        for key in ("saved_bytes", "bytes_forward", "bytes_forward_backward", "launches_forward"):
            assert 0 < f[key] < o[key], (row["shape"], key)
        assert f["fused_kernels"]["forward"] and f["fused_kernels"]["backward"]
    assert "| infer256-enc0-1x48x256x256 |" in captured.out

    models = {r["scenario"]: r for r in result["whole_model"]}
    assert set(models) == {"infer256", "train2x128"}
    assert models["infer256"]["original"]["saved_bytes"] is None  # inference: forward only
    assert "launches_forward_backward" not in models["infer256"]["original"]
    train = models["train2x128"]["original"]
    assert 5e9 < train["saved_bytes"] < 20e9  # SPEC: about 10.5 GB for 2x3x128x128
    assert train["launches_forward_backward"] > train["launches_forward"] > 1000
    if HAVE_FAST_MODEL:
        for row in models.values():
            for key, value in row["fast"].items():
                if key != "fused_kernels" and value is not None:
                    assert 0 < value < row["original"][key], (row["scenario"], key)
    else:
        assert all(r["fast"] is None for r in models.values())


# --------------------------------------------------------------------------------------------
# the GPU path, on the CPU with the timers replaced
# --------------------------------------------------------------------------------------------


@pytest.fixture
def fake_timers(monkeypatch):
    calls = []

    def cuda_time_ms(fn, *, warmup, repeats):
        for _ in range(warmup + 1):
            fn()
        calls.append(fn)
        return {"median_ms": 10.0 / len(calls), "min_ms": 1.0, "max_ms": 20.0, "repeats": repeats}

    monkeypatch.setattr(benchmarking, "cuda_time_ms", cuda_time_ms)
    monkeypatch.setattr(benchmarking, "peak_memory_bytes", lambda fn: (fn(), 123_456_789)[1])
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)  # no inductor on a 2-core CPU
    # what is tested is the bookkeeping, not the kernels (tested elsewhere): the fast model takes its
    # plain-PyTorch path here (same modules and custom-op-free algebra), which the interpreter would
    # make minutes slower
    monkeypatch.setattr(_dispatch, "_STATE", (True, False, ""))
    assert _dispatch.kernel_path("cpu") == _dispatch.TORCH
    return calls


def test_gpu_path_runs_and_formats(fake_timers, monkeypatch, capsys):
    """run_gpu's bookkeeping (reference outputs, diffs, speed-ups, OOM, unavailable fast model,
    JSON after every measurement) with tiny models on the CPU."""
    impls = ["original", "original-compiled", "fast", "fast-graphed"]
    real_measure = bench._measure

    def measure(model, impl, scenario, dtype, device, refs, **kw):
        if scenario.training and impl == "original-compiled":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real_measure(model, impl, scenario, dtype, device, refs, **kw)

    monkeypatch.setattr(bench, "_measure", measure)
    snapshots = []
    result = bench.run_gpu(bench.parse_scenarios("infer16,train2x16"), ["fp32"], impls, repeats=2, warmup=0,
                           device="cpu", config=TINY, on_result=lambda r: snapshots.append(len(r["results"])),
                           progress=bench.progress_to_stderr)
    assert snapshots == [1, 2, 3, 4, 5, 6, 7, 8]
    lines = capsys.readouterr().err.splitlines()  # not a terminal: one line per measurement, ETA until the last
    assert len(lines) == 8 and lines[0].startswith("[1/8] infer16 fp32 original: ") and "ETA" in lines[0]
    assert lines[-1].startswith("[8/8] train2x16 fp32 fast-graphed: INFERENCE-ONLY")
    rows = {(r["scenario"], r["implementation"]): r for r in result["results"]}
    assert rows["infer16", "original"]["status"] == "ok" and rows["infer16", "original"]["speedup_vs_original"] == 1
    compiled = rows["infer16", "original-compiled"]
    assert compiled["status"] == "ok" and compiled["max_abs_diff"] == 0.0 and compiled["speedup_vs_original"] == 2
    assert compiled["peak_memory_bytes"] == 123_456_789
    assert rows["train2x16", "original-compiled"]["status"] == "oom"
    # CUDA graphs: inference only (on the CPU the graphed model runs eagerly)
    assert rows["train2x16", "fast-graphed"]["status"] == "inference-only"
    assert rows["infer16", "fast-graphed"]["status"] == ("ok" if HAVE_FAST_MODEL else "unavailable")
    for sc in ("infer16", "train2x16"):
        fast = rows[sc, "fast"]
        if HAVE_FAST_MODEL:
            assert fast["status"] == "ok" and fast["max_abs_diff"] < 1e-4
            if sc == "train2x16":
                assert fast["max_abs_diff_grad"] < 1e-3
        else:
            assert fast["status"] == "unavailable" and "feed-forward" in fast["error"]

    text = bench.format_gpu_markdown(result)
    assert "| infer16 | 1x3x16x16 | fp32 | original-compiled | " in text and "| 2.00x |" in text
    assert "| train2x16 | 2x3x16x16 | fp32 | original-compiled | OOM |" in text
    assert "| train2x16 | 2x3x16x16 | fp32 | fast-graphed | inference only |" in text
    assert "123 MB" in text and "(reference)" in text
    assert {"device", "date", "torch", "triton", "cuda", "git_commit"} <= set(result["environment"])


def test_gpu_markdown_and_json_from_a_synthetic_result(tmp_path):
    """What a GPU run writes, from a hand-made result (H100 names, bf16, errors)."""
    result = {
        "mode": "gpu",
        "environment": {"device": "NVIDIA H100 80GB HBM3", "date": "2026-01-01T00:00:00+00:00", "torch": "2.13.0",
                        "triton": "3.9.0", "cuda": "12.9", "git_commit": "0123456789abcdef", "git_dirty": True},
        "model": {"variant": "with-mefc", "config": bench.model_config("with-mefc"), "parameters": 33655424},
        "settings": {"repeats": 20, "warmup": 5},
        "results": [
            {"scenario": "infer256", "shape": [1, 3, 256, 256], "dtype": "bf16", "implementation": "original",
             "status": "ok", "median_ms": 80.0, "peak_memory_bytes": 2_500_000_000},
            {"scenario": "infer256", "shape": [1, 3, 256, 256], "dtype": "bf16", "implementation": "fast",
             "status": "ok", "median_ms": 20.0, "peak_memory_bytes": 900_000_000, "max_abs_diff": 0.0123},
            {"scenario": "infer512", "shape": [1, 3, 512, 512], "dtype": "bf16", "implementation": "fast-compiled",
             "status": "error", "error": "BackendCompilerFailed: boom"},
            {"scenario": "train4x128", "shape": [4, 3, 128, 128], "dtype": "fp32", "implementation": "original",
             "status": "oom", "error": "out of memory"},
            {"scenario": "train4x128", "shape": [4, 3, 128, 128], "dtype": "fp32", "implementation": "fast",
             "status": "ok", "median_ms": 300.0, "peak_memory_bytes": 9e9, "max_abs_diff": 1e-5},
        ],
    }
    bench._add_speedups(result["results"])
    text = bench.format_gpu_markdown(result)
    assert "### drsformer-fast bench on NVIDIA H100 80GB HBM3" in text
    assert "commit 0123456789ab (dirty)" in text and "with MEFC" in text
    assert "| infer256 | 1x3x256x256 | bf16 | fast | 20.00 | 4.00x | 900 MB | 1.2e-02 |" in text
    assert "| train4x128 | 4x3x128x128 | fp32 | original | OOM | | | |" in text
    assert "| train4x128 | 4x3x128x128 | fp32 | fast | 300.00 | n/a | 9 GB | 1.0e-05 |" in text
    assert "* infer512 bf16 fast-compiled: BackendCompilerFailed: boom" in text
    path = tmp_path / "r.json"
    bench.write_json({**result, "nan": float("nan")}, str(path))
    back = json.loads(path.read_text())
    assert back["results"][1]["speedup_vs_original"] == 4.0 and back["nan"] == "nan"


@pytest.mark.gpu
@pytest.mark.skipif(not (GPU_MODE and torch.cuda.is_available()),
                    reason="needs an NVIDIA GPU (DRSFORMER_FAST_TEST_GPU=1)")
def test_gpu_bench_small(tmp_path):
    out = tmp_path / "gpu.json"
    code = cli.main(["bench", "--shapes", "infer64,train1x64", "--dtype", "fp32,bf16", "--impl", "original,fast",
                     "--repeats", "2", "--warmup", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert code == 0 and result["mode"] == "gpu" and result["environment"]["device"]
    assert all(r["status"] in ("ok", "unavailable") for r in result["results"])


def test_microbenchmark_suites_run_in_smoke_mode(tmp_path):
    """The pytest-benchmark suites (GPU-only) run on the CPU at tiny shapes in Triton's interpreter with
    DRSFORMER_FAST_BENCH_SMOKE=1, and record what the results README promises in extra_info."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "micro.json"
    env = dict(os.environ, DRSFORMER_FAST_BENCH_SMOKE="1", OMP_NUM_THREADS="1")
    env = {k: v for k, v in env.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_ADDOPTS"))}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "benchmarks", "--benchmark-json", str(out)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=1200)  # a guard against a hang, not a time limit: ~150-300 s on 2 cores
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = json.loads(out.read_text())["benchmarks"]
    blocks = [r["extra_info"] for r in runs if "block" in r["extra_info"]]
    assert {b["block"] for b in blocks} == {"layernorm", "attention", "feedforward", "mefc"}
    assert {(b["variant"], b["pass"]) for b in blocks} == {
        (v, p) for v in ("original", "fused") for p in ("forward", "forward-backward")}
    for info in blocks:
        assert {"shape", "scenario", "input", "variant", "pass", "dtype", "bytes_moved", "gbps"} <= set(info)
        assert info["shape"].startswith(info["scenario"]) and info["bytes_moved"] > 0
    for info in blocks:
        if info["block"] == "feedforward" and info["variant"] == "fused":
            assert info["bytes_moved"] == info["table_bytes"]  # accounting agrees with the feed-forward's table
    models = [r["extra_info"] for r in runs if r["extra_info"].get("model") == "DRSformer"]
    assert {m["pass"] for m in models} == {"inference", "training-step"}


def test_commit_from_the_environment_without_git(monkeypatch):
    """A copy of the working tree without .git (the GPU machine): scripts/gpu_session.sh passes the commit."""
    def no_git(*args, **kwargs):
        raise OSError("git: not found")

    monkeypatch.setattr(bench.subprocess, "run", no_git)
    monkeypatch.setenv("DRSFORMER_FAST_GIT_COMMIT", "0123abc")
    env = bench.environment()
    assert env["git_commit"] == "0123abc" and env["git_dirty"] is None


def test_saved_bytes_are_reproducible():
    """Saved-for-backward figures do not depend on the allocator: the original attention saves tensors
    in nodes freed during the forward (its discarded topk values), whose addresses get reused."""
    from drsformer_fast.perf.memory import saved_tensor_bytes

    attn = R.Attention(96, 2, False)
    assert len({saved_tensor_bytes(attn, (4, 96, 64, 64)) for _ in range(10)}) == 1


# --------------------------------------------------------------------------------------------
# plots (--plots) and README's tables
# --------------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _figures_row(scale: float, training: bool) -> dict:
    row = {"saved_bytes": int(700e6 * scale) if training else None, "bytes_forward": int(2.3e9 * scale),
           "launches_forward": int(80 * scale)}
    if training:
        row.update(bytes_forward_backward=int(6.8e9 * scale), launches_forward_backward=int(210 * scale))
    return row


def _synthetic_figures_result() -> dict:
    """A no-GPU result in the shape of ``run_figures``'s (with a host-cost entry), hand-made."""
    blocks = [{"shape": "infer256-enc1-1x48x256x256", "scenario": "infer256", "level": "enc1", "block": kind,
               "input": [1, 48, 256, 256], "original": _figures_row(s, True), "fast": _figures_row(s / 5, True)}
              for kind, s in (("layernorm", 0.05), ("attention", 0.3), ("feedforward", 0.6), ("block", 1.0))]
    mefc = [{"shape": "infer256-enc0-1x48x256x256", "scenario": "infer256", "level": "enc0", "block": "mefc",
             "input": [1, 48, 256, 256], "original": _figures_row(2.0, True), "fast": _figures_row(0.3, True)}]
    whole = [{"scenario": "infer256", "kind": "inference", "input": [1, 3, 256, 256],
              "original": _figures_row(40, False), "fast": _figures_row(8, False)},
             {"scenario": "train2x128", "kind": "training", "input": [2, 3, 128, 128],
              "original": _figures_row(20, True), "fast": None, "fast_unavailable": "not in this build"}]
    host = {"rows": [{"scenario": "infer", "shape": [1, 3, 8, 8], "pass": "forward", "original_host_ms": 150.0,
                      "fast_host_ms": 80.0}]}
    return {"mode": "no-gpu", "model": {"variant": "with-mefc", "config": bench.model_config("with-mefc")},
            "blocks": blocks, "mefc": mefc, "whole_model": whole, "host_cost": host}


def _assert_pngs(paths, names):
    assert sorted(p.rsplit("/", 1)[-1] for p in paths) == sorted(names)
    for path in paths:
        with open(path, "rb") as fh:
            data = fh.read()
        assert len(data) > 1000 and data.startswith(PNG_SIGNATURE), path


def test_plots_of_the_figures_and_of_gpu_timings(tmp_path):
    pytest.importorskip("matplotlib")
    from drsformer_fast.perf import plots

    written = plots.plot(_synthetic_figures_result(), str(tmp_path / "figures"))
    _assert_pngs(written, ["bytes_moved.png", "launches.png", "saved_for_backward.png", "host_cost.png"])

    rows = [{"scenario": sc, "shape": [1, 3, 256, 256], "dtype": dt, "implementation": impl, "status": "ok",
             "median_ms": ms, "peak_memory_bytes": 1} for sc in ("infer256", "train4x128") for dt in ("fp32", "bf16")
            for impl, ms in (("original", 80.0), ("fast", 20.0), ("fast-graphed", 9.0))]
    rows.append({"scenario": "infer512", "shape": [1, 3, 512, 512], "dtype": "bf16", "implementation": "fast",
                 "status": "oom", "error": "out of memory"})
    bench._add_speedups(rows)
    written = plots.plot({"mode": "gpu", "environment": {"device": "NVIDIA H100"}, "results": rows},
                         str(tmp_path / "gpu"))
    _assert_pngs(written, ["gpu_median_ms.png"])
    assert plots.plot({"mode": "gpu", "results": rows[-1:]}, str(tmp_path / "none")) == []


def test_bench_plots_from_the_command_line(tmp_path, monkeypatch, capsys):
    """``--plots DIR`` draws the result the run produced (the figures stubbed: a hand-made result)."""
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(cli, "_has_cuda", lambda: False)
    monkeypatch.setattr(cli, "_ensure_interpreter", lambda argv: None)
    result = _synthetic_figures_result()
    del result["host_cost"]
    monkeypatch.setattr(bench, "run_figures", lambda *a, **kw: {
        **result, "note": bench.TIMING_NOTE, "methods": {}, "environment": {"date": "today", "torch": "x"}})
    folder = tmp_path / "a" / "plots"
    assert cli.main(["bench", "--skip-selfcheck", "--host-cost-repeats", "0", "--plots", str(folder)]) == 0
    assert "plots: " in capsys.readouterr().err
    _assert_pngs([str(p) for p in folder.iterdir()], ["bytes_moved.png", "launches.png", "saved_for_backward.png"])


def test_bench_plots_into_a_file_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "run_figures", lambda *a, **kw: pytest.fail("work started"))
    monkeypatch.setattr(bench, "run_gpu", lambda *a, **kw: pytest.fail("work started"))
    afile = tmp_path / "file.png"
    afile.write_bytes(b"x")
    for target in (afile, afile / "plots"):
        assert cli.main(["bench", "--interpreter", "--plots", str(target)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--plots" in err and "Traceback" not in err, err


def test_readme_figures_tables_are_current():
    """README's figures tables are what ``python scripts/readme_tables.py`` writes from the code now."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    tables = bench.format_readme_tables(bench.readme_figures())
    assert bench.replace_readme_tables(readme, tables) == readme, (
        "README.md's figures tables are out of date: run python scripts/readme_tables.py")


def test_selfcheck_reports_each_case_as_it_ends(monkeypatch):
    from drsformer_fast.perf import selfcheck

    def check(device, dtypes):
        for case in ("2x8x5x7 fp32", "2x8x5x7 fp32", "1x3x4x4 fp16"):
            yield selfcheck.Row("op", case, "dx", 0.0, 0.0, 1.0, 0.5)

    import io

    from drsformer_fast.progress import Progress

    monkeypatch.setattr(selfcheck, "CHECKS", {"op": check})
    log = io.StringIO()  # not a terminal: one line per case, with the ETA until the last
    with Progress(2, "self-check", unit="case", stream=log) as bar:
        rows = selfcheck.run(torch.device("cpu"), progress=bar)
    assert len(rows) == 3
    first, last = log.getvalue().splitlines()
    assert re.fullmatch(r"\[1/2\] self-check op 2x8x5x7 fp32 \(0\.50 s, ETA 0:00:\d\d\)", first), first
    assert last == "[2/2] self-check op 1x3x4x4 fp16 (0.50 s)"


def test_selfcheck_counts_the_cases_it_runs(monkeypatch):
    """count_cases (the progress bar's total) is the number of cases run checks, per precision list;
    the comparisons themselves are stubbed (the cases' loops run, nothing is computed)."""
    from drsformer_fast.perf import selfcheck

    def compare(op, case, names, *args, **kwargs):
        yield selfcheck.Row(op, case, names[0], 0.0, 0.0, 1.0, 0.0)

    monkeypatch.setattr(selfcheck, "compare", compare)
    monkeypatch.setattr(selfcheck, "_grads", lambda fn, inputs, *a: [torch.ones(1)] * (len(inputs) + 1))
    for dtypes in ([torch.float32], [torch.float32, torch.float16]):
        rows = selfcheck.run(torch.device("cpu"), dtypes)
        assert selfcheck.count_cases(dtypes) == len({(r.op, r.case) for r in rows}) > 4
