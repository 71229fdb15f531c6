#!/usr/bin/env python3
"""Times training steps of the reference implementation's own supernet
(`OFAMobileNetV3` from mit-han-lab/once-for-all, kernel transformation on)
on the subnets `ofa bench train --dump` timed (issue 9's training bar).

    ofa bench train --space ofa-mbv3-w1.0 --channels 3 --batch 16 --dump train.json
    python3 bench/ofa_reference_train.py --ofa-repo PATH train.json

`PATH` is a checkout of https://github.com/mit-han-lab/once-for-all (only its
`ofa/` package is imported). One step = forward of the active subnet,
label-smoothed cross-entropy, backward, SGD (momentum 0.9, Nesterov, weight
decay 3e-5) — what `ofa bench train` times. One warm-up step, then one timed
step per dumped subnet; "largest" repeats the max subnet as many times.
Prints a JSON object with median seconds per step and images/s.
"""
import argparse
import json
import re
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dump")
    ap.add_argument("--ofa-repo", required=True)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    sys.path.insert(0, a.ofa_repo)
    import torch
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d = json.load(open(a.dump))
    width = float(re.search(r"w(\d+\.\d+)", d["space"]).group(1))
    net = OFAMobileNetV3(
        n_classes=d["classes"],
        dropout_rate=0.1,
        width_mult=width,
        ks_list=[3, 5, 7],
        expand_ratio_list=[3, 4, 6],
        depth_list=[2, 3, 4],
    )
    net.train()
    opt = torch.optim.SGD(
        net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=3e-5
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    bs = d["batch"][0]
    archs = [x["arch"] for x in d["archs"]]
    largest = {"ks": [7] * 20, "e": [6] * 20, "d": [4] * 5, "r": archs[0]["r"]}

    def step(arch):
        net.set_active_subnet(ks=arch["ks"], e=arch["e"], d=arch["d"])
        x = torch.randn(bs, 3, arch["r"], arch["r"])
        y = torch.arange(bs) % d["classes"]
        t = time.perf_counter()
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
        return time.perf_counter() - t

    out = {"torch": torch.__version__, "threads": a.threads, "batch": bs}
    for label, lst in [("random subnet", archs), ("largest subnet", [largest] * len(archs))]:
        step(lst[0])  # warm-up
        times = sorted(step(x) for x in lst)
        m = times[len(times) // 2]
        out[label] = {"seconds_per_step": m, "images_per_s": bs / m}
        print(f"{label:<15} reference OFAMobileNetV3 train step, batch {bs}: {m:.3f} s/step",
              file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
