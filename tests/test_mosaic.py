"""Mosaic (public/data/mosaic.py): boxes and pixels of a hand-made four-image case against
hand-computed ones, the random draw, the epochs it is closed in, the config's pipeline, and the same
batches whatever the worker count (exact resume with mosaic on: tests/test_resume.py's kill-and-resume
run has mosaic=0.5)."""
from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
import torch

from fcos.config_demo import Config as DemoConfig
from public.data.loaders import build_dataset, build_loader
from public.data.mosaic import FILL, Mosaic
from public.data.seeding import EpochSamples
from public.data.transforms import RandomHorizontalFlip, Resize
from tests.helpers import demo_subset


def sample(height, width, boxes, labels, seed):
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return {"image": image, "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, np.int64), "image_id": 10 + seed, "orig_size": (height, width),
            "scale": (1.0, 1.0)}


def four_samples():
    return [sample(20, 40, [[4, 2, 12, 10], [0, 0, 6, 4]], [0, 1], 0),     # top-left
            sample(50, 50, [[10, 10, 30, 40]], [2], 1),                      # top-right
            sample(25, 25, [[20, 5, 25, 10], [0, 15, 25, 25]], [3, 4], 2),   # bottom-left
            sample(100, 100, [[80, 80, 100, 100], [0, 0, 20, 20]], [5, 6], 3)]   # bottom-right


def test_boxes_and_pixels_of_a_hand_made_mosaic():
    """Canvas 100 x 100, centre (40, 60), factor 0.5 of a square 100 px resize: every image becomes
    50 x 50. Top-left image at (-10, 10) (x scale 1.25, y 2.5), top-right at (40, 10) (x1), bottom-left
    at (-10, 60) (x2), bottom-right at (40, 60) (x0.5)."""
    samples = four_samples()
    mosaic = Mosaic(Resize((100,), 1000, square=True), prob=1.0, min_visibility=0.3)
    out = mosaic.apply(samples, size=100, centre=(40, 60), factor=0.5)
    expected = [
        [0, 15, 5, 35],      # [4,2,12,10] -> [5,5,15,25] -> [-5,15,5,35]: half of it on the canvas, kept clipped
                             # [0,0,6,4] -> [-10,10,-2.5,20]: off the canvas, dropped
        [50, 20, 70, 50],    # [10,10,30,40] + (40, 10)
        [30, 70, 40, 80],    # [20,5,25,10] x2 = [40,10,50,20] + (-10, 60)
        [0, 90, 40, 100],    # [0,30,50,50] + (-10,60) = [-10,90,40,110]: 400 of 1000 px^2 left (0.4), kept
                             # [80,80,100,100] x0.5 = [40,40,50,50] + (40,60) = [80,100,90,110]: 0 px high, dropped
        [40, 60, 50, 70],    # [0,0,20,20] x0.5 + (40, 60)
    ]
    np.testing.assert_array_equal(out["boxes"], np.array(expected, np.float32))
    assert out["boxes"].dtype == np.float32
    np.testing.assert_array_equal(out["labels"], [0, 2, 3, 4, 6])
    assert out["labels"].dtype == np.int64
    assert out["image_id"] == 10 and out["orig_size"] == (20, 40) and out["scale"] == (1.25, 2.5)
    # pixels: each quadrant is the visible part of its resized image; grey where none falls
    canvas = out["image"]
    assert canvas.shape == (100, 100, 3) and canvas.dtype == np.uint8
    resized = [cv2.resize(s["image"], (50, 50), interpolation=cv2.INTER_LINEAR) for s in samples]
    np.testing.assert_array_equal(canvas[10:60, 0:40], resized[0][:, 10:50])    # its left 10 columns cut
    np.testing.assert_array_equal(canvas[10:60, 40:90], samples[1]["image"])    # 50 x 50 as it is
    np.testing.assert_array_equal(canvas[60:100, 0:40], resized[2][:40, 10:50])  # left and bottom cut
    np.testing.assert_array_equal(canvas[60:100, 40:90], resized[3][:40])        # bottom cut
    assert (canvas[:10] == FILL).all() and (canvas[:, 90:] == FILL).all()
    assert (canvas[10:] != FILL).any(axis=2)[:, :90].mean() > 0.95               # the rest is covered


def test_visibility_threshold_of_a_cut_box():
    """The half-visible box of the top-left image is dropped when over half must stay."""
    mosaic = Mosaic(Resize((100,), 1000, square=True), prob=1.0, min_visibility=0.51)
    out = mosaic.apply(four_samples(), size=100, centre=(40, 60), factor=0.5)
    np.testing.assert_array_equal(out["labels"], [2, 3, 6])   # 0.5 < 0.51 and 0.4 < 0.51 dropped


def test_keep_ratio_pieces_and_canvas():
    """keep_ratio: the canvas is the drawn size capped at max_size, each piece f x its plain size."""
    resize = Resize((100,), 80)   # keep-ratio: 20 x 40 -> shorter side 100 caps the longer at 80: 40 x 80
    mosaic = Mosaic(resize, prob=1.0)
    assert mosaic.canvas_size(100) == 80
    top_left = sample(20, 40, [[0, 0, 40, 20]], [0], 0)   # the whole image
    out = mosaic.apply([top_left] * 4, size=80, centre=(60, 30), factor=0.5)   # pieces of 20 x 40
    np.testing.assert_array_equal(out["boxes"][0], [20, 10, 60, 30])       # centre - (40, 20)
    np.testing.assert_array_equal(out["boxes"][3], [60, 30, 80, 50])        # cut at the right edge, half kept


def test_draw_stays_in_its_ranges_and_replays():
    mosaic = Mosaic(Resize((96, 128), 1000, square=True), prob=1.0, scale_range=(0.5, 1.5))
    for seed in range(200):
        random.seed(seed)
        params = mosaic.draw(7, 20)
        random.seed(seed)
        assert mosaic.draw(7, 20) == params                          # a function of the seeded stream only
        size, (cx, cy) = params["size"], params["centre"]
        assert size in (96, 128) and params["indices"][0] == 7
        assert all(0 <= i < 20 for i in params["indices"])
        assert size // 4 <= cx <= 3 * size // 4 and size // 4 <= cy <= 3 * size // 4
        assert 0.5 <= params["factor"] <= 1.5
    random.seed(0)
    half = Mosaic(Resize((96,), 1000), prob=0.3)
    share = sum(half.draw(0, 5) is not None for _ in range(2000)) / 2000
    assert 0.25 < share < 0.35


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_subset(tmp_path_factory.mktemp("mosaic"), 6)


def demo_cfg(demo, **overrides):
    images, annotations = demo
    return DemoConfig(train_images=images, train_annotations=annotations, min_size=(64,), max_size=96,
                      batch_size=2, aspect_ratio_grouping=False, check_images="off", epochs=4, **overrides)


def test_config_builds_the_mosaic_around_the_training_chain(demo):
    cfg = demo_cfg(demo, mosaic=1.0, mosaic_close=1, scale_jitter=(0.8, 1.2), photometric=0.5)
    dataset = build_dataset(cfg, train=True)
    mosaic = dataset.mosaic
    assert mosaic.prob == 1.0 and mosaic.scale_range == (0.5, 1.5) and mosaic.close_from_epoch == 3
    assert mosaic.resize is dataset.transforms.transforms[0].resize          # ScaleJitterCrop's Resize
    assert [type(t).__name__ for t in mosaic.after.transforms] == ["RandomHorizontalFlip", "PhotometricDistortion"]
    assert build_dataset(demo_cfg(demo), train=True).mosaic is None              # off by default
    assert build_dataset(cfg, train=False).mosaic is None                       # never at evaluation
    with pytest.raises(ValueError, match=r"mosaic_scale=\(1.5, 0.5\) must be \(low, high\)"):
        demo_cfg(demo, mosaic_scale=(1.5, 0.5))


def test_mosaic_epochs_then_plain_epochs(demo):
    """Epochs 0-2 are mosaics (square 64 px canvases), epoch 3 (mosaic_close=1 of 4) is the plain
    pipeline, the very samples a run without mosaic gets."""
    samples = EpochSamples(build_dataset(demo_cfg(demo, mosaic=1.0, mosaic_close=1), train=True), seed=3)
    plain = EpochSamples(build_dataset(demo_cfg(demo), train=True), seed=3)
    for index in range(3):
        assert samples[(2, index)]["image"].shape == (64, 64, 3)
        assert samples[(2, index)]["image"].shape != plain[(2, index)]["image"].shape  # demo images are not square
        closed, expected = samples[(3, index)], plain[(3, index)]
        np.testing.assert_array_equal(closed["image"], expected["image"])
        np.testing.assert_array_equal(closed["boxes"], expected["boxes"])


def test_mosaic_batches_are_the_same_in_worker_processes(demo):
    def epochs(num_workers):
        cfg = demo_cfg(demo, mosaic=0.7, photometric=0.5, num_workers=num_workers)
        loader = build_loader(cfg, build_dataset(cfg, train=True), True, torch.device("cpu"))
        out = []
        for epoch in (0, 1):
            loader.batch_sampler.set_epoch(epoch)
            out.append([(batch.images.clone(), batch.targets.clone()) for batch in loader])
        return out
    in_process, in_workers = epochs(0), epochs(2)
    for epoch_a, epoch_b in zip(in_process, in_workers):
        assert len(epoch_a) == len(epoch_b) == 3
        for (images_a, targets_a), (images_b, targets_b) in zip(epoch_a, epoch_b):
            assert torch.equal(images_a, images_b) and torch.equal(targets_a, targets_b)
    squares = sum(images.shape[-2:] == (64, 64) for images, _ in in_process[0] + in_process[1])
    assert squares >= 1   # mosaics were drawn
