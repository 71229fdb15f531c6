"""Projection (a model, not a measurement) of data-parallel step time and
scaling efficiency for 2-64 ranks, from bench/results/mpi-<preset>.json.

Strong scaling, as `ofa train` under mpirun does it: the global batch stays
fixed, so each rank's compute is the measured one-process step time divided
by the ranks (perfect compute scaling assumed; real per-rank efficiency at
small slices is lower). Communication per step:
  * the gradient: one ring all-reduce of G bytes,
    2 (p-1)/p * G / bandwidth + 2 (p-1) * latency;
  * batch-norm statistics: n small all-reduces (recursive doubling),
    n * log2(p) * (latency + s / bandwidth) for their mean size s.
Latency per message 5 us (a typical MPI small-message latency on
Ethernet/RoCE; InfiniBand is lower). Usage: python3 bench/mpi_projection.py DIR
"""
import glob, json, math, sys

LATENCY = 5e-6
RANKS = [2, 4, 8, 16, 32, 64]
LINKS = {"10 Gb/s": 10e9 / 8, "25 Gb/s": 25e9 / 8, "100 Gb/s": 100e9 / 8}


def project(r, p, bw):
    compute = r["step_seconds_1x2"] / p
    g = r["gradient_bytes_per_step"]
    n = r["bn_calls_per_step"]
    s = r["bn_bytes_per_step"] / max(n, 1)
    grad = 2 * (p - 1) / p * g / bw + 2 * (p - 1) * LATENCY
    bn = n * math.log2(p) * (LATENCY + s / bw)
    step = compute + grad + bn
    return step, compute / step


def main(folder):
    for path in sorted(glob.glob(f"{folder}/mpi-*.json")):
        r = json.load(open(path))
        print(f"\n{r['space']}: one-process step {1000 * r['step_seconds_1x2']:.0f} ms (2 threads), "
              f"{r['gradient_bytes_per_step'] / 1e6:.2f} MB of gradients and "
              f"{r['bn_calls_per_step']:.0f} BN all-reduces ({r['bn_bytes_per_step'] / 1e3:.1f} kB) per step\n")
        print("| ranks | " + " | ".join(f"{k}: step ms / efficiency" for k in LINKS) + " |")
        print("|---|" + "---|" * len(LINKS))
        for p in RANKS:
            cells = []
            for bw in LINKS.values():
                step, eff = project(r, p, bw)
                cells.append(f"{1000 * step:.1f} / {100 * eff:.0f}%")
            print(f"| {p} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
