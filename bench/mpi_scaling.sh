#!/usr/bin/env bash
# Data-parallel training on this machine (issue 11): one process × 2
# threads vs `mpirun -np 2` × 1 thread, the same DϵpS run (global batch 64,
# most steps after the switch: full + min + random subnets), for
# mbv3-28-lite and mbv3-32 on Fashion-MNIST. Records images/s, the time per
# step spent in collective calls (rank 0's view, waiting for the other rank
# included) and the bytes each step exchanges, into
# bench/results/mpi-<preset>.json; then bench/mpi_projection.py projects
# step time and scaling efficiency for 2–64 ranks.
#
# Needs a binary built with `--features mpi` (scripts/setup.sh --mpi installs
# Open MPI).   OFA=target/release/ofa bash bench/mpi_scaling.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/mpi-scaling}
OFA=${OFA:-target/release/ofa}
RESULTS=${RESULTS:-bench/results}
EPOCHS=${EPOCHS:-0.5}
mkdir -p "$OUT" "$RESULTS"
root=""
[ "$(id -u)" -eq 0 ] && root="--allow-run-as-root"
cat > "$OUT/train.toml" <<'TOML'
batch_size = 64
augment = true
max_train_images = 6400
val_size = 500
checkpoint_every = 100000
[eval]
calib_images = 200
max_images = 200
[deps]
full_model_fraction = 0.2
smallnet_warmup_fraction = 0.05
TOML
for space in mbv3-28-lite mbv3-32; do
  summary="$RESULTS/mpi-$space.json"
  [ -f "$summary" ] && { echo "$space: done ($summary)"; continue; }
  rm -rf "$OUT/$space-1x2" "$OUT/$space-2x1"
  echo "$space: 1 process x 2 threads"
  "$OFA" --threads 2 train --space "$space" --schedule deps --config "$OUT/train.toml" \
    --epochs "$EPOCHS" --out "$OUT/$space-1x2" --quiet > "$OUT/$space-1x2.log" 2>&1
  echo "$space: 2 ranks x 1 thread"
  OFA_COLLECTIVE_STATS=1 mpirun -np 2 --oversubscribe $root "$OFA" --threads 1 train --space "$space" \
    --schedule deps --config "$OUT/train.toml" --epochs "$EPOCHS" --out "$OUT/$space-2x1" --quiet \
    > "$OUT/$space-2x1.log" 2>&1
  python3 - "$OUT" "$space" "$summary" <<'PY'
import datetime, json, platform, sys
out, space, path = sys.argv[1:]
def last(run):
    return json.loads(open(f"{out}/{space}-{run}/metrics.jsonl").read().splitlines()[-1])
one, two = last("1x2"), last("2x1")
stats = next(json.loads(l.split("collective:", 1)[1]) for l in open(f"{out}/{space}-2x1.log")
             if l.startswith("collective:"))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
steps = two["step"]
res = {
    "space": space, "steps": steps, "global_batch": 64,
    "one_process_2_threads": {"images_per_s": one["images_per_s"], "train_seconds": one["train_seconds"]},
    "two_ranks_1_thread": {"images_per_s": two["images_per_s"], "train_seconds": two["train_seconds"]},
    "ratio_2x1_over_1x2": two["images_per_s"] / one["images_per_s"],
    "collective_seconds_per_step": stats["seconds"] / steps,
    "collective_share": stats["seconds"] / two["train_seconds"],
    "gradient_bytes_per_step": stats["gradient_bytes"] / steps,
    "bn_bytes_per_step": stats["bn_bytes"] / steps,
    "bn_calls_per_step": stats["bn_calls"] / steps,
    "gradient_calls_per_step": stats["gradient_calls"] / steps,
    "step_seconds_1x2": one["train_seconds"] / one["step"],
    "machine": cpu, "date": datetime.date.today().isoformat(),
}
json.dump(res, open(path + ".tmp", "w"), indent=1)
import os; os.replace(path + ".tmp", path)
print(json.dumps(res, indent=1))
PY
done
python3 bench/mpi_projection.py "$RESULTS"
