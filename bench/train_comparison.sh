#!/usr/bin/env bash
# Table 1 of the DϵpS paper and its cost table, on Fashion-MNIST
# (mbv3-28-lite, 28 px): the four reference subnets (`ofa sample --named`:
# max, min, mid, random) trained alone from scratch for E epochs, and DϵpS,
# PS and sandwich supernets for 2E and 4E total epochs, all with the
# reference recipes (TrainConfig's defaults) and the shared settings of
# bench/train_comparison.toml. Top-1 on the validation hold-out (BN
# recalibrated for supernet subnets, stored statistics for networks trained
# alone) and on the 10 000-image test split, wall-clock and images processed.
#
# Survives interruptions and a change of machine: training resumes from its
# checkpoints (under $OUT, not committed), and every finished run writes
# bench/results/table1-<run>.json (committed); runs with a summary are
# skipped. `bench/train_comparison.sh report` prints the Markdown tables.
#
#   E=4 THREADS=2 bash bench/train_comparison.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
ofa=${OFA:-./target/release/ofa}
results=${RESULTS:-bench/results}
mkdir -p "$results"

if [ "${1:-}" = "report" ]; then
  exec python3 bench/table1_report.py "$results"
fi

out=${1:-runs/bench-table1}
E=${E:-4}
threads=${THREADS:-$(nproc)}
common=bench/train_comparison.toml
mkdir -p "$out/archs"
$ofa sample --space mbv3-28-lite --named --out "$out/archs" >/dev/null

# One run: train (resuming if a run folder exists), evaluate, summarise.
run() {
  local name=$1; shift
  local summary="$results/table1-$name.json"
  [ -f "$summary" ] && { echo "$name: done ($summary)"; return; }
  local dir="$out/$name"
  local resume=""
  [ -f "$dir/config.toml" ] && resume="--resume"
  echo "$name: training ($*)"
  local t0=$(date +%s)
  $ofa --threads "$threads" train --config "$common" --out "$dir" --quiet $resume "$@" 2>&1 | tail -n 1
  local evals="{"
  local first=1
  for a in max min mid random; do
    case $name in ind-*) [ "ind-$a" = "${name%-E*}" ] || continue;; esac
    for split in val test; do
      local r
      if [ -d "$dir/subnet" ]; then
        r=$($ofa --threads "$threads" eval --subnet "$dir/subnet" --split $split --json)
      else
        r=$($ofa --threads "$threads" eval --supernet "$dir/supernet.safetensors" --arch "$out/archs/$a.json" --split $split --json)
      fi
      [ $first = 1 ] || evals="$evals,"; first=0
      evals="$evals\"$a/$split\": $r"
    done
  done
  evals="$evals}"
  local last
  last=$(tail -n 1 "$dir/metrics.jsonl")
  python3 - "$summary" "$name" "$threads" "$E" "$last" "$evals" "$dir/config.toml" <<'EOF'
import json, sys, platform, datetime, tomllib
path, name, threads, e, last, evals, cfg = sys.argv[1:]
last = json.loads(last); evals = json.loads(evals)
with open(cfg, "rb") as f:
    config = tomllib.load(f)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
out = {
    "run": name, "schedule": config["schedule"], "epochs": config["epochs"], "E": float(e),
    "train_seconds": last["train_seconds"], "images": last.get("images"), "images_per_s": last["images_per_s"],
    "machine": cpu, "threads": int(threads), "date": datetime.date.today().isoformat(),
    "top1": {k: v["top1"] for k, v in evals.items()},
    "last_epoch_val": {k: v["top1"] for k, v in last["val"].items()},
}
if not out["images"]:
    out["images"] = round(last["images_per_s"] * last["train_seconds"])
tmp = path + ".tmp"
json.dump(out, open(tmp, "w"), indent=1)
import os; os.replace(tmp, path)
print(f"{name}: {out['train_seconds']:.0f} s, " + ", ".join(f"{k} {100*v:.2f}" for k, v in out["top1"].items()))
EOF
}

# Cheapest first, so that results arrive early.
for a in max min mid random; do
  run "ind-$a-E$E" --schedule independent --arch "$out/archs/$a.json" --epochs "$E"
done
for mult in 2 4; do
  ep=$(awk "BEGIN { print $mult * $E }")
  for s in deps ps sandwich; do
    run "$s-${ep}ep" --schedule "$s" --epochs "$ep"
  done
done
python3 bench/table1_report.py "$results"
