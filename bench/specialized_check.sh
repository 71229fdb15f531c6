#!/usr/bin/env bash
# `ofa import --specialized` against the reference (issue 12): specialized
# networks made by the reference's own code (bench/specialized_check.py:
# random subnets of OFAMobileNetV3 w1.0 and w1.2, extracted with
# get_active_subnet) are imported, run with `ofa predict`, and their logits
# compared with the reference's. Needs torch, torchvision, Pillow and a copy
# of mit-han-lab/once-for-all (OFA_REPO, else cloned into OUT).
#
#   OFA_REPO=path/to/once-for-all bash bench/specialized_check.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/specialized-check}
OFA=${OFA:-target/release/ofa}
mkdir -p "$OUT"
. bench/reference_env.sh
reference_env "$OUT"
for spec in "1.0 0" "1.0 1" "1.2 2"; do
  set -- $spec
  d=$OUT/w$1-seed$2
  python3 bench/specialized_check.py --ofa-repo "$OFA_REPO" --width "$1" --seed "$2" "$d" > /dev/null
  "$OFA" import --specialized "$d" --out "$d/subnet"
  "$OFA" predict --subnet "$d/subnet" --input "$d/input.npy" --output "$d/ofa_logits.npy" > /dev/null
  python3 - "$d" <<'PY'
import sys, numpy as np
d = sys.argv[1]
a, b = np.load(f"{d}/logits.npy"), np.load(f"{d}/ofa_logits.npy")
print(f"{d}: max |ofa − reference| = {np.abs(a - b).max():.2e} (logits up to {np.abs(a).max():.2f}), "
      f"same top-1: {bool((a.argmax(1) == b.argmax(1)).all())}")
PY
done
