#!/usr/bin/env bash
# Training steps, ofa vs the reference implementation's supernet (issue 9):
# `ofa bench train --dump` times random subnets and the largest one of
# ofa-mbv3-w1.0 at 224 px; bench/ofa_reference_train.py times the same
# subnets in mit-han-lab/once-for-all's OFAMobileNetV3 (kernel
# transformation on), and bench/pytorch_reference.py as static PyTorch
# modules, all with the same thread count, in the same run.
#
#   OFA_REPO=path/to/once-for-all THREADS=2 bash bench/train_reference.sh [OUT]
#
# Without OFA_REPO the reference is cloned from GitHub into OUT. Needs
# torch, torchvision and Pillow (installed when missing). Writes bench/results/train-reference.json.
#
# SMALLEST=1: the smallest subnet only (every step the same network: k 3,
# e 3, d 2, 224 px), through a copy of the space with those choices alone;
# its dump is widened to the reference's 4 blocks per stage (the blocks
# past depth 2 are inactive). Writes train-reference-smallest.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/train-reference}
OFA=${OFA:-target/release/ofa}
THREADS=${THREADS:-2}
BATCH=${BATCH:-16}
STEPS=${STEPS:-10}
RESULTS=${RESULTS:-bench/results}
mkdir -p "$OUT" "$RESULTS"
. bench/reference_env.sh
reference_env "$OUT"
SPACE=ofa-mbv3-w1.0
NAME=train-reference
if [ "${SMALLEST:-0}" = 1 ]; then
  SPACE="$OUT/smallest.toml"
  NAME=train-reference-smallest
  "$OFA" space show ofa-mbv3-w1.0 | python3 -c '
import re, sys
s = sys.stdin.read()
for key, v in [("resolutions", 224), ("kernel_choices", 3), ("expand_choices", 3), ("depth_choices", 2)]:
    s = re.sub(key + r" = \[[^\]]*\]", f"{key} = [{v}]", s)
s = s.replace("max_depth = 4", "max_depth = 2").replace("name = \"ofa-mbv3-w1.0\"", "name = \"ofa-mbv3-w1.0-smallest\"")
print(s, end="")' > "$SPACE"
fi
"$OFA" --threads "$THREADS" bench train --space "$SPACE" --channels 3 --batch "$BATCH" \
  --steps "$STEPS" --dump "$OUT/train.json" --json > "$OUT/ofa.txt"
if [ "${SMALLEST:-0}" = 1 ]; then
  python3 - "$OUT/train.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for a in d["archs"]:
    arch = a["arch"]
    for key in ("ks", "e"):  # 2 entries per stage -> the reference's 4
        v = arch[key]
        arch[key] = [x for s in range(0, len(v), 2) for x in v[s:s + 2] + v[s + 1:s + 2] * 2]
json.dump(d, open(sys.argv[1], "w"))
PY
fi
python3 bench/ofa_reference_train.py --ofa-repo "$OFA_REPO" --threads "$THREADS" \
  "$OUT/train.json" > "$OUT/reference.json"
python3 bench/pytorch_reference.py --threads "$THREADS" "$OUT/train.json" > "$OUT/static.txt"
python3 - "$OUT" "$THREADS" "$RESULTS/$NAME.json" "${SMALLEST:-0}" <<'PY'
import datetime, json, platform, re, sys
out, threads, dest, smallest = sys.argv[1:5]
text = open(f"{out}/ofa.txt").read()
ofa = json.loads(text[text.index("{"):])
ref = json.load(open(f"{out}/reference.json"))
static = open(f"{out}/static.txt").read()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
res = {"threads": int(threads), "machine": cpu, "date": datetime.date.today().isoformat(),
       "torch": ref["torch"], "batch": ref["batch"], "rows": []}
print(f"ofa-mbv3-w1.0, 224 px, batch {ref['batch']}, {threads} threads, torch {ref['torch']}")
print("| step | ofa s/step | OFAMobileNetV3 s/step | ofa speed-up |")
print("|---|---|---|---|")
# SMALLEST=1: every "random" step is the smallest subnet; the largest row
# does not apply (the space copy has no larger one).
for label in (["random subnet"] if smallest == "1" else ["random subnet", "largest subnet"]):
    a, b = ofa[label]["seconds_per_step"], ref[label]["seconds_per_step"]
    res["rows"].append({"step": label, "ofa_s": a, "reference_s": b, "speedup": b / a})
    print(f"| {label} | {a:.3f} | {b:.3f} | {b / a:.2f}× |")
print("\nstatic PyTorch modules (bench/pytorch_reference.py):\n" + static)
res["static_pytorch_output"] = static
json.dump(res, open(dest, "w"), indent=1)
PY
