#!/usr/bin/env bash
# Everything a session with a lent NVIDIA GPU should run, in ONE call, with no network:
#
#   bash scripts/gpu_session.sh OUT [PHASE...]
#
# OUT: the results folder (e.g. "$OUT" on the device machine). PHASES, in this order by default:
#   env             python, torch, triton, CUDA, GPU (nvidia-smi), what is importable  -> env.txt
#   tests           DRSFORMER_FAST_TEST_GPU=1 pytest tests (kernels compiled on the GPU) -> tests.log, tests.xml
#   bench           drsformer-fast bench, original vs fast, eager and through CUDA graphs
#                   (inference; training eager), fp32 + bf16                             -> bench.json, bench.md
#   kernels         every kernel of the fast model's inference forward (1x3x256x256, fp32 + bf16):
#                   measured GPU time (torch.profiler) beside the calibrated static model's
#                   prediction, per kernel, to re-fit the model on this project's kernels
#                   (copy both files to benchmarks/results/)      -> kernels-vs-model.json, kernels-vs-model.md
#   micro           pytest benchmarks -k "not compiled" --benchmark-json                -> micro.json
#   bench-compiled  drsformer-fast bench, both models under torch.compile, default and
#                   mode="reduce-overhead" (+ eager original)                            -> bench-compiled.json/.md
#   micro-compiled  pytest benchmarks -k compiled --benchmark-json                      -> micro-compiled.json
# Each phase's output is teed to OUT/<phase>.log; OUT/summary.txt says how each phase ended.
#
# Time: the device gives one command 600 s. BUDGET_S (default 570) is shared out in order: a phase
# gets at most its cap (TESTS_S 200, BENCH_S 150, KERNELS_S 60, MICRO_S 150, the compiled phases what is left) and
# never more than what is left; when its time is up it gets SIGINT (then SIGKILL 15 s later). What it
# wrote stays: bench rewrites its JSON after every measurement; pytest writes its JSON when
# interrupted. A phase that fails or times out does not stop the next one.
#
# Environment: PYTHON (default: python3), GIT_COMMIT (recorded in the JSON where the copy has no .git).
# Nothing is installed. If the package is not installed for PYTHON, it is used from this folder.
set -o pipefail
set -u

if [ $# -lt 1 ]; then
    echo "usage: bash scripts/gpu_session.sh OUT [env tests bench kernels micro bench-compiled micro-compiled]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$1"
shift
PHASES=("$@")
[ ${#PHASES[@]} -eq 0 ] && PHASES=(env tests bench kernels micro bench-compiled micro-compiled)
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-570}"
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
export DRSFORMER_FAST_GIT_COMMIT="${GIT_COMMIT:-$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)}"
export PYTHONUNBUFFERED=1

note() { echo "== $*" | tee -a "$SUMMARY"; }
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

# ---- make `import drsformer_fast.kernels` work without installing anything ---------------------
# setuptools maps kernels/ to drsformer_fast.kernels when the package is installed; every command
# below runs from ROOT, so without an install a symlink in the package folder does the same. It is
# removed when the script ends.
LINK="$ROOT/drsformer_fast/kernels"
if ! "$PY" -c "import drsformer_fast.kernels" >/dev/null 2>&1 && [ ! -e "$LINK" ]; then
    ln -s ../kernels "$LINK"
    trap 'rm -f "$LINK"' EXIT
    note "drsformer-fast is not installed for $PY: using it from $ROOT (symlink drsformer_fast/kernels -> ../kernels)"
fi
CLI=("$PY" -m drsformer_fast.cli)

has() { "$PY" -c "import $1" >/dev/null 2>&1; }

# run PHASE CAP_S CMD...: at most min(CAP_S, time left - 10 s), output teed to OUT/PHASE.log
run() {
    local phase="$1" cap="$2"
    shift 2
    local avail=$(( $(left) - 10 ))
    local t=$(( cap < avail ? cap : avail ))
    if [ "$t" -lt 20 ]; then
        note "$phase: skipped (only $(left) s of the budget left)"
        return 0
    fi
    echo "== $phase (up to ${t} s): $*" | tee -a "$OUT/$phase.log"
    local t0 rc
    t0=$(date +%s)
    timeout -s INT -k 15 "$t" "$@" 2>&1 | tee -a "$OUT/$phase.log"
    rc=$?
    local took=$(( $(date +%s) - t0 ))
    case $rc in
        0) note "$phase: ok (${took} s)" ;;
        124|130|137) note "$phase: TIMED OUT after ${took} s (partial results kept)" ;;
        *) note "$phase: FAILED with exit code $rc (${took} s; see $phase.log)" ;;
    esac
    FAILED=$(( FAILED + (rc != 0) ))
}

FAILED=0
for phase in "${PHASES[@]}"; do
    case "$phase" in
        env)
            {
                echo "date: $(date -u +%FT%TZ)"
                echo "commit: $DRSFORMER_FAST_GIT_COMMIT"
                command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
                "$PY" - <<'EOF'
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
import torch, triton
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("triton", triton.__version__)
print("cuda available:", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "(no device)")
for name in ("drsformer_fast", "drsformer_fast.kernels", "pytest", "pytest_benchmark", "einops", "numpy", "PIL"):
    try:
        m = importlib.import_module(name)
        print(f"import {name}: ok {getattr(m, '__version__', '')} {getattr(m, '__file__', '')}")
    except Exception as exc:
        print(f"import {name}: MISSING ({type(exc).__name__}: {exc})")
EOF
            } 2>&1 | tee "$OUT/env.txt"
            if ! "$PY" -c "import torch, triton, drsformer_fast.kernels"; then
                note "env: torch/triton/drsformer_fast not importable with $PY: nothing else can run"
                exit 1
            fi
            "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null \
                || note "env: WARNING: torch sees no CUDA device; bench will take its no-GPU path"
            note "env: ok"
            ;;
        tests)
            if has pytest; then
                run tests "${TESTS_S:-200}" env DRSFORMER_FAST_TEST_GPU=1 "$PY" -m pytest -q -ra tests \
                    --junitxml "$OUT/tests.xml"
            else note "tests: skipped (pytest is not installed)"; fi
            ;;
        bench)
            run bench "${BENCH_S:-150}" "${CLI[@]}" bench --impl original,original-graphed,fast,fast-graphed \
                --json "$OUT/bench.json" --markdown "$OUT/bench.md"
            ;;
        kernels)
            run kernels "${KERNELS_S:-60}" "$PY" -m drsformer_fast.perf.kernel_times --dtypes fp32,bf16 --size 256 \
                --json "$OUT/kernels-vs-model.json" --markdown "$OUT/kernels-vs-model.md"
            ;;
        micro)
            if has pytest_benchmark; then
                run micro "${MICRO_S:-150}" "$PY" -m pytest -q -p no:cacheprovider benchmarks -k "not compiled" \
                    --benchmark-json "$OUT/micro.json"
            else note "micro: skipped (pytest-benchmark is not installed)"; fi
            ;;
        bench-compiled)
            # the original in eager mode again: speed-ups and differences are taken against it, in the same run
            run bench-compiled "${BENCH_COMPILED_S:-600}" "${CLI[@]}" bench \
                --impl original,original-compiled,fast-compiled,original-reduce-overhead,fast-reduce-overhead \
                --json "$OUT/bench-compiled.json" --markdown "$OUT/bench-compiled.md"
            ;;
        micro-compiled)
            if has pytest_benchmark; then
                run micro-compiled "${MICRO_COMPILED_S:-600}" "$PY" -m pytest -q -p no:cacheprovider benchmarks \
                    -k "compiled" --benchmark-json "$OUT/micro-compiled.json"
            else note "micro-compiled: skipped (pytest-benchmark is not installed)"; fi
            ;;
        *)
            note "unknown phase '$phase' (env tests bench kernels micro bench-compiled micro-compiled)"
            FAILED=$(( FAILED + 1 ))
            ;;
    esac
done
echo
echo "== summary ($(( $(date +%s) - START )) s; results in $OUT)"
cat "$SUMMARY"
[ "$FAILED" -eq 0 ]
