#!/usr/bin/env python3
"""Times ONNX models in ONNX Runtime (CPU execution provider) the way
`ofa bench infer` times the same subnets: one warm-up run, then a fixed
number of timed runs of a random normal batch, reported as images/s.

    python3 bench/ort_infer.py --threads 2 --batch 1,16 --steps 10 \
        subnet-0/model.onnx subnet-1/model.onnx ...

Prints one JSON object: {model path: {"batch_1": {"images_per_s": …}, …}}.
Needs `pip install onnxruntime numpy` (bench/ort_compare.sh installs them).
"""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def session(path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    batches = [int(b) for b in a.batch.split(",")]
    out = {"onnxruntime": ort.__version__, "threads": a.threads, "models": {}}
    for path in a.models:
        s = session(path, a.threads)
        inp = s.get_inputs()[0]
        _, c, h, w = inp.shape
        rates = {}
        for bs in batches:
            x = np.random.default_rng(0).standard_normal((bs, c, h, w), dtype=np.float32)
            s.run(None, {inp.name: x})
            # The same repetition rule as `ofa bench infer`.
            reps = max(a.steps, 1) * (10 if bs == 1 else 1)
            t = time.perf_counter()
            for _ in range(reps):
                s.run(None, {inp.name: x})
            rates[f"batch_{bs}"] = {"images_per_s": reps * bs / (time.perf_counter() - t)}
        out["models"][path] = rates
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
