# Sourced by the other scripts: create (or reuse) the virtual environment and install the package.
# CPU machines take torch 2.13.0 (`pip install torch==2.13.0` finds the wheel on disk where there is
# one); a machine that already has torch in the environment keeps it. Triton comes from PyPI.
# DRSFORMER_FAST_VENV: another environment than .venv; DRSFORMER_FAST_PIP_PINS: requirements installed
# with the package (e.g. "triton==3.6.0": scripts/test_triton36.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# DRSFORMER_FAST_TEMP_CACHES=1 (the test scripts): Triton's and Inductor's caches of this run go to
# one temporary folder, removed when the script exits, unless the caller chose its own. A CI machine's
# disk is shared, and the compile checks and torch.compile tests leave gigabytes behind otherwise.
if [ "${DRSFORMER_FAST_TEMP_CACHES:-0}" = 1 ] \
    && { [ -z "${TRITON_CACHE_DIR:-}" ] || [ -z "${TORCHINDUCTOR_CACHE_DIR:-}" ]; }; then
    _DRSFORMER_FAST_CACHE="$(mktemp -d)"
    trap 'rm -rf "$_DRSFORMER_FAST_CACHE"' EXIT
    export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$_DRSFORMER_FAST_CACHE/triton}"
    export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$_DRSFORMER_FAST_CACHE/inductor}"
fi
VENV="${DRSFORMER_FAST_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install -q torch==2.13.0
fi
# shellcheck disable=SC2086 (the pins are a space-separated list)
"$PY" -m pip install -q -e ".[dev]" ${DRSFORMER_FAST_PIP_PINS:-}
