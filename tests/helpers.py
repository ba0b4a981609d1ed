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


def overfit(cfg, images_dir: str, annotations: str, steps: int, lr: float = 1e-3) -> tuple[float, float]:
    """Train ``cfg``'s model on one fixed batch of all images for ``steps`` AdamW steps, then
    return (COCO AP of its detections on those same images, seconds taken)."""
    start = time.perf_counter()
    torch.manual_seed(0)
    dataset = CocoDetection(images_dir, annotations, build_transforms(cfg, train=False))
    batch = collate([dataset[i] for i in range(len(dataset))], cfg.size_divisible)
    images = normalize(batch.images, batch.image_sizes)
    model, loss_fn, decoder = cfg.build_model(dataset.num_classes), cfg.build_loss(), cfg.build_decoder()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        losses = loss_fn(model(images), batch.targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        detections = decoder(model(images), batch.image_sizes)
    result = coco_evaluate(dataset.coco, detections_to_coco(detections, batch, dataset.label_to_cat_id))
    return result.stats[0], time.perf_counter() - start


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
    model = cfg.build_model(num_classes).eval()
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
