"""Shared test helpers: a subset of the demo data, and an overfit run that returns COCO AP."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from public.data.coco import CocoDetection
from public.data.collate import collate
from public.data.demo import ensure_demo_data
from public.data.prefetcher import normalize
from public.data.transforms import build_transforms
from public.engine.evaluate.evaluator import coco_evaluate, detections_to_coco


def demo_subset(tmp_path: Path, num_images: int, split: str = "train") -> tuple[str, str]:
    """The first ``num_images`` demo images that have objects, as (images dir, json path)."""
    paths = ensure_demo_data()
    data = json.loads(Path(paths[f"{split}_annotations"]).read_text())
    with_boxes = sorted({a["image_id"] for a in data["annotations"]})[:num_images]
    data["images"] = [im for im in data["images"] if im["id"] in with_boxes]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in with_boxes]
    out = tmp_path / f"subset_{split}_{num_images}.json"
    out.write_text(json.dumps(data))
    return paths[f"{split}_images"], str(out)


def load_test_py():
    """test.py as a module, to call its ``main`` in this process (``import test`` would find the
    standard library's package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("densedet_test_cli", Path(__file__).resolve().parents[1] / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The images of the overfit tests: the demo's 128-192 px at their own scale (160 px, capped at 192:
# one 192 x 192 batch of the 4 images).
OVERFIT_SIZE = {"test_min_size": 160, "max_size": 192}


def overfit(cfg, images_dir: str, annotations: str, steps: int = 50, lr: float = 2e-3,
            warmup: int = 10) -> tuple[float, float]:
    """Train ``cfg``'s model on one fixed batch of all images for ``steps`` AdamW steps, then
    return (COCO AP of its detections on those same images, seconds taken).

    The lr rises linearly over ``warmup`` steps, then falls to 0 on a cosine: the last, small
    steps settle the boxes. With a constant lr of 1e-3 the AP of 4 demo images swung between 0.86
    and 0.93 from step 50 to 80 (FCOS, three seeds) and the tests needed 150-200 steps; with this
    schedule, 4 demo images at ``OVERFIT_SIZE`` end 50 steps at AP 0.99-1.0 (FCOS), 0.97-0.98
    (ATSS) and 0.97 (RetinaNet), each over initial seeds 0, 1 and 2.

    One torch thread: the numbers (and so the AP) do not depend on the machine's thread count
    (1 and 2 threads differ by ~3e-3 in the weights after 3 steps), and on a 2-core machine
    shared with other jobs two threads wait on each other (3x slower, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _overfit(cfg, images_dir, annotations, steps, lr, warmup)
    finally:
        torch.set_num_threads(threads)


def _overfit(cfg, images_dir: str, annotations: str, steps: int, lr: float, warmup: int) -> tuple[float, float]:
    import math

    start = time.perf_counter()
    torch.manual_seed(0)
    dataset = CocoDetection(images_dir, annotations, build_transforms(cfg, train=False))
    batch = collate([dataset[i] for i in range(len(dataset))], cfg.size_divisible)
    images = normalize(batch.images, batch.image_sizes)
    model, loss_fn, decoder = cfg.resolve().build_model(dataset.num_classes), cfg.build_loss(), cfg.build_decoder()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        losses = loss_fn(model(images), batch.targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        detections = decoder(model(images), batch.image_sizes)
    result = coco_evaluate(dataset.coco, detections_to_coco(detections, batch, dataset.label_to_cat_id))
    return result.stats[0], time.perf_counter() - start


def overfit_demo(model: str, tmp_path: Path) -> tuple[float, float]:
    """``overfit`` of ``model``'s demo config ("fcos", "atss" or "retinanet") on the first 4 demo
    train images with objects at ``OVERFIT_SIZE``: (AP, seconds)."""
    import importlib

    config = importlib.import_module(f"{model}.config_demo").Config(**OVERFIT_SIZE)
    images, annotations = demo_subset(Path(tmp_path), 4)
    return overfit(config, images, annotations)


def perturb_for_oracle(tv_model) -> None:
    """Non-trivial BN statistics and head weights in a freshly initialised torchvision model,
    so that a mis-mapped tensor cannot hide behind zeros and ones."""
    with torch.no_grad():
        for module in tv_model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        for param in tv_model.head.parameters():
            param.add_(torch.randn_like(param) * 0.01)


def load_converted(cfg, state: dict, num_classes: int):
    """Our model from ``cfg`` with a converted torchvision state dict; every key must fit."""
    model = cfg.resolve().build_model(num_classes).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return model


def random_targets(batch_size: int, image_size: tuple[int, int], counts, num_classes: int, generator):
    """Random boxes per image: torchvision target dicts (labels 1..num_classes-1) and our padded [B, M, 5]."""
    h, w = image_size
    tv_targets, M = [], max(counts)
    padded = torch.full((batch_size, M, 5), -1.0)
    for i, n in enumerate(counts):
        xy = torch.rand(n, 2, generator=generator) * torch.tensor([w * 0.8, h * 0.8])
        wh = 4 + torch.rand(n, 2, generator=generator) * torch.tensor([w * 0.6, h * 0.6])
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w, h]))], dim=1)
        labels = torch.randint(1, num_classes, (n,), generator=generator)
        tv_targets.append({"boxes": boxes, "labels": labels})
        padded[i, :n, :4] = boxes
        padded[i, :n, 4] = labels.float()
    return tv_targets, padded


class CapturedLog:
    """Records of the "densedet" logger (which train.log receives) while in a ``with`` block,
    whatever handlers and propagation an earlier run left on it."""

    def __enter__(self):
        import logging

        self.records: list = []
        self.logger = logging.getLogger("densedet")
        self.handler = logging.Handler(logging.WARNING)
        self.handler.emit = self.records.append
        self.logger.addHandler(self.handler)
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)

    @property
    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.records]


def with_coco_names(annotations: str, out_dir: Path) -> str:
    """A copy of a demo json whose 5 categories carry COCO class names (person, bicycle, car,
    motorcycle, airplane: COCO ids 1-5, not the demo's ids), for scoring a COCO model on it."""
    data = json.loads(Path(annotations).read_text())
    for category, name in zip(data["categories"], ("person", "bicycle", "car", "motorcycle", "airplane")):
        category["name"] = name
    out = Path(out_dir) / f"coco_named_{Path(annotations).name}"
    out.write_text(json.dumps(data))
    return str(out)

