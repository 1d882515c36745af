#!/usr/bin/env bash
# The test command: set up .venv, lint, then run the whole suite (kernels in Triton's interpreter).
# Arguments are passed to pytest, e.g. `bash scripts/test.sh -k attention`. Tests run in one process
# per core, up to 4 (pytest-xdist; each test is single-threaded); DRSFORMER_FAST_TEST_WORKERS=0 runs
# them serially.
export DRSFORMER_FAST_TEMP_CACHES=1  # no compiled kernels left behind (_env.sh)
source "$(dirname "$0")/_env.sh"
"$PY" -m ruff check .
# at most 4 workers: each holds torch + triton (~1-2 GB), and a container may report more CPUs than
# its quota lets it use
WORKERS="${DRSFORMER_FAST_TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}"
# --durations: the slowest tests in every log (what the CI time budget goes to)
"$PY" -m pytest -n "$WORKERS" --dist worksteal --durations=15 "$@"
