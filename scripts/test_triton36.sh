#!/usr/bin/env bash
# The kernel tests of each op on the oldest Triton that pyproject.toml admits (3.6, what the GPU
# machine has), in a second virtual environment, `.venv-triton36` (gitignored): torch 2.13
# (`pip install torch==2.13.0`, the local wheel where there is one) + triton==3.6.0 from PyPI +
# an editable install of this checkout. Runs in Triton's interpreter like scripts/test.sh, on the
# golden, half-precision and depthwise-convolution tests (both paths, words and pixels) of every op's test file, LayerNorm's random fp32
# ones (tests/test_{layernorm,attention,feedforward,mefc}*.py, those that exist), the direct launch path's
# launches against JITFunction.run's for the LayerNorm and depthwise launchers (tests/kernels/test_launch.py,
# a no-op-driver subprocess: this Triton's launcher protocol), the memory checker's own tests
# (tests/test_memcheck.py: its hooks work in this Triton's interpreter; conftest turns it on for every
# test here), then the compile check
# for sm_90 (what runs, compiled with this Triton: no spills). A few minutes on 2 cores.
# Arguments are passed to pytest. CI (.ci/run) runs it after scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DRSFORMER_FAST_VENV="${DRSFORMER_FAST_VENV_TRITON36:-$ROOT/.venv-triton36}"
export DRSFORMER_FAST_PIP_PINS="triton==3.6.0"
export DRSFORMER_FAST_TEMP_CACHES=1  # no compiled kernels left behind (_env.sh)
source "$ROOT/scripts/_env.sh"
"$PY" -c "import triton, torch; print('triton', triton.__version__, 'torch', torch.__version__)"
shopt -s nullglob
FILES=(tests/kernels/test_layernorm.py tests/kernels/test_attention.py tests/kernels/test_feedforward.py tests/kernels/test_mefc*.py tests/ops/test_mefc_ops.py tests/kernels/test_launch.py tests/test_memcheck.py)
WORKERS="${DRSFORMER_FAST_TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}"
status=0
"$PY" -m pytest -n "$WORKERS" --dist worksteal -q -p no:cacheprovider \
    -k "golden or half_precision or depthwise_conv or (test_layernorm and fp32_random) or (test_mefc and C20) or direct_path_only or interpreted_kernels_go or launch_keys_follow or test_memcheck" "${FILES[@]}" "$@" || status=$?
# what runs compiles for sm_90 with this Triton too (the GPU machine's), without spills
env -u TRITON_INTERPRET "$PY" -m drsformer_fast.perf.compile_check --arch 90 --quiet || status=$?
exit $status
