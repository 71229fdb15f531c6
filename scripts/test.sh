#!/usr/bin/env bash
# The test suite (release profile: the networks are too slow in debug).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# `ndarray`: the generic operator path (what a GPU runs) tested on the CPU.
cargo test --release --locked --features ndarray "$@"
