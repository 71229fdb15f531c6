#!/usr/bin/env bash
# Issue-4 benchmarks on the supernet of a finished `ofa run` (default
# runs/main): predictor quality against table size, latency-table error with
# and without cache eviction, and search time for 1 and 40 scenarios.
# Writes OUT/*.json and OUT/summary.txt. Rerunning skips finished tables.
set -euo pipefail
cd "$(dirname "$0")/.."
ofa=./target/release/ofa
run=${RUN:-runs/main}
out=${1:-runs/spec-bench}
sn="$run/train/supernet.safetensors"
mkdir -p "$out"
# The table settings of `ofa run`, so its table is the first size step.
tab=(--supernet "$sn" --calib-images 500 --calib-batch 250 --batch 250 --max-images 1000)

# 1. Predictor RMSE / Kendall tau against table size. The tables share one
# architecture draw sequence (seed 1, each extends the previous one); an
# independent table (seed 7) is the common test set.
[ -f "$out/test-60.sqlite" ] || $ofa table "${tab[@]}" --subnets 60 --seed 7 --out "$out/test-60.sqlite" >/dev/null
prev="$run/table.sqlite"
for n in 80 160 320; do
  t="$out/table-$n.sqlite"
  if [ ! -f "$t" ]; then
    cp "$prev" "$t.part"
    $ofa table "${tab[@]}" --subnets $n --seed 1 --out "$t.part" >/dev/null
    mv "$t.part" "$t"
  fi
  prev="$t"
  $ofa predictor fit --table "$t" --out "$out/pred-$n.safetensors" --json > "$out/fit-$n.json"
  $ofa predictor eval --predictor "$out/pred-$n.safetensors" --table "$out/test-60.sqlite" --json > "$out/eval-$n.json"
done

# 2. Latency tables of this CPU, each checked against 20 sampled subnets
# timed end to end: batch 1 and 16, with and without cache eviction, three
# validation seeds each (the machine is noisy); then the tables the search
# uses (2 threads, 1 thread, batch 16, default eviction).
for seed in 0 1 2; do
  for b in 1 16; do
    for e in 0 8192; do
      [ -f "$out/lut-b$b-e$e-s$seed.lut.json" ] || $ofa profile --batch $b --evict-kib $e --validate 20 --seed $seed \
        --out "$out/lut-b$b-e$e-s$seed.lut.json" > "$out/lut-b$b-e$e-s$seed.txt" 2>&1
    done
  done
done
[ -f "$out/cpu-2t-b1.lut.json" ] || $ofa profile --validate 20 --out "$out/cpu-2t-b1.lut.json" > "$out/lut-2t-b1.txt" 2>&1
[ -f "$out/cpu-1t-b1.lut.json" ] || $ofa profile --threads 1 --validate 20 --out "$out/cpu-1t-b1.lut.json" > "$out/lut-1t-b1.txt" 2>&1
[ -f "$out/cpu-2t-b16.lut.json" ] || $ofa profile --batch 16 --validate 20 --out "$out/cpu-2t-b16.lut.json" > "$out/lut-2t-b16.txt" 2>&1

# 3. Search time: one scenario, then 40 (3 latency tables × 10 budgets +
# 10 FLOPs budgets), 500 generations each.
pred="$out/pred-320.safetensors"
/usr/bin/time -f "%e s wall" $ofa search --predictor "$pred" --efficiency "lut:$out/cpu-2t-b1.lut.json" \
  --constraint 'latency<=1.5ms' --out "$out/search-1" > "$out/search-1.txt" 2>&1
python3 - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
lines = []
for dev in ["cpu-2t-b1", "cpu-1t-b1", "cpu-2t-b16"]:
    lut = f"{out}/{dev}.lut.json"  # read here; the file names it relative to itself
    # The validation's first two subnets are max and min: the table's range.
    v = json.load(open(lut))["validation"]["samples"]
    lo, hi = v[1][1], v[0][1]
    for i in range(10):
        b = lo + (hi - lo) * (i + 0.5) / 10
        lines += ["[[scenario]]", f'name = "{dev}-{b:.3f}ms"', f'lut = "{dev}.lut.json"', f'constraints = ["latency<={b:.4f}ms"]', ""]
for i in range(10):
    b = 2.0 + 1.3 * i
    lines += ["[[scenario]]", f'name = "flops-{b:.1f}M"', f'constraints = ["flops<={b:.2f}M"]', ""]
open(f"{out}/scenarios-40.toml", "w").write("\n".join(lines))
EOF
/usr/bin/time -f "%e s wall" $ofa search --predictor "$pred" --scenarios "$out/scenarios-40.toml" \
  --out "$out/search-40" > "$out/search-40.txt" 2>&1
grep -H "mean |error|" "$out"/lut-*.txt
tail -n 2 "$out"/search-*.txt
