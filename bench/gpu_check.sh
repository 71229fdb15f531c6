#!/usr/bin/env bash
# The GPU check (issue 10), for a machine with an NVIDIA GPU: build with the
# `cuda` feature, run the generic-path numerics tests on the GPU, train the
# tiny preset on Fashion-MNIST for a few hundred steps and check that it
# learns, then time training steps (batch 64, 128, 256; random and largest
# subnet) of ofa-mbv3-w1.0 at 224 px and of mbv3-32, next to PyTorch CUDA on
# the same networks when torch with CUDA is importable, with peak GPU
# memory. Everything lands in $OUT (default runs/gpu-check); the summary is
# $OUT/summary.txt. Short by design (minutes): GPU time is scarce.
#
#   OUT=/tmp/gpu bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu-check}
mkdir -p "$out"
log() { echo "== $*" | tee -a "$out/summary.txt"; }
: > "$out/summary.txt"

log "machine: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1)"
log "date: $(date -u +%F)"
if [ -x target/release/ofa ] && target/release/ofa --device cuda space list >/dev/null 2>&1; then
  log "build: prebuilt binary with the cuda feature"
else
  log "build: cargo build --release --features cuda"
  cargo build --release --locked --features cuda 2>&1 | tail -n 3 | tee -a "$out/summary.txt"
fi
ofa=./target/release/ofa

log "numerics on the GPU (tests/generic.rs, GPU variants)"
cargo test --release --locked --features cuda,ndarray --test generic -- --include-ignored 2>&1 \
  | grep -E "^test |test result" | tee -a "$out/summary.txt"

log "training the tiny preset on Fashion-MNIST (0.3 epoch) on the GPU"
rm -rf "$out/tiny"
$ofa --device cuda train --space tiny --epochs 0.3 --batch-size 64 --out "$out/tiny" --quiet 2>&1 \
  | tail -n 2 | tee -a "$out/summary.txt"
python3 - "$out/tiny/metrics.jsonl" <<'EOF' | tee -a "$out/summary.txt"
import json, sys
m = [json.loads(l) for l in open(sys.argv[1])][-1]
top1 = m["val"]["max"]["top1"]
print(f"tiny max top-1 after {m['epoch']:.2f} epochs: {100*top1:.2f}% ({'learns' if top1 > 0.5 else 'DOES NOT LEARN'}), {m['images_per_s']:.0f} img/s")
EOF

mem_log="$out/gpu_memory.csv"
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 200 > "$mem_log" 2>/dev/null &
smi=$!
for space in ofa-mbv3-w1.0 mbv3-32; do
  for bs in 64 128 256; do
    log "ofa bench train --space $space --batch $bs (cuda)"
    $ofa --device cuda bench train --space "$space" --batch "$bs" --steps 10 \
      --dump "$out/$space-$bs.json" --json > "$out/ofa-$space-$bs.json" 2>>"$out/summary.txt"
    grep -h "seconds_per_step\|images_per_s" "$out/ofa-$space-$bs.json" | head -n 4 | tee -a "$out/summary.txt"
    if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
      log "PyTorch CUDA, same networks"
      python3 bench/pytorch_reference.py "$out/$space-$bs.json" --device cuda 2>&1 | tail -n 3 | tee -a "$out/summary.txt"
    else
      log "PyTorch with CUDA is not importable here: no reference timing"
    fi
  done
done
kill "$smi" 2>/dev/null
python3 - "$mem_log" <<'EOF' | tee -a "$out/summary.txt"
import sys
vals = [float(l.split(",")[1]) for l in open(sys.argv[1]) if "," in l]
print(f"peak GPU memory used during the benchmarks: {max(vals):.0f} MiB" if vals else "no GPU memory samples")
EOF
log "done"
