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
from public.engine.evaluator import coco_evaluate, detections_to_coco


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
