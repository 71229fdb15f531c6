#!/usr/bin/env bash
# Two ofa binaries' training steps on the same subnets, alternated ROUNDS
# times so that a shared machine's drift hits both alike (`ofa bench
# train`, its random subnets and the largest one, seed 0). Prints the
# median s/step per binary over rounds and the ratio B / A.
#
#   A=old/ofa B=new/ofa SPACE=ofa-mbv3-w1.0 CHANNELS=3 BATCH=16 bash bench/train_ab.sh
#
# SPACE may be a space file (for example the smallest-subnet copy that
# `SMALLEST=1 bash bench/train_reference.sh` writes).
set -euo pipefail
cd "$(dirname "$0")/.."
A=${A:?path of binary A}; B=${B:?path of binary B}
SPACE=${SPACE:-ofa-mbv3-w1.0}; CHANNELS=${CHANNELS:-3}; BATCH=${BATCH:-16}
THREADS=${THREADS:-2}; ROUNDS=${ROUNDS:-4}; STEPS=${STEPS:-6}
OUT=${OUT:-runs/train-ab}; mkdir -p "$OUT"
for i in $(seq "$ROUNDS"); do
  for which in A B; do
    "${!which}" --threads "$THREADS" bench train --space "$SPACE" --channels "$CHANNELS" \
      --batch "$BATCH" --steps "$STEPS" --json > "$OUT/$which-$i.json"
  done
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(p):
    t = open(p).read(); return json.loads(t[t.index("{"):])
for label in ["random subnet", "largest subnet"]:
    med = {w: statistics.median(load(f"{out}/{w}-{i}.json")[label]["seconds_per_step"]
                                for i in range(1, rounds + 1)) for w in "AB"}
    print(f"{label}: A {med['A']:.3f} s/step, B {med['B']:.3f} s/step, B/A {med['B'] / med['A']:.3f}")
PY
