#!/usr/bin/env bash
# Installs what ofa needs on a fresh Debian machine: the Fashion-MNIST
# package (the default dataset) and a font for the report's plots. Idempotent:
# does nothing when everything is present.
set -euo pipefail

# `--mpi`: also Open MPI and libclang, for the `mpi` feature (building
# rsmpi's bindings) and `mpirun`.
need=()
if [ "${1:-}" = "--mpi" ]; then
  command -v mpirun >/dev/null || need+=(openmpi-bin)
  [ -e /usr/include/x86_64-linux-gnu/mpi.h ] || [ -e /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ] || need+=(libopenmpi-dev)
  # libclang itself (bindgen's), not libclang-cpp, which other packages pull in.
  compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null ||
    compgen -G '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' >/dev/null || need+=(libclang-dev)
fi
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install ${need[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

command -v cargo >/dev/null || {
  echo "setup: cargo not found; install the stable Rust toolchain (https://rustup.rs)" >&2
  exit 1
}
