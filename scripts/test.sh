#!/usr/bin/env bash
# The test suite (release profile: the networks are too slow in debug).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --release --locked "$@"
