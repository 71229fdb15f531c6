#!/usr/bin/env bash
# Latency tables against end-to-end latency (issue 12's benchmark): `ofa
# profile` for ofa-mbv3-w1.0 (every resolution 128–224 step 4), timed in our
# engine and in ONNX Runtime, with the default calibration (10 subnets),
# then checked on 20 other subnets (the largest, the smallest, 18 seeded
# draws) at their own resolutions and with all of them at 160 and at 224 px.
# Run with nothing else busy: these are timings.
#
#   THREADS=2 bash bench/latency_tables.sh [OUT]
#
# OFA: an ofa binary built with `--features onnxruntime` (default
# target/release/ofa); RUNTIMES="ofa" times only our engine (any build). Writes bench/results/lut-<runtime>-ofa-mbv3-w1.0.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/latency-tables}
OFA=${OFA:-target/release/ofa}
THREADS=${THREADS:-2}
RESULTS=${RESULTS:-bench/results}
SPACE=${SPACE:-ofa-mbv3-w1.0}
mkdir -p "$OUT" "$RESULTS"
python3 -c "import onnxruntime" 2>/dev/null || python3 -m pip install --quiet onnxruntime
for runtime in ${RUNTIMES:-ofa onnxruntime}; do
  start=$(date +%s.%N)
  "$OFA" --threads "$THREADS" profile --space "$SPACE" --runtime "$runtime" \
    --validate 20 --validate-at 160,224 --out "$OUT/$runtime.lut.json" | tee "$OUT/$runtime.log"
  end=$(date +%s.%N)
  python3 - "$OUT/$runtime.lut.json" "$RESULTS/lut-$runtime-$SPACE.json" "$start" "$end" <<'PY'
import datetime, json, sys
src, dest, start, end = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
t = json.load(open(src))
def summary(v):
    keys = ["subnets", "mean_abs_error_pct", "max_abs_error_pct", "kendall_tau",
            "scale", "scale_free_error_pct", "scale_only"]
    return {k: v.get(k) for k in keys}
out = {
    "space": t["space"]["name"], "runtime": t["runtime"], "runtime_version": t["runtime_version"],
    "device": t["device"], "threads": t["threads"], "batch": t["config"]["batch"],
    "layers": len(t["entries"]), "wall_s": end - start,
    "calibration": {"subnets": t["calibration_subnets"], "scale": t["scale"],
                    "per_layer_ms": t.get("per_layer_ms", 0.0),
                    "per_mega_element_ms": t.get("per_mega_element_ms", 0.0),
                    "fits": t.get("calibration_fits")},
    "validation": summary(t["validation"]),
    "validation_at": {r: summary(v) for r, v in t.get("validation_at", {}).items()},
    "date": datetime.date.today().isoformat(),
}
json.dump(out, open(dest + ".tmp", "w"), indent=1)
import os; os.replace(dest + ".tmp", dest)
PY
done
