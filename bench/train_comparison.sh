#!/usr/bin/env bash
# Issue-3 benchmarks: ps, deps and sandwich supernets trained with one budget
# (the quick preset's settings, EPOCHS epochs each), the four reference
# subnets evaluated from each (BN recalibrated, full 5000-image hold-out and
# the 10000-image test set), and the same four architectures trained alone
# for the same epochs. Writes OUT/summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ofa=./target/release/ofa
out=${1:-runs/bench}
epochs=${EPOCHS:-2}
mkdir -p "$out/archs"
$ofa sample --space mbv3-28-lite --named --out "$out/archs" >/dev/null
for s in deps ps sandwich; do
  [ -f "$out/$s/supernet.safetensors" ] && continue
  resume=""; [ -f "$out/$s/config.toml" ] && resume="--resume"
  $ofa train --preset quick --schedule $s --epochs "$epochs" --out "$out/$s" --quiet $resume 2>&1 | tail -n 3
done
for a in max min mid random; do
  [ -f "$out/ind-$a/supernet.safetensors" ] && continue
  resume=""; [ -f "$out/ind-$a/config.toml" ] && resume="--resume"
  $ofa train --preset quick --schedule independent --arch "$out/archs/$a.json" --epochs "$epochs" \
    --out "$out/ind-$a" --quiet $resume 2>&1 | tail -n 2
done
echo "{" > "$out/summary.json.tmp"
first=1
for run in deps ps sandwich ind-max ind-min ind-mid ind-random; do
  for a in max min mid random; do
    case $run in ind-*) [ "ind-$a" = "$run" ] || continue;; esac
    for split in val test; do
      r=$($ofa eval --supernet "$out/$run/supernet.safetensors" --arch "$out/archs/$a.json" --split $split --json)
      [ $first = 1 ] || echo "," >> "$out/summary.json.tmp"; first=0
      printf '"%s/%s/%s": %s' "$run" "$a" "$split" "$r" >> "$out/summary.json.tmp"
    done
  done
done
echo "}" >> "$out/summary.json.tmp"
mv "$out/summary.json.tmp" "$out/summary.json"
for run in deps ps sandwich ind-max ind-min ind-mid ind-random; do
  echo "$run: $(tail -n 1 "$out/$run/metrics.jsonl" | cut -c1-200)"
done
