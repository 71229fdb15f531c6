#!/usr/bin/env bash
# Two ofa binaries' inference on the same subnets, alternated ROUNDS times
# so that a shared machine's drift hits both alike (`ofa bench infer`, 4
# random subnets of the space, seed 0). Prints the median img/s per binary
# and batch over rounds and the ratio B / A.
#
#   A=old/ofa B=new/ofa SPACE=ofa-mbv3-w1.0 CHANNELS=3 BATCH=1,16 bash bench/infer_ab.sh
#
# A_ARGS / B_ARGS: extra `bench infer` arguments per side, e.g. one binary
# with and without its host engine: A=ofa B=ofa A_ARGS=--no-engine.
set -euo pipefail
cd "$(dirname "$0")/.."
A=${A:?path of binary A}; B=${B:?path of binary B}
SPACE=${SPACE:-ofa-mbv3-w1.0}; CHANNELS=${CHANNELS:-3}; BATCH=${BATCH:-1,16}
THREADS=${THREADS:-2}; ROUNDS=${ROUNDS:-3}; STEPS=${STEPS:-10}
OUT=${OUT:-runs/infer-ab}; mkdir -p "$OUT"
for i in $(seq "$ROUNDS"); do
  for which in A B; do
    bin=${!which}; extra=${which}_ARGS
    # shellcheck disable=SC2086  # the extra arguments are words
    "$bin" --threads "$THREADS" bench infer --space "$SPACE" --channels "$CHANNELS" \
      --batch "$BATCH" --steps "$STEPS" ${!extra:-} --json > "$OUT/$which-$i.json"
  done
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(p):
    t = open(p).read(); return json.loads(t[t.index("{"):])
res = {}
for w in "AB":
    for i in range(1, rounds + 1):
        for s in load(f"{out}/{w}-{i}.json")["subnets"]:
            for k, v in s.items():
                if k.startswith("batch_"):
                    res.setdefault((w, k), []).append(v["images_per_s"])
for k in sorted({k for _, k in res}):
    a, b = statistics.median(res[("A", k)]), statistics.median(res[("B", k)])
    print(f"{k}: A {a:.1f} img/s, B {b:.1f} img/s, B/A {b / a:.3f}")
PY
