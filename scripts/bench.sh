#!/usr/bin/env bash
# The main job: set up .venv, then `drsformer-fast bench` (GPU benchmarks with an NVIDIA GPU; without
# one, every kernel checked against the reference in Triton's interpreter). Arguments go to bench.
source "$(dirname "$0")/_env.sh"
"$VENV/bin/drsformer-fast" bench "$@"
