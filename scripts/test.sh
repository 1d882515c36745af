#!/usr/bin/env bash
# The test command: set up .venv, lint, then run the whole suite (kernels in Triton's interpreter).
# Arguments are passed to pytest, e.g. `bash scripts/test.sh -k attention`.
source "$(dirname "$0")/_env.sh"
"$PY" -m ruff check .
"$PY" -m pytest "$@"
