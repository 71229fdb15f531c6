#!/usr/bin/env bash
# Inference of extracted subnets, ofa vs ONNX Runtime on the same networks
# (issue 9): `ofa bench infer --save` times 4 random subnets of a space and
# writes them as subnet folders; each is exported with `ofa export --onnx`
# and timed in ONNX Runtime's CPU provider with the same thread count,
# batch sizes and repetitions, in the same run. Prints one table per space
# and writes bench/results/ort-<space>.json.
#
#   THREADS=2 bash bench/ort_compare.sh [OUT]
#
# OFA: the ofa binary (default target/release/ofa).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/ort-compare}
OFA=${OFA:-target/release/ofa}
THREADS=${THREADS:-2}
STEPS=${STEPS:-10}
BATCH=${BATCH:-1,16}
RESULTS=${RESULTS:-bench/results}
mkdir -p "$OUT" "$RESULTS"
python3 -c "import onnxruntime, numpy" 2>/dev/null ||
  python3 -m pip install --quiet onnxruntime numpy

# space channels
for spec in "ofa-mbv3-w1.0 3" "mbv3-28-lite 1"; do
  set -- $spec
  space=$1 channels=$2 dir=$OUT/$1
  rm -rf "$dir" && mkdir -p "$dir"
  "$OFA" --threads "$THREADS" bench infer --space "$space" --channels "$channels" \
    --batch "$BATCH" --steps "$STEPS" --save "$dir" --json > "$dir/ofa.json"  # progress lines, then JSON
  models=()
  for s in "$dir"/subnet-*; do
    "$OFA" --threads "$THREADS" export --subnet "$s" --onnx "$s/model.onnx" > /dev/null
    models+=("$s/model.onnx")
  done
  python3 bench/ort_infer.py --threads "$THREADS" --batch "$BATCH" --steps "$STEPS" \
    "${models[@]}" > "$dir/ort.json"
  python3 - "$dir" "$space" "$THREADS" "$RESULTS/ort-$space.json" <<'PY'
import datetime, json, platform, sys
d, space, threads, dest = sys.argv[1:5]
text = open(f"{d}/ofa.json").read()  # progress lines, then the JSON report
ofa = json.loads(text[text.index("{"):])
ort = json.load(open(f"{d}/ort.json"))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
rows = []
for s in ofa["subnets"]:
    o = ort["models"][f"{d}/{s['name']}/model.onnx"]
    for k, v in s.items():
        if k.startswith("batch_"):
            a, b = v["images_per_s"], o[k]["images_per_s"]
            rows.append({"subnet": s["name"], "mflops": s["mflops"], "batch": int(k[6:]),
                         "ofa_img_s": a, "ort_img_s": b, "ort_over_ofa": b / a})
print(f"\n{space}, {threads} threads, onnxruntime {ort['onnxruntime']}")
print("| subnet | MFLOPs | batch | ofa img/s | ORT img/s | ORT / ofa |")
print("|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['subnet']} | {r['mflops']:.1f} | {r['batch']} | {r['ofa_img_s']:.1f} | {r['ort_img_s']:.1f} | {r['ort_over_ofa']:.2f}× |")
for bs in sorted({r["batch"] for r in rows}):
    rs = sorted(r["ort_over_ofa"] for r in rows if r["batch"] == bs)
    print(f"batch {bs}: median ORT/ofa {rs[len(rs)//2]:.2f}×")
json.dump({"space": space, "threads": int(threads), "machine": cpu,
           "date": datetime.date.today().isoformat(), "onnxruntime": ort["onnxruntime"],
           "rows": rows}, open(dest, "w"), indent=1)
PY
done
