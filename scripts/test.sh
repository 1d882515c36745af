#!/usr/bin/env bash
# The test command: set up .venv, lint, then run the whole suite (kernels in Triton's interpreter).
# Arguments are passed to pytest, e.g. `bash scripts/test.sh -k attention`. Tests run in one process
# per core (pytest-xdist; each test is single-threaded); DRSFORMER_FAST_TEST_WORKERS=0 runs them serially.
source "$(dirname "$0")/_env.sh"
"$PY" -m ruff check .
"$PY" -m pytest -n "${DRSFORMER_FAST_TEST_WORKERS:-auto}" --dist worksteal "$@"
