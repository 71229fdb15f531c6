#!/usr/bin/env python3
"""The PyTorch side of `ofa bench`: times the same subnets, written as plain
PyTorch modules from the layer lists `ofa bench ... --dump FILE` writes.

    ofa bench train --dump /tmp/train.json && python3 bench/pytorch_reference.py /tmp/train.json
    ofa bench infer --batch 1,64 --dump /tmp/infer.json && python3 bench/pytorch_reference.py /tmp/infer.json
    python3 bench/pytorch_reference.py /tmp/train.json --device cuda      # on a GPU
    python3 bench/pytorch_reference.py /tmp/train.json --threads 1
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn as nn


def act(name):
    return {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "h_swish": nn.Hardswish()}[name]


class SE(nn.Module):
    def __init__(self, ch, mid):
        super().__init__()
        self.reduce = nn.Conv2d(ch, mid, 1, bias=True)
        self.expand = nn.Conv2d(mid, ch, 1, bias=True)

    def forward(self, x):
        y = x.mean((2, 3), keepdim=True)
        return x * nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(y))))


class MBConv(nn.Module):
    def __init__(self, l):
        super().__init__()
        layers = []
        if l["expand"]:
            layers += [nn.Conv2d(l["in_ch"], l["mid"], 1, bias=False), nn.BatchNorm2d(l["mid"]), act(l["act"])]
        k, m = l["kernel"], l["mid"]
        layers += [nn.Conv2d(m, m, k, l["stride"], k // 2, groups=m, bias=False), nn.BatchNorm2d(m), act(l["act"])]
        if l["se_mid"]:
            layers.append(SE(m, l["se_mid"]))
        layers += [nn.Conv2d(m, l["out_ch"], 1, bias=False), nn.BatchNorm2d(l["out_ch"])]
        self.body = nn.Sequential(*layers)
        self.residual = l["residual"]

    def forward(self, x):
        y = self.body(x)
        return y + x if self.residual else y


def build(layers):
    mods = []
    for l in layers:
        op = l["op"]
        if op == "conv":
            k = l["kernel"]
            mods.append(nn.Conv2d(l["in_ch"], l["out_ch"], k, l["stride"], k // 2, bias=False))
            if l["bn"]:
                mods.append(nn.BatchNorm2d(l["out_ch"]))
            mods.append(act(l["act"]))
        elif op == "mb_conv":
            mods.append(MBConv(l))
        elif op == "pool":
            mods.append(nn.AdaptiveAvgPool2d(1))
        elif op == "linear":
            mods += [nn.Flatten(), nn.Dropout(0.1), nn.Linear(l["in_f"], l["out_f"])]
    return nn.Sequential(*mods)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("threads", nargs="?", type=int, default=2)
    ap.add_argument("--threads", dest="threads_opt", type=int)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads_opt or a.threads)
    dev = torch.device(a.device)
    spec = json.load(open(a.spec))
    c, classes = spec["in_channels"], spec["classes"]
    nets = [build(x["layers"]).to(dev) for x in spec["archs"]]
    r = spec["archs"][0]["resolution"]
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    if spec["label"] == "train":
        bs = spec["batch"][0]
        y = (torch.arange(bs) % classes).to(dev)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
        largest = build(spec["largest"]).to(dev)
        for label, seq in [("random subnet", [nets[0]] + nets), ("largest subnet", [largest] * (len(nets) + 1))]:
            times = []
            for i, net in enumerate(seq):
                net.train()
                opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=3e-5)
                x = torch.randn(bs, c, r, r, device=dev)
                sync(dev)
                t = time.perf_counter()
                opt.zero_grad()
                loss_fn(net(x), y).backward()
                opt.step()
                sync(dev)
                if i > 0:
                    times.append(time.perf_counter() - t)
            m = statistics.median(times)
            print(f"{label:<15} train step, batch {bs}, r {r}: {m:.3f} s/step, {bs / m:.0f} img/s")
    else:
        for bs in spec["batch"]:
            rates = []
            for net in nets:
                net.eval()
                x = torch.randn(bs, c, r, r, device=dev)
                with torch.no_grad():
                    net(x)
                    reps = 10 * (10 if bs == 1 else 1)
                    sync(dev)
                    t = time.perf_counter()
                    for _ in range(reps):
                        net(x)
                    sync(dev)
                    rates.append(reps * bs / (time.perf_counter() - t))
            print(f"inference, batch {bs:>3}: {statistics.median(rates):.0f} img/s")
    if dev.type == "cuda":
        print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated(dev) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
