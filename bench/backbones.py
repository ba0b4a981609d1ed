"""Backbone cost benchmark: FCOS with each backbone, forward GFLOPs and the time of a training
step (forward + loss + backward + SGD update), on the CPU, measured in one run with ratios to
ResNet-18 (absolute times drift between machines; ratios hold better).

    python bench/backbones.py                                  # 320 px, batch 4, one thread
    python bench/backbones.py --size 416 --batch 8 --backbones resnet18 regnet_x_400mf

Random init (from scratch: trained BatchNorm, nothing frozen, GroupNorm heads), 3 classes, 4 boxes
per image. GFLOPs: torch.utils.flop_counter (a multiply-add counts 2) of one size x size image
through the model (backbone, FPN, head; no loss). Step times: every variant once per repeat, in
turns, after one warm-up step each; the median is reported.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fcos.config import Config  # noqa: E402

BACKBONES = ("resnet18", "mobilenet_v3_large", "efficientnet_b0", "regnet_x_400mf")
HEADS = ((64, 2), (256, 4))   # (fpn_channels, num_convs): a light head and the papers'


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backbones", nargs="+", default=BACKBONES)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size, batch = args.size, args.batch
    images = torch.randn(batch, 3, size, size)
    corner = torch.rand(batch, 4, 2) * size * 0.6
    wh = 16 + torch.rand(batch, 4, 2) * size * 0.35
    targets = torch.cat([corner, corner + wh, torch.randint(0, 3, (batch, 4, 1)).float()], dim=2)  # [B, 4, 5]

    variants = {}
    for fpn_channels, num_convs in HEADS:
        for name in args.backbones:
            cfg = Config(backbone=name, pretrained=False, fpn_channels=fpn_channels, num_convs=num_convs).resolve()
            model = cfg.build_model(3)
            from torch.utils.flop_counter import FlopCounterMode
            model.eval()
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(images[:1])
            model.train()
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
            variants[(name, fpn_channels, num_convs)] = {
                "model": model, "loss": cfg.build_loss(), "optimizer": optimizer, "times": [],
                "gflops": counter.get_total_flops() / 1e9, "params": sum(p.numel() for p in model.parameters())}

    def step(v) -> float:
        start = time.perf_counter()
        losses = v["loss"](v["model"](images), targets)
        v["optimizer"].zero_grad()
        sum(losses.values()).backward()
        v["optimizer"].step()
        return time.perf_counter() - start

    for v in variants.values():
        step(v)   # warm-up
    for _ in range(args.repeats):
        for v in variants.values():
            v["times"].append(step(v))

    print(f"FCOS training step, {size}x{size}, batch {batch}, {args.threads} torch thread(s), {cpu_name()}, "
          f"torch {torch.__version__}, median of {args.repeats}")
    print(f"{'backbone':20s} {'fpn/convs':>9s} {'params M':>9s} {'GFLOPs':>8s} {'x r18':>6s} "
          f"{'step s':>7s} {'x r18':>6s}")
    for (name, fpn_channels, num_convs), v in variants.items():
        ref = variants.get(("resnet18", fpn_channels, num_convs), v)
        seconds, ref_seconds = statistics.median(v["times"]), statistics.median(ref["times"])
        print(f"{name:20s} {f'{fpn_channels}/{num_convs}':>9s} {v['params'] / 1e6:9.2f} {v['gflops']:8.2f} "
              f"{v['gflops'] / ref['gflops']:6.2f} {seconds:7.3f} {seconds / ref_seconds:6.2f}")


if __name__ == "__main__":
    main()
