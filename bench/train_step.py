"""Training-step benchmark: densedet against torchvision on the same backbone, input, batch
and boxes, measured in one run (absolute times drift between machines; ratios hold).

    python bench/train_step.py                       # FCOS, CPU, batch 2, 512x512, ResNet-18
    python bench/train_step.py --boxes 5 50 500 --device cuda --size 800 1344 --backbone resnet50

For each box count it prints: torchvision's step time, ours, their ratio (< 1: ours faster),
the share of each step spent in target assignment + loss (forward and backward of the loss
on fixed head outputs), and our network-only time (forward + backward without assignment
and loss). A step is forward + loss + backward + SGD update.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torchvision.models.detection import FCOS as TorchvisionFCOS  # noqa: E402
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402
from torchvision.ops.feature_pyramid_network import LastLevelP6P7  # noqa: E402

from fcos.config import Config as FCOSConfig  # noqa: E402
from fcos.convert import TORCHVISION_SETTINGS  # noqa: E402

NUM_CLASSES = 80


def random_targets(batch: int, boxes: int, height: int, width: int, generator: torch.Generator):
    """Boxes of 8 px to half the image, as torchvision dicts and our padded [B, M, 5]."""
    xy = torch.rand(batch, boxes, 2, generator=generator) * torch.tensor([width * 0.7, height * 0.7])
    wh = 8 + torch.rand(batch, boxes, 2, generator=generator) ** 2 * torch.tensor([width * 0.5, height * 0.5])
    xyxy = torch.cat([xy, (xy + wh).minimum(torch.tensor([width - 1.0, height - 1.0]))], dim=2)
    labels = torch.randint(0, NUM_CLASSES, (batch, boxes), generator=generator)
    padded = torch.cat([xyxy, labels[..., None].float()], dim=2)
    return [{"boxes": b, "labels": l} for b, l in zip(xyxy, labels)], padded


def timed(fn, device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up, device synchronised."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_fcos_pair(backbone: str, size: tuple[int, int], device):
    torch.manual_seed(0)
    tv_backbone = _resnet_fpn_extractor(__import__("torchvision").models.get_model(backbone), 5,
                                        returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    tv = TorchvisionFCOS(tv_backbone, NUM_CLASSES, min_size=min(size), max_size=max(size)).to(device).train()
    cfg = FCOSConfig(pretrained=False, frozen_stages=0, freeze_bn=False)
    cfg.update(TORCHVISION_SETTINGS)
    cfg.backbone = backbone
    ours = cfg.build_model(NUM_CLASSES).to(device).train()
    return tv, ours, cfg.build_loss()


def bench_fcos(args, device) -> None:
    tv, ours, loss_fn = build_fcos_pair(args.backbone, tuple(args.size), device)
    tv_opt = torch.optim.SGD(tv.parameters(), lr=1e-4, momentum=0.9)
    our_opt = torch.optim.SGD(ours.parameters(), lr=1e-4, momentum=0.9)
    h, w = args.size
    images = torch.rand(args.batch, 3, h, w, device=device)
    print(f"FCOS {args.backbone}, batch {args.batch}, {h}x{w}, {device.type}, median of {args.repeats}")
    print(f"{'boxes':>6} {'tv step':>9} {'our step':>9} {'ratio':>6} {'tv assign+loss':>15} "
          f"{'our assign+loss':>16} {'our network':>12}")
    generator = torch.Generator().manual_seed(0)
    for num_boxes in args.boxes:
        tv_targets, padded = random_targets(args.batch, num_boxes, h, w, generator)
        tv_targets = [{k: v.to(device) for k, v in t.items()} for t in tv_targets]
        padded = padded.to(device)

        def tv_step():
            losses = tv(list(images), tv_targets)
            tv_opt.zero_grad()
            sum(losses.values()).backward()
            tv_opt.step()

        def our_step():
            losses = loss_fn(ours(images), padded)
            our_opt.zero_grad()
            sum(losses.values()).backward()
            our_opt.step()

        def our_network():
            out = ours(images)
            our_opt.zero_grad()
            (out["cls_logits"].sum() + out["box_reg"].sum() + out["centerness"].sum()).backward()

        # Assignment + loss alone, on fixed (detached) head outputs, forward and backward.
        with torch.no_grad():
            features = list(tv.backbone(images).values())
            tv_head = tv.head(features)
            our_out = ours(images)
        anchors = tv.anchor_generator(ImageList(images, [(h, w)] * args.batch), features)
        counts = [f.shape[2] * f.shape[3] for f in features]

        def tv_loss():
            head = {k: v.detach().requires_grad_() for k, v in tv_head.items()}
            sum(tv.compute_loss(tv_targets, head, anchors, counts).values()).backward()

        def our_loss():
            out = {k: (v.detach().requires_grad_() if k in ("cls_logits", "box_reg", "centerness") else v)
                   for k, v in our_out.items()}
            sum(loss_fn(out, padded).values()).backward()

        t_tv, t_ours = timed(tv_step, device, args.repeats), timed(our_step, device, args.repeats)
        t_tv_loss, t_our_loss = timed(tv_loss, device, args.repeats), timed(our_loss, device, args.repeats)
        t_net = timed(our_network, device, args.repeats)
        print(f"{num_boxes:>6} {t_tv * 1000:8.0f}ms {t_ours * 1000:8.0f}ms {t_ours / t_tv:6.2f} "
              f"{t_tv_loss * 1000:9.1f}ms {100 * t_tv_loss / t_tv:4.1f}% "
              f"{t_our_loss * 1000:9.1f}ms {100 * t_our_loss / t_ours:4.1f}% {t_net * 1000:10.0f}ms")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["fcos"], default="fcos")
    parser.add_argument("--boxes", type=int, nargs="+", default=[5, 50, 500])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    bench_fcos(args, device)


if __name__ == "__main__":
    main()
