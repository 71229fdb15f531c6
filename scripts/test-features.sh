#!/usr/bin/env bash
# The optional features: one build with all of them together (so none can
# rot; the GPU build needs no GPU or CUDA toolkit: .cargo/config.toml) that
# also runs the tests that need one: data-parallel training and tables
# under `mpirun -np 2` on loopback (tests/mpi.rs). Installs Open MPI if
# missing. (One `cargo test` build: a separate `cargo build` would compile
# everything once more, with the dev-dependencies' feature set.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --mpi
cargo test --release --locked --all-features --test mpi
