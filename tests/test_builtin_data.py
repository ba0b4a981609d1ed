"""Tests for the built-in tree-crowns dataset (public/data/crowns.py) and for how runs find the
built-in datasets (public/data/loaders.py). The demo shapes' own tests are in test_data.py."""
import json
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from public.data import loaders
from public.data.crowns import (
    CROWNS_CLASSES,
    CROWNS_ROOT,
    crowns_paths,
    ensure_crowns_data,
    generate_crowns_data,
)
from public.data.demo import DEMO_ROOT
from public.data.validate import validate_coco


@pytest.fixture(scope="module")
def crowns(tmp_path_factory):
    """The default crowns dataset (48 + 16 tiles, seed 0), generated once for the module."""
    root = tmp_path_factory.mktemp("builtin") / "crowns"
    return ensure_crowns_data(root)


def _split(paths: dict, split: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """(the COCO dict, boxes float [A, 4] xywh, image id per box [A])."""
    raw = json.loads(Path(paths[f"{split}_annotations"]).read_text())
    boxes = np.array([a["bbox"] for a in raw["annotations"]], dtype=np.float64).reshape(-1, 4)
    return raw, boxes, np.array([a["image_id"] for a in raw["annotations"]])


def test_crowns_data_is_clean_coco(crowns):
    root = Path(crowns["train_images"]).parent
    assert crowns == crowns_paths(root)
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    for split, num_images in (("train", 48), ("val", 16)):
        report = validate_coco(crowns[f"{split}_images"], crowns[f"{split}_annotations"], "decode")
        assert report.fatal == [] and report.repaired == [], split
        assert len(report.image_ids) == num_images and report.class_names == list(CROWNS_CLASSES)
        assert (report.sizes == 400).all()  # 400 x 400 tiles, as in the real case
    image = cv2.imread(str(Path(crowns["train_images"]) / "000000.png"))
    assert image.shape == (400, 400, 3)
    assert ensure_crowns_data(root) == crowns  # a second call reuses the data


def test_crowns_boxes_look_like_the_real_case(crowns):
    """~15 crowns a tile, boxes 8-100 px with a median near 37 px, a rarer second class."""
    raw, boxes, image_ids = _split(crowns, "train")
    counts = np.bincount(image_ids, minlength=len(raw["images"]) + 1)[1:]  # [I] boxes per tile
    assert counts.min() >= 5 and counts.max() <= 25 and 12 <= counts.mean() <= 18
    longest = boxes[:, 2:].max(axis=1)  # [A]
    assert longest.min() >= 4 and longest.max() <= 120  # a crown cut by the tile edge keeps half of itself
    p5, median, p95 = np.percentile(longest, [5, 50, 95])
    assert 8 <= p5 <= 15 and 32 <= median <= 44 and 80 <= p95 <= 100
    assert (longest < 16).sum() >= 50 and (longest > 64).sum() >= 100  # a wide scale spread
    dead = np.mean([a["category_id"] == 2 for a in raw["annotations"]])
    assert 0.05 <= dead <= 0.25
    # Inside the tiles.
    assert (boxes[:, :2] >= 0).all() and (boxes[:, :2] + boxes[:, 2:] <= 400).all()


def test_crowns_overlap(crowns):
    """Crowns cluster and overlap (the taller crown over the smaller one): most tiles have a pair
    of overlapping boxes, and some pairs overlap a lot."""
    raw, boxes, image_ids = _split(crowns, "train")
    tiles_with_overlap, best_ious = 0, []
    for image in raw["images"]:
        xyxy = boxes[image_ids == image["id"]].copy()
        xyxy[:, 2:] += xyxy[:, :2]  # [N, 4]
        low = np.maximum(xyxy[:, None, :2], xyxy[None, :, :2])  # [N, N, 2]
        high = np.minimum(xyxy[:, None, 2:], xyxy[None, :, 2:])
        inter = np.prod(np.clip(high - low, 0, None), axis=2)  # [N, N]
        area = np.prod(xyxy[:, 2:] - xyxy[:, :2], axis=1)
        iou = inter / (area[:, None] + area[None, :] - inter)
        np.fill_diagonal(iou, 0)
        tiles_with_overlap += bool((iou > 0).any())
        best_ious.append(iou.max())
    assert tiles_with_overlap >= 0.7 * len(raw["images"])
    assert 0.25 <= max(best_ious) <= 0.7  # heavy overlap exists, but every crown stays half visible
    assert 0.05 <= np.median(best_ious) <= 0.3


def test_crowns_tiles_are_textured(crowns):
    """Neither the ground nor the crowns are flat fills: texture outside boxes and inside big crowns."""
    raw, boxes, image_ids = _split(crowns, "train")
    ground_stds, crown_stds = [], []
    for image in raw["images"][:8]:
        grey = cv2.imread(str(Path(crowns["train_images"]) / image["file_name"]), cv2.IMREAD_GRAYSCALE).astype(float)
        ground = np.ones(grey.shape, dtype=bool)
        for x, y, w, h in boxes[image_ids == image["id"]].astype(int):
            ground[y:y + h, x:x + w] = False
            if min(w, h) >= 40:  # the middle of a big crown: leafy clumps and shading
                crown_stds.append(grey[y + h // 3:y + 2 * h // 3, x + w // 3:x + 2 * w // 3].std())
        ground_stds.append(grey[ground].std())
    assert min(ground_stds) > 8 and np.median(crown_stds) > 10


def test_crowns_data_is_deterministic(tmp_path):
    generate_crowns_data(tmp_path / "a", num_train=3, num_val=2, seed=4)
    generate_crowns_data(tmp_path / "b", num_train=3, num_val=2, seed=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert len(files) == 3 + 2 + 2
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    generate_crowns_data(tmp_path / "c", num_train=3, num_val=2, seed=5)
    for rel in ("train/000000.png", "annotations/instances_train.json"):
        assert (tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes(), rel
    # Each split has its own random stream: the val set does not change with num_train.
    generate_crowns_data(tmp_path / "d", num_train=1, num_val=2, seed=4)
    for rel in ("val/000001.png", "annotations/instances_val.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "d" / rel).read_bytes(), rel


def _data_config(root: Path) -> types.SimpleNamespace:
    paths = crowns_paths(root)  # the layout every built-in dataset shares
    return types.SimpleNamespace(**paths)


def test_runs_recognise_both_builtin_roots(tmp_path):
    assert loaders.uses_demo_data(_data_config(CROWNS_ROOT))
    assert loaders.builtin_roots(_data_config(CROWNS_ROOT)) == [CROWNS_ROOT]
    assert loaders.builtin_roots(_data_config(DEMO_ROOT)) == [DEMO_ROOT]
    cfg = _data_config(tmp_path)
    assert not loaders.uses_demo_data(cfg) and loaders.builtin_roots(cfg) == []
    cfg.val_annotations = str(CROWNS_ROOT / "annotations" / "instances_val.json")  # one path is enough
    assert loaders.builtin_roots(cfg) == [CROWNS_ROOT]


def test_ensure_builtin_data_makes_the_one_the_config_points_into(tmp_path, monkeypatch):
    made = []
    fake_demo, fake_crowns = (tmp_path / "demo").resolve(), (tmp_path / "crowns").resolve()
    monkeypatch.setattr(loaders, "BUILTIN_DATA", {
        fake_demo: lambda: made.append("demo"),
        fake_crowns: lambda: made.append(ensure_crowns_data(fake_crowns, num_train=1, num_val=1, seed=0)),
    })
    loaders.ensure_builtin_data(_data_config(fake_crowns))
    assert made == [crowns_paths(fake_crowns)] and not fake_demo.exists()
    assert validate_coco(made[0]["val_images"], made[0]["val_annotations"]).fatal == []
    loaders.ensure_builtin_data(_data_config(tmp_path / "elsewhere"))
    assert len(made) == 1
