"""Tests for public/data: dataset cleaning, transforms, collate, demo data, normalisation."""

import json
import random
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from public.data.coco import CocoDetection
from public.data.collate import Batch, collate
from public.data.demo import (
    COLOUR_JITTER,
    DEMO_CATEGORY_IDS,
    DEMO_CLASSES,
    DEMO_COLOURS,
    demo_paths,
    ensure_demo_data,
    generate_demo_data,
)
from public.data.prefetcher import PIXEL_MEAN, PIXEL_STD, Prefetcher, normalize
from public.data.sampler import GroupedBatchSampler
from public.data.transforms import RandomFlip, RandomHorizontalFlip, Resize, build_transforms
from public.data.validate import DatasetError
from helpers import CapturedLog


# ----------------------------------------------------------------------------- helpers

def write_dataset(root: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> tuple[str, str]:
    """Write a COCO json plus grey PNGs of the json's sizes; return (images_dir, json path)."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for im in images:
        cv2.imwrite(str(images_dir / im["file_name"]), np.full((im["height"], im["width"], 3), 128, np.uint8))
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(images_dir), str(ann_file)


CATEGORIES = [{"id": 90, "name": "zebra"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]


def ann(ann_id, image_id, category_id, bbox, iscrowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": 1.0, "iscrowd": iscrowd}


@pytest.fixture
def messy_dataset(tmp_path):
    images = [
        {"id": 5, "file_name": "a.png", "width": 100, "height": 80},
        {"id": 2, "file_name": "b.png", "width": 60, "height": 50},
        {"id": 9, "file_name": "empty.png", "width": 40, "height": 30},
    ]
    annotations = [
        ann(1, 5, 3, [10, 20, 30, 40]),            # fine -> [10, 20, 40, 60], label of id 3 = 0
        ann(2, 5, 90, [90, 70, 20, 20]),           # out of image -> clipped to [90, 70, 100, 80]
        ann(3, 5, 7, [50, 50, 0.5, 10]),           # degenerate (0.5 px wide) -> dropped
        ann(4, 5, 7, [0, 0, 50, 50], iscrowd=1),   # crowd -> not a target
        ann(5, 2, 7, [1, 2, 3, 4]),                # fine -> [1, 2, 4, 6], label of id 7 = 1
    ]
    return write_dataset(tmp_path, images, annotations, CATEGORIES)


# ----------------------------------------------------------------------------- CocoDetection

def test_category_mapping_round_trip(messy_dataset):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = CocoDetection(*messy_dataset)
    assert dataset.num_classes == 3
    assert dataset.category_ids == [3, 7, 90]
    assert dataset.class_names == ["cat", "dog", "zebra"]
    assert dataset.cat_id_to_label == {3: 0, 7: 1, 90: 2}
    for cat_id in (3, 7, 90):
        assert dataset.label_to_cat_id[dataset.cat_id_to_label[cat_id]] == cat_id
    assert dataset.image_ids == [2, 5, 9]  # sorted by id


def test_target_cleaning_and_single_warning(messy_dataset):
    with CapturedLog() as log:
        dataset = CocoDetection(*messy_dataset)
    assert len(log.warnings) == 1  # one summary, on the logger that writes train.log
    message = log.warnings[0]
    assert "instances.json" in message
    assert "annotations outside their image or under 1 px once clipped to it, dropped (1): annotation id 3 (image id 5)" in message
    assert "annotations with a box partly outside their image, clipped to it (1): annotation id 2 (image id 5)" in message

    sample_b = dataset[0]  # image id 2
    assert sample_b["image_id"] == 2
    np.testing.assert_array_equal(sample_b["boxes"], np.array([[1, 2, 4, 6]], np.float32))
    np.testing.assert_array_equal(sample_b["labels"], [1])

    sample_a = dataset[1]  # image id 5: crowd and degenerate gone, out-of-image box clipped
    assert sample_a["image"].shape == (80, 100, 3) and sample_a["image"].dtype == np.uint8
    assert sample_a["boxes"].dtype == np.float32 and sample_a["labels"].dtype == np.int64
    np.testing.assert_array_equal(sample_a["boxes"], np.array([[10, 20, 40, 60], [90, 70, 100, 80]], np.float32))
    np.testing.assert_array_equal(sample_a["labels"], [0, 2])
    assert sample_a["orig_size"] == (80, 100) and sample_a["scale"] == (1.0, 1.0)

    sample_empty = dataset[2]  # negative image kept
    assert sample_empty["image_id"] == 9
    assert sample_empty["boxes"].shape == (0, 4) and sample_empty["labels"].shape == (0,)


def test_clean_dataset_gives_no_warning(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}]
    paths = write_dataset(tmp_path, images, [ann(1, 1, 3, [0, 0, 20, 10])], CATEGORIES)
    with CapturedLog() as log:
        dataset = CocoDetection(*paths)
    assert log.warnings == []
    np.testing.assert_array_equal(dataset[0]["boxes"], [[0, 0, 20, 10]])


def test_missing_image_file_is_named(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 20, "height": 10},
              {"id": 2, "file_name": "gone.png", "width": 20, "height": 10}]
    images_dir, ann_file = write_dataset(tmp_path, images, [ann(1, 1, 3, [0, 0, 5, 5])], CATEGORIES)
    (Path(images_dir) / "gone.png").unlink()
    with pytest.raises(DatasetError, match=r"image files that do not exist \(1\): image id 2 \(gone\.png\)"):
        CocoDetection(images_dir, ann_file)


def test_corrupt_image_is_found_at_start_or_at_load(tmp_path):
    images = [{"id": 7, "file_name": "bad.png", "width": 20, "height": 10}]
    images_dir, ann_file = write_dataset(tmp_path, images, [ann(1, 7, 3, [0, 0, 5, 5])], CATEGORIES)
    (Path(images_dir) / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"cannot be read as images \(1\): image id 7 \(bad\.png\)"):
        CocoDetection(images_dir, ann_file)
    dataset = CocoDetection(images_dir, ann_file, check_images="off")  # trusting the json: found at load
    with pytest.raises(RuntimeError, match=r"bad\.png.*image id 7"):
        dataset[0]


def test_bad_annotation_files_are_named(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="nothere.json"):
        CocoDetection(str(tmp_path / "images"), str(tmp_path / "nothere.json"))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DatasetError, match="(?s)broken.json.*not valid json"):
        CocoDetection(str(tmp_path / "images"), str(broken))
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match=r"(?s)partial.json.*\['annotations', 'categories'\]"):
        CocoDetection(str(tmp_path / "images"), str(partial))
    fine = tmp_path / "fine.json"
    fine.write_text(json.dumps({"images": [], "annotations": [], "categories": CATEGORIES}))
    with pytest.raises(DatasetError, match="no_such_dir"):
        CocoDetection(str(tmp_path / "no_such_dir"), str(fine))


def test_boxes_clipped_with_real_size_when_json_has_no_size(tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    cv2.imwrite(str(images_dir / "a.png"), np.zeros((10, 20, 3), np.uint8))
    ann_file = tmp_path / "a.json"
    ann_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}],
        "annotations": [ann(1, 1, 3, [15, 5, 10, 10]), ann(2, 1, 7, [25, 0, 5, 5])],  # 2 is fully outside
        "categories": CATEGORIES,
    }))
    sample = CocoDetection(str(images_dir), str(ann_file))[0]
    np.testing.assert_array_equal(sample["boxes"], [[15, 5, 20, 10]])
    np.testing.assert_array_equal(sample["labels"], [0])


def test_grayscale_image_becomes_rgb(tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    cv2.imwrite(str(images_dir / "g.png"), np.full((6, 8), 77, np.uint8))
    ann_file = tmp_path / "g.json"
    ann_file.write_text(json.dumps({"images": [{"id": 1, "file_name": "g.png", "width": 8, "height": 6}],
                                    "annotations": [ann(1, 1, 3, [0, 0, 2, 2])], "categories": CATEGORIES}))
    image = CocoDetection(str(images_dir), str(ann_file))[0]["image"]
    assert image.shape == (6, 8, 3) and (image == 77).all()


# ----------------------------------------------------------------------------- transforms

def make_sample(height, width, boxes, labels=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.zeros(len(boxes), np.int64) if labels is None else np.asarray(labels, np.int64)
    return {"image": np.zeros((height, width, 3), np.uint8), "boxes": boxes, "labels": labels,
            "image_id": 1, "orig_size": (height, width), "scale": (1.0, 1.0)}


def test_resize_keep_ratio_scales_boxes():
    sample = make_sample(100, 200, [[10, 20, 50, 60]])
    out = Resize((50,), 1000)(sample)
    assert out["image"].shape == (50, 100, 3)
    np.testing.assert_allclose(out["boxes"], [[5, 10, 25, 30]])
    assert out["scale"] == (0.5, 0.5)
    assert out["orig_size"] == (100, 200)
    np.testing.assert_array_equal(sample["boxes"], [[10, 20, 50, 60]])  # input untouched


def test_resize_max_size_caps_longer_side():
    # shorter side 100 -> 800 would make the longer side 2400 > 1333, so longer side -> 1333.
    out = Resize((800,), 1333)(make_sample(100, 300, [[0, 0, 300, 100]]))
    assert out["image"].shape == (444, 1333, 3)  # round(100 * 1333 / 300) = 444
    sx, sy = out["scale"]
    assert sx == pytest.approx(1333 / 300) and sy == pytest.approx(444 / 100)
    np.testing.assert_allclose(out["boxes"], [[0, 0, 1333, 444]], rtol=1e-6)


def test_resize_square_and_scale_composition():
    sample = make_sample(100, 200, [[20, 10, 40, 30]])
    out = Resize((50,), 1000, square=True)(sample)
    assert out["image"].shape == (50, 50, 3)
    assert out["scale"] == (0.25, 0.5)
    np.testing.assert_allclose(out["boxes"], [[5, 5, 10, 15]])
    out2 = Resize((100,), 1000, square=True)(out)  # composes with the existing scale
    assert out2["scale"] == (0.5, 1.0)
    np.testing.assert_allclose(out2["boxes"], [[10, 10, 20, 30]])


def test_resize_multiscale_modes():
    random.seed(0)
    choice = Resize((100, 120), 1000, mode="choice")
    assert {choice(make_sample(50, 50, []))["image"].shape[0] for _ in range(30)} == {100, 120}
    ranged = Resize((100, 104), 1000, mode="range")
    assert {ranged(make_sample(50, 50, []))["image"].shape[0] for _ in range(60)} == {100, 101, 102, 103, 104}


def test_flip_twice_is_identity_and_box_follows_pixels():
    sample = make_sample(20, 30, [[3, 4, 10, 12]], labels=[2])
    sample["image"][4:12, 3:10] = 255  # the object's pixels: rows 4..11, cols 3..9
    flip = RandomHorizontalFlip(prob=1.0)
    flipped = flip(sample)
    np.testing.assert_array_equal(flipped["boxes"], [[20, 4, 27, 12]])  # x1' = 30 - 10, x2' = 30 - 3
    x1, y1, x2, y2 = flipped["boxes"][0].astype(int)
    assert (flipped["image"][y1:y2, x1:x2] == 255).all()
    assert flipped["image"].sum() == sample["image"].sum()  # nothing outside the box is white
    twice = flip(flipped)
    np.testing.assert_array_equal(twice["image"], sample["image"])
    np.testing.assert_array_equal(twice["boxes"], sample["boxes"])
    assert RandomHorizontalFlip(prob=0.0)(sample)["boxes"] is sample["boxes"]


def test_build_transforms_reads_config():
    from fcos.config_demo import Config as DemoConfig

    cfg = DemoConfig(min_size=(64,), max_size=1000, multiscale_mode="choice", resize_mode="keep_ratio",
                     hflip_prob=1.0, test_min_size=32).resolve()
    train_out = build_transforms(cfg, train=True)(make_sample(100, 200, [[0, 0, 10, 10]]))
    assert train_out["image"].shape == (64, 128, 3)
    np.testing.assert_allclose(train_out["boxes"], [[121.6, 0, 128, 6.4]], rtol=1e-6)  # resized then flipped
    eval_out = build_transforms(cfg, train=False)(make_sample(100, 200, [[0, 0, 10, 10]]))
    assert eval_out["image"].shape == (32, 64, 3)
    np.testing.assert_allclose(eval_out["boxes"], [[0, 0, 3.2, 3.2]], rtol=1e-6)
    square = cfg.replace(resize_mode="square")
    assert build_transforms(square, train=False)(make_sample(100, 200, []))["image"].shape == (32, 32, 3)
    with pytest.raises(ValueError, match="resize_mode"):    # checked where the key is declared
        DemoConfig(resize_mode="stretch")


# ----------------------------------------------------------------------------- collate

def test_collate_pads_images_and_targets():
    a = make_sample(40, 70, [[1, 2, 3, 4], [5, 6, 7, 8]], labels=[3, 1])
    a["image"][:] = 9
    a["scale"], a["orig_size"], a["image_id"] = (0.5, 0.25), (80, 280), 11
    b = make_sample(50, 20, [])
    b["image"][:] = 7
    b["image_id"] = 12
    batch = collate([a, b])
    assert isinstance(batch, Batch)
    assert batch.images.shape == (2, 3, 64, 96) and batch.images.dtype == torch.uint8
    assert (batch.images[0, :, :40, :70] == 9).all() and (batch.images[1, :, :50, :20] == 7).all()
    assert batch.images[0, :, 40:].sum() == 0 and batch.images[0, :, :, 70:].sum() == 0
    assert batch.images[1, :, 50:].sum() == 0 and batch.images[1, :, :, 20:].sum() == 0
    assert batch.targets.shape == (2, 2, 5) and batch.targets.dtype == torch.float32
    torch.testing.assert_close(batch.targets[0], torch.tensor([[1., 2, 3, 4, 3], [5, 6, 7, 8, 1]]))
    assert (batch.targets[1] == -1).all()
    assert batch.image_sizes.tolist() == [[40, 70], [50, 20]] and batch.image_sizes.dtype == torch.int64
    assert batch.scales.tolist() == [[0.5, 0.25], [1.0, 1.0]] and batch.scales.dtype == torch.float32
    assert batch.orig_sizes.tolist() == [[80, 280], [50, 20]]
    assert batch.image_ids.tolist() == [11, 12] and batch.image_ids.dtype == torch.int64


def test_collate_without_boxes_and_exact_multiple():
    batch = collate([make_sample(64, 32, []), make_sample(10, 10, [])], size_divisible=32)
    assert batch.images.shape == (2, 3, 64, 32)
    assert batch.targets.shape == (2, 0, 5)
    moved = batch.to("cpu")
    assert moved.targets.shape == (2, 0, 5) and len(moved) == 2


def test_dataloader_with_collate_and_prefetcher(messy_dataset):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = CocoDetection(*messy_dataset, transforms=Resize((40,), 1000))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate)
    prefetcher = Prefetcher(loader, "cpu")
    assert len(prefetcher) == 2
    batches = list(prefetcher)
    assert batches[0].images.dtype == torch.float32
    assert batches[0].image_ids.tolist() == [2, 5] and batches[1].image_ids.tolist() == [9]
    # image 2 is 60x50 -> 48x40 (scale 0.8): box [1, 2, 4, 6] -> [0.8, 1.6, 3.2, 4.8]
    torch.testing.assert_close(batches[0].targets[0, 0], torch.tensor([0.8, 1.6, 3.2, 4.8, 1.0]))
    assert batches[0].targets[0, 1:].eq(-1).all()
    torch.testing.assert_close(batches[0].scales[0], torch.tensor([0.8, 0.8]))


# ----------------------------------------------------------------------------- normalisation

def test_normalize_known_values():
    images = torch.zeros((1, 3, 2, 2), dtype=torch.uint8)
    images[0, 0, 0, 0] = 255
    images[0, 1, 0, 0] = 116
    out = normalize(images)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 2, 2)
    assert out[0, 0, 0, 0].item() == pytest.approx((255 - 123.675) / 58.395, abs=1e-6)
    assert out[0, 1, 0, 0].item() == pytest.approx((116 - 116.28) / 57.12, abs=1e-6)
    assert out[0, 2, 1, 1].item() == pytest.approx(-PIXEL_MEAN[2] / PIXEL_STD[2], abs=1e-6)


# ----------------------------------------------------------------------------- demo data

def test_demo_data_is_deterministic(tmp_path):
    generate_demo_data(tmp_path / "a", num_train=6, num_val=3, seed=4)
    generate_demo_data(tmp_path / "b", num_train=6, num_val=3, seed=4)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 6 + 3 + 2
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    generate_demo_data(tmp_path / "c", num_train=6, num_val=3, seed=5)
    assert (tmp_path / "a/train/000000.png").read_bytes() != (tmp_path / "c/train/000000.png").read_bytes()


def test_demo_data_content(tmp_path):
    paths = ensure_demo_data(tmp_path / "demo", num_train=60, num_val=20, seed=0)
    assert paths == demo_paths(tmp_path / "demo")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    dataset = CocoDetection(paths["train_images"], paths["train_annotations"])
    assert dataset.category_ids == sorted(DEMO_CATEGORY_IDS) and dataset.class_names == list(DEMO_CLASSES)
    assert dataset.category_ids != list(range(dataset.category_ids[0], dataset.category_ids[0] + 5))

    raw = json.loads(Path(paths["train_annotations"]).read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in raw["images"]}
    assert len({s for s in sizes.values()}) > 10  # varied sizes exercise padding
    assert all(128 <= w <= 192 and 128 <= h <= 192 for w, h in sizes.values())
    bbox = np.array([a["bbox"] for a in raw["annotations"]])  # [A, 4] xywh
    limits = np.array([sizes[a["image_id"]] for a in raw["annotations"]])  # [A, 2] (w, h)
    assert (bbox[:, :2] >= 0).all() and (bbox[:, :2] + bbox[:, 2:] <= limits).all()
    longest = bbox[:, 2:].max(axis=1)
    assert (longest < 16).sum() >= 5 and (longest > 64).sum() >= 3
    counts = np.bincount([a["image_id"] for a in raw["annotations"]], minlength=max(sizes) + 1)[1:]
    assert counts.max() <= 6 and (counts == 0).sum() >= 1  # negatives exist
    assert len(set(a["category_id"] for a in raw["annotations"])) == 5

    # Boxes are tight: in one-object images, the pixels of the class colour span exactly the box.
    checked = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        if len(sample["boxes"]) != 1:
            continue
        base = np.array(DEMO_COLOURS[int(sample["labels"][0])])
        in_colour = (np.abs(sample["image"].astype(int) - base) <= COLOUR_JITTER).all(axis=2)  # [H, W]
        rows, cols = np.flatnonzero(in_colour.any(axis=1)), np.flatnonzero(in_colour.any(axis=0))
        np.testing.assert_array_equal(sample["boxes"][0], [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
        checked += 1
    assert checked >= 3
    assert ensure_demo_data(tmp_path / "demo") == paths  # second call reuses the data


def test_default_demo_sizes_have_negatives(tmp_path):
    # The negative count depends only on the split size; check the default val split (60 images).
    generate_demo_data(tmp_path, num_train=0, num_val=60, seed=0)
    raw = json.loads((tmp_path / "annotations/instances_val.json").read_text())
    with_boxes = {a["image_id"] for a in raw["annotations"]}
    assert len(raw["images"]) == 60 and len(raw["images"]) - len(with_boxes) == 2  # round(0.03 * 60)


def test_prefetcher_normalises_and_zeroes_padding(messy_dataset):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = CocoDetection(*messy_dataset, transforms=Resize((40,), 1000))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate)
    raw_batches = list(loader)
    batches = list(Prefetcher(loader, "cpu", channels_last=True))
    assert len(batches) == len(raw_batches) == 2
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    for raw, batch in zip(raw_batches, batches):
        assert batch.images.dtype == torch.float32
        assert batch.images.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(batch.targets, raw.targets)
        for i, (h, w) in enumerate(raw.image_sizes.tolist()):
            inside = (raw.images[i, :, :h, :w].float() - mean) / std
            torch.testing.assert_close(batch.images[i, :, :h, :w], inside)
            assert batch.images[i, :, h:, :].abs().sum() == 0 and batch.images[i, :, :, w:].abs().sum() == 0


# ----------------------------------------------------------------------------- aspect-ratio grouping

def _streaming_batches(shard: list[int], groups: list[int], batch_size: int, drop_last: bool) -> list[list[int]]:
    """The plain rule, one image at a time: each group fills its own batch, emitted when full;
    leftovers batched together in order at the end."""
    open_batches, out = {}, []
    for index in shard:
        batch = open_batches.setdefault(groups[index], [])
        batch.append(index)
        if len(batch) == batch_size:
            out.append(batch)
            open_batches[groups[index]] = []
    rest = sorted((i for b in open_batches.values() for i in b), key=shard.index)
    out += [rest[k:k + batch_size] for k in range(0, len(rest), batch_size)
            if len(rest[k:k + batch_size]) == batch_size or not drop_last]
    return out


@pytest.mark.parametrize("world_size", [1, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_grouped_batches_follow_the_streaming_rule(world_size, drop_last):
    generator = torch.Generator().manual_seed(0)
    groups = (torch.rand(53, generator=generator) < 0.3).long().tolist()   # 30% portrait
    samplers = [GroupedBatchSampler(groups, 4, rank, world_size, seed=7, drop_last=drop_last)
                for rank in range(world_size)]
    seen = []
    for rank, sampler in enumerate(samplers):
        sampler.set_epoch(3)
        permutation = torch.randperm(53, generator=torch.Generator().manual_seed(7 + 3)).tolist()
        shard = permutation[:53 // world_size * world_size][rank::world_size]
        batches = list(sampler)
        assert batches == _streaming_batches(shard, groups, 4, drop_last)
        assert len(batches) == len(sampler) == (len(shard) // 4 if drop_last else -(-len(shard) // 4))
        # one orientation per batch, except in the last two: the groups' leftovers batched together
        assert all(len({groups[i] for i in b}) == 1 for b in batches[:-2])
        seen += [i for b in batches for i in b]
    if not drop_last:
        assert len(seen) == len(set(seen)) == 53 // world_size * world_size   # each image once over the ranks
    # a new epoch, a new order; the same epoch, the same order
    sampler = samplers[0]
    sampler.set_epoch(3)
    again = list(sampler)
    sampler.set_epoch(4)
    assert list(sampler) != again
    sampler.set_epoch(3)
    assert list(sampler) == again


def test_grouping_removes_padding():
    """75% landscape 640x480, 25% portrait 480x640 images, batches of 2: padded pixels."""
    sizes = [(480, 640)] * 300 + [(640, 480)] * 100                      # (h, w)
    portrait = [h > w for h, w in sizes]

    def padding(batches):
        padded = sum(len(b) * max(sizes[i][0] for i in b) * max(sizes[i][1] for i in b) for b in batches)
        return padded / sum(sizes[i][0] * sizes[i][1] for b in batches for i in b) - 1

    grouped = list(GroupedBatchSampler(portrait, 2, seed=0))
    shuffled = torch.randperm(400, generator=torch.Generator().manual_seed(0)).view(-1, 2).tolist()
    assert len(grouped) == 200
    assert padding(grouped) == 0.0                                       # 300 and 100 split evenly
    assert padding(shuffled) > 0.1                                       # ~3/8 of pairs mixed, +33% each


def test_dataset_orientation_from_json(messy_dataset, tmp_path):
    dataset = CocoDetection(*messy_dataset)
    assert dataset.portrait().tolist() == [False, False, False]         # ids 2, 5, 9: all landscape
    images = [{"id": 1, "file_name": "p.png", "width": 30, "height": 50},
              {"id": 2, "file_name": "l.png", "width": 50, "height": 30}]
    dataset = CocoDetection(*write_dataset(tmp_path / "o", images, [ann(1, 1, 3, [0, 0, 5, 5])], CATEGORIES))
    assert dataset.portrait().tolist() == [True, False]


def test_resize_edges():
    """Resize: a bad mode or no min size is refused; a side that rounds to 0 px is 1 px; a sample
    without "scale" is at scale 1 (its new scale is the resize's)."""
    with pytest.raises(ValueError, match="mode"):
        Resize((10,), 100, mode="random")
    with pytest.raises(ValueError, match="min size"):
        Resize((), 100)
    assert Resize((1,), 3).output_size(10, 1000, 1) == (1, 3)        # capped by max_size: 0.003 x 10 -> 1 px
    assert Resize((1,), 3).output_size(1000, 10, 1) == (3, 1)
    sample = {"image": np.zeros((10, 20, 3), np.uint8), "boxes": np.zeros((0, 4), np.float32),
              "labels": np.zeros(0, np.int64)}
    assert Resize((20,), 100)(sample)["scale"] == (2.0, 2.0)


def test_flip_defaults_and_torchvision_evaluation():
    """RandomFlip mirrors left-right unless told otherwise, with probability 0.5 by default;
    test_resize="torchvision" leaves evaluation images as read (training still resizes) and
    needs keep_ratio."""
    sample = {"image": np.arange(6, dtype=np.uint8).reshape(1, 2, 3), "boxes": np.array([[0, 0, 1, 1]], np.float32)}
    flipped = RandomFlip(1.0)(sample)
    np.testing.assert_array_equal(flipped["boxes"], [[1, 0, 2, 1]])
    np.testing.assert_array_equal(flipped["image"], sample["image"][:, ::-1])
    random.seed(0)
    assert abs(np.mean([RandomHorizontalFlip()(sample) is not sample for _ in range(2000)]) - 0.5) < 0.04
    from config import load_config
    cfg = load_config("fcos/config_demo.py", ["test_resize=torchvision"])
    assert build_transforms(cfg, train=False).transforms == []
    assert type(build_transforms(cfg, train=True).transforms[0]) is Resize
    with pytest.raises(ValueError, match="keep_ratio"):
        build_transforms(load_config("fcos/config_demo.py", ["test_resize=torchvision", "resize_mode=square"]),
                         train=False)
