#!/usr/bin/env python3
"""Inputs for bench/specialize_imagenet.sh: a supernet and an accuracy
predictor with the shapes of the public ImageNet ones (random weights:
the benchmark times the machinery, not the accuracy) — the reference's
OFAMobileNetV3 w1.0 (ks 3/5/7, e 3/4/6, d 2/3/4) as `{'state_dict': …}`,
and the tutorial predictor's nn.Sequential 128·400·400·400·1.

    python3 bench/specialize_imagenet.py --ofa-repo PATH OUT_DIR
"""
import argparse
import os
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--ofa-repo", required=True)
    a = ap.parse_args()
    sys.path.insert(0, a.ofa_repo)
    import torch
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3

    torch.manual_seed(0)
    os.makedirs(a.out, exist_ok=True)
    net = OFAMobileNetV3(n_classes=1000, dropout_rate=0, width_mult=1.0,
                         ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    torch.save({"state_dict": net.state_dict()}, f"{a.out}/ofa_mbv3_w1.0.pth")
    n = torch.nn
    pred = n.Sequential(n.Linear(128, 400), n.ReLU(), n.Linear(400, 400), n.ReLU(),
                        n.Linear(400, 400), n.ReLU(), n.Linear(400, 1))
    torch.save(pred.state_dict(), f"{a.out}/acc_predictor.pth")


if __name__ == "__main__":
    main()
