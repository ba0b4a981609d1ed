"""Training-step benchmark: densedet against torchvision on the same backbone, input, batch
and boxes, measured in one run (absolute times drift between machines; ratios hold). FCOS and
RetinaNet run against torchvision's; ATSS, which torchvision lacks, against our FCOS (same
head and backbone, so the difference is the assignment).

    python bench/train_step.py                       # all three, CPU, batch 2, 512x512, ResNet-18
    python bench/train_step.py --model retinanet --boxes 500
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

import torchvision  # noqa: E402
from torchvision.models.detection import FCOS as TorchvisionFCOS  # noqa: E402
from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet  # noqa: E402
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402
from torchvision.ops.feature_pyramid_network import LastLevelP6P7  # noqa: E402

from atss.config import Config as ATSSConfig  # noqa: E402
from fcos.config import Config as FCOSConfig  # noqa: E402
from fcos.convert import TORCHVISION_SETTINGS as FCOS_TV  # noqa: E402
from retinanet.config import Config as RetinaNetConfig  # noqa: E402
from retinanet.convert import TORCHVISION_SETTINGS as RETINANET_TV  # noqa: E402

NUM_CLASSES = 80


def random_targets(batch: int, boxes: int, height: int, width: int, generator: torch.Generator):
    """Boxes of 8 px to half the image, as torchvision dicts and our padded [B, M, 5]."""
    xy = torch.rand(batch, boxes, 2, generator=generator) * torch.tensor([width * 0.7, height * 0.7])
    wh = 8 + torch.rand(batch, boxes, 2, generator=generator) ** 2 * torch.tensor([width * 0.5, height * 0.5])
    xyxy = torch.cat([xy, (xy + wh).minimum(torch.tensor([width - 1.0, height - 1.0]))], dim=2)
    labels = torch.randint(0, NUM_CLASSES, (batch, boxes), generator=generator)
    padded = torch.cat([xyxy, labels[..., None].float()], dim=2)
    return [{"boxes": b, "labels": l} for b, l in zip(xyxy, labels)], padded


def _once(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def timed(fn, device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up, device synchronised."""
    fn()
    return statistics.median(_once(fn, device) for _ in range(repeats))


def timed_pair(fn_a, fn_b, device, repeats: int) -> tuple[float, float]:
    """Medians of two functions timed alternately (a, b, a, b, ...), so that drift in the
    machine's speed during the run affects both alike."""
    fn_a()
    fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        times_a.append(_once(fn_a, device))
        times_b.append(_once(fn_b, device))
    return statistics.median(times_a), statistics.median(times_b)


def _tv_backbone(backbone: str):
    return _resnet_fpn_extractor(torchvision.models.get_model(backbone), 5, returned_layers=[2, 3, 4],
                                 extra_blocks=LastLevelP6P7(256, 256))


def _ours(cfg, backbone: str, device, settings: dict):
    cfg.update({"pretrained": False, "frozen_stages": 0, "freeze_bn": False, **settings, "backbone": backbone})
    return cfg.resolve().build_model(NUM_CLASSES).to(device).train(), cfg.build_loss()


def _detached(outputs: dict) -> dict:
    """Head outputs cut from the network, so that only assignment + loss run backward."""
    return {k: v.detach().requires_grad_() if torch.is_tensor(v) and v.requires_grad else v for k, v in outputs.items()}


def build(kind: str, backbone: str, size: tuple[int, int], device):
    """(reference model or None, our model, our loss, reference assign+loss(images, targets) or None)."""
    torch.manual_seed(0)
    h, w = size
    if kind == "fcos":
        tv = TorchvisionFCOS(_tv_backbone(backbone), NUM_CLASSES, min_size=min(size), max_size=max(size))
        ours, loss_fn = _ours(FCOSConfig(), backbone, device, FCOS_TV)
    elif kind == "retinanet":
        tv = TorchvisionRetinaNet(_tv_backbone(backbone), NUM_CLASSES, min_size=min(size), max_size=max(size))
        ours, loss_fn = _ours(RetinaNetConfig(), backbone, device, RETINANET_TV)
    else:  # atss: no torchvision peer; compared with our FCOS (same head), see bench_atss
        ours, loss_fn = _ours(ATSSConfig(), backbone, device, {})
        return None, ours, loss_fn, None
    tv = tv.to(device).train()

    def tv_loss(images, targets):
        """Runs the network once; returns a closure timing only torchvision's matching + loss."""
        features = list(tv.backbone(images).values())
        head = tv.head(features)                      # with grad, so _detached marks it as a leaf
        anchors = tv.anchor_generator(ImageList(images, [(h, w)] * len(images)), features)
        counts = [f.shape[2] * f.shape[3] for f in features]

        def run():
            outputs = _detached(head)
            if kind == "fcos":
                return tv.compute_loss(targets, outputs, anchors, counts)
            return tv.compute_loss(targets, outputs, anchors)
        return run

    return tv, ours, loss_fn, tv_loss


def bench(args, kind: str, device) -> None:
    """Our model against torchvision's (FCOS, RetinaNet) or ATSS against our FCOS."""
    h, w = args.size
    reference, ours, loss_fn, reference_loss = build(kind, args.backbone, (h, w), device)
    reference_name = "tv"
    if kind == "atss":  # the head is FCOS's: assignment is the difference
        _, reference, reference_fcos_loss, _ = build("fcos", args.backbone, (h, w), device)
        reference_name = "fcos"
    ref_opt = torch.optim.SGD(reference.parameters(), lr=1e-4, momentum=0.9)
    our_opt = torch.optim.SGD(ours.parameters(), lr=1e-4, momentum=0.9)
    images = torch.rand(args.batch, 3, h, w, device=device)
    print(f"\n{kind.upper()} vs {'our FCOS' if kind == 'atss' else 'torchvision'}: {args.backbone}, batch {args.batch}, "
          f"{h}x{w}, {device.type}, median of {args.repeats}")
    print(f"{'boxes':>6} {reference_name + ' step':>10} {'our step':>9} {'ratio':>6} {reference_name + ' assign+loss':>17} "
          f"{'our assign+loss':>16} {'our network':>12}" + (f" {'loss peak mem':>14}" if device.type == "cuda" else ""))
    generator = torch.Generator().manual_seed(0)
    for num_boxes in args.boxes:
        tv_targets, padded = random_targets(args.batch, num_boxes, h, w, generator)
        tv_targets = [{k: v.to(device) for k, v in t.items()} for t in tv_targets]
        padded = padded.to(device)

        def reference_step():
            if kind == "atss":
                losses = reference_fcos_loss(reference(images), padded)
            else:
                losses = reference(list(images), tv_targets)
            ref_opt.zero_grad()
            sum(losses.values()).backward()
            ref_opt.step()

        def our_step():
            losses = loss_fn(ours(images), padded)
            our_opt.zero_grad()
            sum(losses.values()).backward()
            our_opt.step()

        def our_network():
            out = ours(images)
            our_opt.zero_grad()
            sum(v.sum() for v in out.values() if torch.is_tensor(v) and v.requires_grad).backward()

        fixed = ours(images)                          # with grad, so _detached marks the outputs as leaves
        fixed_ref = reference(images) if kind == "atss" else None
        reference_loss_run = reference_loss(images, tv_targets) if kind != "atss" else None

        def our_loss():
            sum(loss_fn(_detached(fixed), padded).values()).backward()

        def reference_loss_step():
            if kind == "atss":
                sum(reference_fcos_loss(_detached(fixed_ref), padded).values()).backward()
            else:
                sum(reference_loss_run().values()).backward()

        t_ref, t_ours = timed_pair(reference_step, our_step, device, args.repeats)
        t_ref_loss, t_our_loss = timed_pair(reference_loss_step, our_loss, device, args.repeats)
        t_net = timed(our_network, device, args.repeats)
        memory = ""
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            our_loss()
            memory = f" {(torch.cuda.max_memory_allocated(device) - base) / 2**20:12.0f}MB"
        print(f"{num_boxes:>6} {t_ref * 1000:9.0f}ms {t_ours * 1000:8.0f}ms {t_ours / t_ref:6.2f} "
              f"{t_ref_loss * 1000:11.1f}ms {100 * t_ref_loss / t_ref:4.1f}% "
              f"{t_our_loss * 1000:10.1f}ms {100 * t_our_loss / t_ours:4.1f}% {t_net * 1000:10.0f}ms" + memory)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", choices=["fcos", "retinanet", "atss"], default=["fcos", "retinanet", "atss"])
    parser.add_argument("--boxes", type=int, nargs="+", default=[5, 50, 500])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    for kind in args.model:
        bench(args, kind, device)


if __name__ == "__main__":
    main()
