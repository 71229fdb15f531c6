#!/usr/bin/env bash
# `ofa specialize` on ofa-mbv3-w1.0 (issue 12's benchmark): wall-clock of a
# cold call (profiling this machine's latency table for every resolution
# 128–224 step 4) and of a cached call with 40 latency scenarios, plus the
# table's error against 20 subnets timed end to end. Supernet and
# predictor have the public ones' shapes with random weights
# (bench/specialize_imagenet.py, needs torch and a copy of
# mit-han-lab/once-for-all: OFA_REPO, else cloned into OUT).
#
#   OFA_REPO=path/to/once-for-all THREADS=2 bash bench/specialize_imagenet.sh [OUT]
#
# Writes bench/results/specialize-imagenet.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/specialize-imagenet}
OFA=${OFA:-target/release/ofa}
THREADS=${THREADS:-2}
RESULTS=${RESULTS:-bench/results}
mkdir -p "$OUT" "$RESULTS"
. bench/reference_env.sh
reference_env "$OUT"
[ -f "$OUT/acc_predictor.pth" ] || python3 bench/specialize_imagenet.py --ofa-repo "$OFA_REPO" "$OUT"
"$OFA" import --from-pytorch "$OUT/ofa_mbv3_w1.0.pth" --space ofa-mbv3-w1.0 --out "$OUT/supernet.safetensors" > /dev/null
"$OFA" import --predictor "$OUT/acc_predictor.pth" --space ofa-mbv3-w1.0 --out "$OUT/predictor.safetensors" > /dev/null
rm -rf "$OUT/cache"
common=(--threads "$THREADS" specialize --supernet "$OUT/supernet.safetensors"
        --predictor "$OUT/predictor.safetensors" --lut-cache "$OUT/cache")
"$OFA" "${common[@]}" --constraint 'latency<=30ms' --validate 20 --out "$OUT/cold" --json > "$OUT/cold.json"
lut=$(ls "$OUT"/cache/*.lut.json)
lo=$("$OFA" latency --arch min --lut "$lut" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["predicted_ms"])')
hi=$("$OFA" latency --arch max --lut "$lut" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["predicted_ms"])')
python3 - "$lo" "$hi" "$OUT/scenarios.toml" <<'PY'
import sys
lo, hi, path = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
with open(path, "w") as f:
    for i in range(40):
        b = lo + (hi - lo) * (i + 1) / 41
        f.write(f'[[scenario]]\nname = "latency-{i:02d}"\nconstraints = ["latency<={b:.3f}ms"]\n\n')
PY
"$OFA" "${common[@]}" --scenarios "$OUT/scenarios.toml" --out "$OUT/cached" --json > "$OUT/cached.json"
python3 - "$OUT" "$THREADS" "$RESULTS/specialize-imagenet.json" <<'PY'
import datetime, json, platform, sys
out, threads, dest = sys.argv[1:4]
cold, cached = json.load(open(f"{out}/cold.json")), json.load(open(f"{out}/cached.json"))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
v = {k: x for k, x in cold["lut"]["validation"].items() if k != "samples"}
ok = sum(1 for c in cached["chosen"] if c["lut_ms"] is not None)
res = {"space": cold["space"], "threads": int(threads), "machine": cpu, "date": datetime.date.today().isoformat(),
       "cold": {"total_s": cold["total_seconds"], "profile_s": cold["lut"]["seconds"], "layers": cold["lut"]["entries"]},
       "cached_40": {"total_s": cached["total_seconds"], "search_s": cached["search_seconds"],
                     "ship_s": cached["ship_seconds"], "chosen": len(cached["chosen"]), "failed": len(cached["failed"])},
       "lut_validation": v}
print(json.dumps(res, indent=1))
json.dump(res, open(dest, "w"), indent=1)
PY
