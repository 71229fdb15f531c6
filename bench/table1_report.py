#!/usr/bin/env python3
"""Markdown tables from bench/results/table1-*.json (bench/train_comparison.sh)."""
import glob, json, os, sys

res = sys.argv[1] if len(sys.argv) > 1 else "bench/results"
runs = {}
for p in sorted(glob.glob(os.path.join(res, "table1-*.json"))):
    r = json.load(open(p))
    runs[r["run"]] = r
if not runs:
    sys.exit("no results yet")
archs = ["max", "min", "mid", "random"]
sup = [n for n in runs if not n.startswith("ind-")]
sup.sort(key=lambda n: (runs[n]["epochs"], n))
ind = {n.split("-")[1]: runs[n] for n in runs if n.startswith("ind-")}

def cell(r, a):
    t = r["top1"]
    if f"{a}/val" not in t:
        return "–"
    return f"{100*t[a+'/val']:.2f} / {100*t[a+'/test']:.2f}"

print("Top-1 % (validation / test).\n")
head = ["subnet"] + [f"{n} ({runs[n]['epochs']:g} ep)" for n in sup] + [f"alone ({next(iter(ind.values()))['epochs']:g} ep)" if ind else "alone"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for a in archs:
    row = [a] + [cell(runs[n], a) for n in sup] + [cell(ind[a], a) if a in ind else "–"]
    print("| " + " | ".join(row) + " |")
print("\nCost.\n")
print("| run | epochs | wall-clock (training) | images processed | images/s | threads | machine | date |")
print("|---|---|---|---|---|---|---|---|")
for n in sup + sorted(x for x in runs if x.startswith("ind-")):
    r = runs[n]
    print(f"| {n} | {r['epochs']:g} | {r['train_seconds']:.0f} s | {r['images']:,} | {r['images_per_s']:.0f} | {r['threads']} | {r['machine']} | {r['date']} |")
