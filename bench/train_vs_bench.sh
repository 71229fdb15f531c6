#!/usr/bin/env bash
# `ofa train` images/s vs `ofa bench train` for the same network and batch
# (issue 9: "nothing lost between the benchmark and the real loop").
#
# The network is the largest subnet of mbv3-28-lite at 28 px, batch 64: what
# `ofa bench train` times as "largest", and what `ofa train`'s full-model
# warm-up trains (DϵpS with full_model_fraction = 1, one resolution, no
# augmentation), so the two differ only by what the real loop adds: data
# loading and resizing, the schedule, loss read-back, checkpoints.
#
#   THREADS=2 bash bench/train_vs_bench.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/train-vs-bench}
OFA=${OFA:-target/release/ofa}
THREADS=${THREADS:-2}
RESULTS=${RESULTS:-bench/results}
EPOCHS=${EPOCHS:-0.15}
mkdir -p "$OUT" "$RESULTS"
"$OFA" space show mbv3-28-lite > "$OUT/space-full.toml"
python3 - "$OUT/space-full.toml" "$OUT/space.toml" <<'PY'
import re, sys
s = open(sys.argv[1]).read()
s = re.sub(r"resolutions = \[[^\]]*\]", "resolutions = [28]", s, flags=re.S)
open(sys.argv[2], "w").write(s)
PY
cat > "$OUT/train.toml" <<'TOML'
batch_size = 64
augment = false
[deps]
full_model_fraction = 1.0
smallnet_warmup_fraction = 0.0
TOML
"$OFA" --threads "$THREADS" bench train --space "$OUT/space.toml" --channels 1 \
  --batch 64 --steps 10 --json > "$OUT/bench.txt"
rm -rf "$OUT/train"
"$OFA" --threads "$THREADS" train --space "$OUT/space.toml" --schedule deps \
  --config "$OUT/train.toml" --epochs "$EPOCHS" --out "$OUT/train" > "$OUT/train.log" 2>&1
python3 - "$OUT" "$THREADS" "$RESULTS/train-vs-bench.json" <<'PY'
import datetime, json, platform, sys
out, threads, dest = sys.argv[1:4]
text = open(f"{out}/bench.txt").read()
bench = json.loads(text[text.index("{"):])
largest = bench["largest subnet"]["images_per_s"]
m = [json.loads(l) for l in open(f"{out}/train/metrics.jsonl")]
train = m[-1]["images_per_s"]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"ofa bench train, largest subnet, batch 64: {largest:.0f} img/s")
print(f"ofa train, full-model warm-up, batch 64:  {train:.0f} img/s ({m[-1]['step']} steps)")
print(f"train / bench: {train / largest:.2f}")
json.dump({"bench_img_s": largest, "train_img_s": train, "ratio": train / largest,
           "steps": m[-1]["step"], "threads": int(threads), "machine": cpu,
           "date": datetime.date.today().isoformat()}, open(dest, "w"), indent=1)
PY
