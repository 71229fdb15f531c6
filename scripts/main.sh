#!/usr/bin/env bash
# The main job, end to end on Fashion-MNIST: install what is missing, build,
# then train a supernet and specialise it (see README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked
out="${1:-runs/main}"
exec ./target/release/ofa run --out "$out"
