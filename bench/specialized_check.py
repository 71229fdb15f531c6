#!/usr/bin/env python3
"""Makes a specialized network the way the reference releases them, for
`ofa import --specialized` to read: a random subnet of the reference's
OFAMobileNetV3 (random weights and BN statistics), extracted with
`get_active_subnet(preserve_weight=True)`, written as `net.config`,
`run.config` and `init` ({'state_dict': …}), with a random input batch and
the reference's logits for it (eval mode).

    python3 bench/specialized_check.py --ofa-repo PATH --width 1.0 --seed 0 OUT_DIR

bench/specialized_check.sh imports it with ofa and compares the logits.
"""
import argparse
import json
import os
import random
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--ofa-repo", required=True)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    sys.path.insert(0, a.ofa_repo)
    import torch
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3

    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    sup = OFAMobileNetV3(n_classes=1000, dropout_rate=0, width_mult=a.width,
                         ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    with torch.no_grad():
        for m in sup.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    arch = {"ks": [rng.choice([3, 5, 7]) for _ in range(20)],
            "e": [rng.choice([3, 4, 6]) for _ in range(20)],
            "d": [rng.choice([2, 3, 4]) for _ in range(5)]}
    r = rng.choice(list(range(128, 225, 4)))
    sup.set_active_subnet(**arch)
    net = sup.get_active_subnet(preserve_weight=True).eval()
    os.makedirs(a.out, exist_ok=True)
    json.dump(net.config, open(f"{a.out}/net.config", "w"), indent=1)
    json.dump({"image_size": r}, open(f"{a.out}/run.config", "w"))
    torch.save({"state_dict": net.state_dict()}, f"{a.out}/init")
    json.dump({**arch, "r": r}, open(f"{a.out}/arch.json", "w"))
    x = torch.randn(2, 3, r, r)
    with torch.no_grad():
        y = net(x)
    np.save(f"{a.out}/input.npy", x.numpy())
    np.save(f"{a.out}/logits.npy", y.numpy())
    print(json.dumps({**arch, "r": r}))


if __name__ == "__main__":
    main()
