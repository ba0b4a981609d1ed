"""Decoder benchmark: RetinaNet's and FCOS's decoders against torchvision's
``postprocess_detections`` on the same random head outputs, in one run.

    python bench/decoder.py                          # batch 8, 512x512, score threshold 0.01, CPU
    python bench/decoder.py --device cuda --size 800 1216

A low score threshold leaves many candidates, so top-k and NMS do real work. torchvision
loops over images and levels in Python; ours ranks all images with one top-k per level and
suppresses with one batched NMS. Both produce the same detections (tests/test_*oracle*).

Besides time, it counts the ATen operators each decoder dispatches for the batch, and among
them the host syncs (``nonzero``, ``item``): on a GPU each operator is at least one kernel
launch and each sync a stall, which is where per-image and per-level loops cost. The counts
depend on the device type: torchvision's ``batched_nms`` loops over groups on a CPU above
1000 boxes and on a GPU above 25000 (where ours splits the NMS into calls of whole groups).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torchvision.models.detection import fcos_resnet50_fpn, retinanet_resnet50_fpn  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402

from bench.train_step import timed_pair  # noqa: E402
from fcos.config import Config as FCOSConfig  # noqa: E402
from fcos.convert import TORCHVISION_SETTINGS as FCOS_TV  # noqa: E402
from public.ops.anchors import grid_points  # noqa: E402
from retinanet.config import Config as RetinaNetConfig  # noqa: E402
from retinanet.convert import TORCHVISION_SETTINGS as RETINANET_TV  # noqa: E402

NUM_CLASSES = 91
STRIDES = (8, 16, 32, 64, 128)


class _CountOps(TorchDispatchMode):
    """Counts the ATen operators dispatched inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def op_counts(fn) -> tuple[int, int]:
    """(ATen operators, of which host syncs) that one call of ``fn`` dispatches."""
    with _CountOps() as mode:
        fn()
    syncs = sum(n for name, n in mode.counts.items() if name in ("nonzero", "_local_scalar_dense", "item"))
    return sum(mode.counts.values()), syncs


def report(name: str, tv_fn, our_fn, device, repeats: int) -> None:
    t_tv, t_ours = timed_pair(tv_fn, our_fn, device, repeats)
    (ops_tv, syncs_tv), (ops_ours, syncs_ours) = op_counts(tv_fn), op_counts(our_fn)
    print(f"{name:<10} torchvision {t_tv * 1000:8.1f} ms, ours {t_ours * 1000:8.1f} ms, speed-up {t_tv / t_ours:5.2f}x; "
          f"operators {ops_tv} vs {ops_ours} ({ops_tv / ops_ours:.1f}x), host syncs {syncs_tv} vs {syncs_ours}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    parser.add_argument("--score-thresh", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    h, w = args.size
    sizes = [((h + s - 1) // s, (w + s - 1) // s) for s in STRIDES]
    image_sizes = [(h, w)] * args.batch
    feature_maps = [torch.zeros(args.batch, 1, a, b, device=device) for a, b in sizes]
    image_list = ImageList(torch.zeros(args.batch, 3, h, w, device=device), image_sizes)
    generator = torch.Generator(device=device).manual_seed(0)
    print(f"decoders, batch {args.batch}, {h}x{w}, score threshold {args.score_thresh}, {device.type}, "
          f"median of {args.repeats}")

    # RetinaNet.
    tv = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                                score_thresh=args.score_thresh).to(device).eval()
    anchors = tv.anchor_generator(image_list, feature_maps)
    counts = [a * b * 9 for a, b in sizes]
    head = {"cls_logits": torch.randn(args.batch, sum(counts), NUM_CLASSES, device=device, generator=generator) - 4,
            "bbox_regression": torch.randn(args.batch, sum(counts), 4, device=device, generator=generator) * 0.2}
    cfg = RetinaNetConfig(pretrained=False)
    cfg.update({**RETINANET_TV, "score_thresh": args.score_thresh})
    decoder = cfg.build_decoder()
    ours = {"cls_logits": head["cls_logits"], "box_reg": head["bbox_regression"], "anchors": anchors[0],
            "num_per_level": counts}
    split_head = {k: list(v.split(counts, dim=1)) for k, v in head.items()}
    split_anchors = [list(a.split(counts)) for a in anchors]
    report("RetinaNet:", lambda: tv.postprocess_detections(split_head, split_anchors, image_sizes),
           lambda: decoder(ours, torch.tensor(image_sizes, device=device)), device, args.repeats)

    # FCOS.
    tv = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                           score_thresh=args.score_thresh).to(device).eval()
    anchors = tv.anchor_generator(image_list, feature_maps)
    counts = [a * b for a, b in sizes]
    head = {"cls_logits": torch.randn(args.batch, sum(counts), NUM_CLASSES, device=device, generator=generator) - 2,
            "bbox_regression": torch.rand(args.batch, sum(counts), 4, device=device, generator=generator) * 4,
            "bbox_ctrness": torch.randn(args.batch, sum(counts), 1, device=device, generator=generator)}
    cfg = FCOSConfig(pretrained=False)
    cfg.update({**FCOS_TV, "score_thresh": args.score_thresh})
    decoder = cfg.build_decoder()
    points, strides, _ = grid_points(sizes, STRIDES, 0.0, device)
    ours = {"cls_logits": head["cls_logits"], "box_reg": head["bbox_regression"],
            "centerness": head["bbox_ctrness"].squeeze(-1), "points": points, "strides": strides,
            "num_per_level": counts}
    split_head = {k: list(v.split(counts, dim=1)) for k, v in head.items()}
    split_anchors = [list(a.split(counts)) for a in anchors]
    report("FCOS:", lambda: tv.postprocess_detections(split_head, split_anchors, image_sizes),
           lambda: decoder(ours, torch.tensor(image_sizes, device=device)), device, args.repeats)


if __name__ == "__main__":
    main()
