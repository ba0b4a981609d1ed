"""Training augmentations (public/data/augment.py): boxes against hand-computed boxes, pixels
against boxes, torchvision's kernels as the oracle of the colour maths, per-(seed, epoch, index)
reproducibility, and the paper configs' pipelines unchanged."""
from __future__ import annotations

import random
import warnings

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision import tv_tensors

from atss.config import Config as ATSSConfig
from fcos.config import Config as FCOSConfig
from fcos.config_demo import Config as FCOSDemoConfig
from public.data.augment import (PhotometricDistortion, RandomRot90, ScaleJitterCrop,
                                 adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, crop_boxes,
                                 rot90_boxes)
from public.data.seeding import EpochSamples
from public.data.transforms import Compose, RandomHorizontalFlip, RandomVerticalFlip, Resize, build_transforms
from retinanet.config import Config as RetinaNetConfig


def make_sample(height, width, boxes, labels=None, scale=(1.0, 1.0)):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.arange(len(boxes), dtype=np.int64) if labels is None else np.asarray(labels, np.int64)
    return {"image": np.zeros((height, width, 3), np.uint8), "boxes": boxes, "labels": labels,
            "image_id": 1, "orig_size": (height, width), "scale": scale}


def paint(sample):
    """Box i filled with 255 in channel i (integer boxes, at most 3): each box's pixels stay apart."""
    for i, (x1, y1, x2, y2) in enumerate(sample["boxes"].astype(int)):
        sample["image"][y1:y2, x1:x2, i] = 255
    return sample


def region(image_shape, box):
    """Mask [H, W] of the pixels [x1, x2) x [y1, y2) of an integer box."""
    mask = np.zeros(image_shape[:2], bool)
    x1, y1, x2, y2 = np.asarray(box).astype(int)
    mask[y1:y2, x1:x2] = True
    return mask


# ----------------------------------------------------------------------------- vertical flip, rot90

def test_vflip_boxes_by_hand_and_pixels():
    sample = paint(make_sample(20, 30, [[3, 4, 10, 12]], labels=[2]))
    flipped = RandomVerticalFlip(prob=1.0)(sample)
    np.testing.assert_array_equal(flipped["boxes"], [[3, 8, 10, 16]])  # y1' = 20 - 12, y2' = 20 - 4
    np.testing.assert_array_equal(flipped["labels"], [2])
    np.testing.assert_array_equal(flipped["image"][..., 0] == 255, region((20, 30), flipped["boxes"][0]))
    twice = RandomVerticalFlip(prob=1.0)(flipped)
    np.testing.assert_array_equal(twice["image"], sample["image"])
    np.testing.assert_array_equal(twice["boxes"], sample["boxes"])
    assert RandomVerticalFlip(prob=0.0)(sample) is sample


@pytest.mark.parametrize("k, expected, shape", [
    (1, [4, 20, 12, 27], (30, 20)),   # (x, y) -> (y, W - x)
    (2, [20, 8, 27, 16], (20, 30)),   # (x, y) -> (W - x, H - y)
    (3, [8, 3, 16, 10], (30, 20)),    # (x, y) -> (H - y, x)
])
def test_rot90_non_square_boxes_by_hand_and_pixels(k, expected, shape):
    sample = paint(make_sample(20, 30, [[3, 4, 10, 12]], labels=[5], scale=(0.5, 0.25)))  # H=20, W=30
    out = RandomRot90().apply(sample, k)
    assert out["image"].shape == (*shape, 3)
    np.testing.assert_array_equal(out["image"], np.rot90(sample["image"], k))  # counter-clockwise turns
    np.testing.assert_array_equal(out["boxes"], [expected])
    np.testing.assert_array_equal(out["labels"], [5])
    np.testing.assert_array_equal(out["image"][..., 0] == 255, region(shape, expected))
    assert out["scale"] == ((0.25, 0.5) if k % 2 else (0.5, 0.25))  # the resize factors follow the axes
    assert RandomRot90().apply(sample, 0) is sample


def test_rot90_four_quarter_turns_are_identity_and_match_torchvision():
    generator = np.random.default_rng(0)
    xy = generator.uniform(0, 40, (50, 2))
    boxes = np.concatenate([xy, xy + generator.uniform(1, 20, (50, 2))], 1).astype(np.float32)  # in 60 x 80
    sample = make_sample(60, 80, boxes)
    sample["image"] = generator.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    out = sample
    for _ in range(4):
        out = RandomRot90().apply(out, 1)
    np.testing.assert_array_equal(out["image"], sample["image"])
    np.testing.assert_allclose(out["boxes"], boxes, atol=1e-5)
    # torchvision's rotate (counter-clockwise degrees, canvas expanded) as the peer
    peer = tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=(60, 80))
    for k in (1, 2, 3):
        expected = TF.rotate(peer, 90 * k, expand=True)
        np.testing.assert_allclose(rot90_boxes(boxes, k, 60, 80), expected.numpy(), atol=1e-3)
    np.testing.assert_allclose(RandomVerticalFlip(1.0)(sample)["boxes"], TF.vertical_flip(peer).numpy())


def test_rot90_draws_each_quarter_turn_equally():
    random.seed(0)
    counts = np.bincount([RandomRot90().draw() for _ in range(4000)], minlength=5)
    assert counts[4] == 0 and np.all(np.abs(counts[:4] - 1000) < 100), counts


# ----------------------------------------------------------------------------- crop rule

def test_crop_boxes_shift_clip_and_drop_by_hand():
    left, top, width, height = 10, 20, 50, 40       # the window [10, 60] x [20, 60]
    boxes = [[15, 25, 35, 45],                        # inside: shifted by (-10, -20)
             [0, 30, 20, 50],                         # half inside: [0, 10, 10, 30], 200 of 400 px
             [100, 100, 120, 120],                    # outside
             [50, 50, 70, 70]]                        # a quarter inside: [40, 30, 50, 40]
    out_boxes, out_labels = crop_boxes(np.array(boxes, np.float32), np.array([7, 8, 9, 6]),
                                       left, top, width, height, min_visibility=0.5)
    np.testing.assert_array_equal(out_boxes, [[5, 5, 25, 25], [0, 10, 10, 30]])
    np.testing.assert_array_equal(out_labels, [7, 8])    # labels leave with their boxes
    assert out_boxes.dtype == np.float32 and out_labels.dtype == np.int64
    out_boxes, out_labels = crop_boxes(np.array(boxes, np.float32), np.array([7, 8, 9, 6]),
                                       left, top, width, height, min_visibility=0.25)
    np.testing.assert_array_equal(out_boxes, [[5, 5, 25, 25], [0, 10, 10, 30], [40, 30, 50, 40]])
    np.testing.assert_array_equal(out_labels, [7, 8, 6])
    empty = crop_boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 0, 0, 5, 5, 0.3)
    assert empty[0].shape == (0, 4) and empty[1].shape == (0,)


@pytest.mark.parametrize("inside, kept", [(10.0, True), (9.99, False), (10.01, True)])
def test_crop_visibility_threshold_both_sides(inside, kept):
    # a 40 x 10 box with `inside` px of its width in the window: visible fraction inside / 40
    box = np.array([[100 + inside - 40, 50, 100 + inside, 60]], np.float32)
    out_boxes, _ = crop_boxes(box, np.array([1]), 100, 0, 200, 200, min_visibility=0.25)
    assert len(out_boxes) == int(kept)


def test_crop_visibility_threshold_is_exact_in_floating_point():
    # 55 of 100 px at min_visibility 0.55: kept, although 0.55 * 100 is 55.00000000000001
    for threshold, kept in ((0.55, 1), (0.55001, 0)):
        box = np.array([[95.5, 50, 105.5, 60]], np.float32)  # 5.5 of its 10 px of width right of x = 100
        assert len(crop_boxes(box, np.array([1]), 100, 0, 200, 200, threshold)[0]) == kept


def test_crop_drops_boxes_under_one_pixel():
    boxes = np.array([[5, 5, 6, 6],          # exactly 1 x 1 px: kept
                      [5, 5, 5.5, 15],       # 0.5 px wide: dropped
                      [20, -9.1, 30, 0.9]],  # 0.9 px high inside the window: dropped
                     np.float32)
    out_boxes, out_labels = crop_boxes(boxes, np.array([0, 1, 2]), 0, 0, 50, 50, min_visibility=0.0)
    np.testing.assert_array_equal(out_boxes, [[5, 5, 6, 6]])
    np.testing.assert_array_equal(out_labels, [0])


# ----------------------------------------------------------------------------- scale jitter + crop

def test_scale_jitter_crop_by_hand_and_pixels():
    # 50 x 100 image, plain training size 50 x 100; factor 2 -> 100 x 200; window at (60, 30), 100 x 50
    boxes = [[35, 20, 45, 30],   # -> [70, 40, 90, 60] -> [10, 10, 30, 30], inside
             [20, 10, 40, 20],   # -> [40, 20, 80, 40] -> [0, 0, 20, 10]: 200 of 800 px (0.25): dropped
             [70, 30, 85, 45]]   # -> [140, 60, 170, 90] -> [80, 30, 100, 50]: 400 of 900 px: kept
    sample = paint(make_sample(50, 100, boxes, labels=[1, 2, 3]))
    jitter = ScaleJitterCrop(Resize((50,), 100), (2.0, 2.0), min_visibility=0.3)
    out = jitter.apply(sample, (100, 200), (60, 30, 100, 50))
    assert out["image"].shape == (50, 100, 3)
    np.testing.assert_array_equal(out["boxes"], [[10, 10, 30, 30], [80, 30, 100, 50]])
    np.testing.assert_array_equal(out["labels"], [1, 3])
    assert out["scale"] == (2.0, 2.0) and out["orig_size"] == (50, 100)
    # bilinear x2: a pixel is over half white exactly inside the scaled box
    for channel, box in enumerate([[10, 10, 30, 30], [0, 0, 20, 10], [80, 30, 100, 50]]):
        np.testing.assert_array_equal(out["image"][..., channel] > 127, region((50, 100), box), err_msg=str(box))
    np.testing.assert_array_equal(sample["boxes"], boxes)  # input untouched


def test_scale_jitter_draw_sizes_and_offsets():
    random.seed(0)
    landscape = ScaleJitterCrop(Resize((50,), 100), (2.0, 2.0), 0.3)
    draws = [landscape.draw(50, 100) for _ in range(2000)]
    assert {size for size, _ in draws} == {(100, 200)}
    assert {window[2:] for _, window in draws} == {(100, 50)}             # the 50 x 100 training box
    lefts, tops = [w[0] for _, w in draws], [w[1] for _, w in draws]
    assert (min(lefts), max(lefts), min(tops), max(tops)) == (0, 100, 0, 50)  # every offset reachable
    assert ScaleJitterCrop(Resize((50,), 100), (2.0, 2.0), 0.3).draw(100, 50)[1][2:] == (50, 100)  # portrait
    assert ScaleJitterCrop(Resize((50,), 100), (2.0, 2.0), 0.3).draw(60, 60)[1][2:] == (100, 50)   # 100 x 100
    assert ScaleJitterCrop(Resize((50,), 100, square=True), (2.0, 2.0), 0.3).draw(40, 80)[1][2:] == (50, 50)
    assert ScaleJitterCrop(Resize((50,), 100), (0.5, 0.5), 0.3).draw(50, 100) == ((25, 50), (0, 0, 50, 25))
    assert ScaleJitterCrop(Resize((50,), 100), (0.598, 0.598), 0.3).draw(50, 100)[0] == (30, 60)  # rounded
    # min size 100 above max_size 80: plain 40 x 80, the box 80 x 80; x3 -> 120 x 240, cropped to 80 x 80
    size, window = ScaleJitterCrop(Resize((100,), 80), (3.0, 3.0), 0.3).draw(50, 100)
    assert size == (120, 240) and window[2:] == (80, 80)
    factors = [ScaleJitterCrop(Resize((50,), 100), (0.5, 1.5), 0.3).draw(50, 100)[0][0] / 50 for _ in range(500)]
    assert 0.5 <= min(factors) < 0.55 and 1.45 < max(factors) <= 1.5


def test_scale_jitter_of_one_is_the_plain_resize():
    generator = np.random.default_rng(1)
    sample = make_sample(90, 130, [[10, 20, 50, 60], [0, 0, 130, 90]])
    sample["image"] = generator.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    random.seed(3)
    jittered = ScaleJitterCrop(Resize((60, 70), 100), (1.0, 1.0), 0.3)(sample)
    random.seed(3)
    plain = Resize((60, 70), 100)(sample)
    for key in ("image", "boxes", "labels"):
        np.testing.assert_array_equal(jittered[key], plain[key])
    assert jittered["scale"] == plain["scale"]


# ----------------------------------------------------------------------------- colour

@pytest.fixture(scope="module")
def photo():
    """A smooth 64 x 80 RGB image over the whole 0..255 range."""
    generator = np.random.default_rng(0)
    image = cv2.GaussianBlur(generator.integers(0, 256, (64, 80, 3), dtype=np.uint8), (0, 0), 2)
    return cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX)


def torchvision_ops(image, ops):
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    for op, factor in ops:
        tensor = op(tensor, factor)
    return tensor.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("ours, theirs, factor", [
    (adjust_brightness, TF.adjust_brightness, 0.875), (adjust_brightness, TF.adjust_brightness, 1.125),
    (adjust_contrast, TF.adjust_contrast, 0.5), (adjust_contrast, TF.adjust_contrast, 1.5),
    (adjust_saturation, TF.adjust_saturation, 0.5), (adjust_saturation, TF.adjust_saturation, 1.5),
    (adjust_hue, TF.adjust_hue, -0.05), (adjust_hue, TF.adjust_hue, 0.05), (adjust_hue, TF.adjust_hue, 0.4),
])
def test_colour_ops_match_torchvision_to_one_grey_level(photo, ours, theirs, factor):
    got = ours(photo, factor)
    assert got.shape == photo.shape and got.dtype == np.uint8
    got, expected = got.astype(int), torchvision_ops(photo, [(theirs, factor)]).astype(int)
    assert np.abs(got - expected).max() <= 1
    assert np.abs(got - photo.astype(int)).mean() > 3   # and the op does change the image
    if ours is adjust_brightness:
        np.testing.assert_array_equal(got, expected)     # a lookup table of torchvision's formula: exact


@pytest.mark.parametrize("contrast_first", [True, False])
def test_photometric_distortion_matches_torchvision_in_its_order(photo, contrast_first):
    params = {"brightness": 1.1, "contrast": 0.7, "saturation": 1.4, "hue": -0.04, "contrast_first": contrast_first}
    ops = [(TF.adjust_brightness, 1.1), (TF.adjust_saturation, 1.4), (TF.adjust_hue, -0.04)]
    ops.insert(1 if contrast_first else 3, (TF.adjust_contrast, 0.7))
    got = PhotometricDistortion.apply_image(photo, params).astype(int)
    difference = np.abs(got - torchvision_ops(photo, ops).astype(int))
    # one-level differences of each step, amplified by the next (saturation x1.4): at most 4
    # levels, on few pixels (contrast in the other place: up to 36 levels on 1.4% of the values)
    assert difference.max() <= 4 and np.mean(difference > 2) < 0.005, (difference.max(), np.mean(difference > 2))
    none = dict.fromkeys(("brightness", "contrast", "saturation", "hue"))
    assert PhotometricDistortion.apply_image(photo, {**none, "contrast_first": True}) is photo


def test_photometric_draws_in_range_with_its_probability():
    random.seed(0)
    draws = [PhotometricDistortion(prob=0.3).draw() for _ in range(3000)]
    for name, (low, high) in [("brightness", (0.875, 1.125)), ("contrast", (0.5, 1.5)),
                              ("saturation", (0.5, 1.5)), ("hue", (-0.05, 0.05))]:
        factors = [d[name] for d in draws if d[name] is not None]
        assert abs(len(factors) / len(draws) - 0.3) < 0.03, name
        assert low <= min(factors) < low + 0.02 and high - 0.02 < max(factors) <= high, name
    assert abs(np.mean([d["contrast_first"] for d in draws]) - 0.5) < 0.03
    sample = make_sample(8, 8, [[1, 2, 3, 4]])
    out = PhotometricDistortion(prob=1.0)(sample)
    assert out["boxes"] is sample["boxes"] and out["labels"] is sample["labels"]


# ----------------------------------------------------------------------------- the pipeline

ALL_ON = {"scale_jitter": (0.5, 2.0), "crop_min_visibility": 0.3, "vflip_prob": 0.5, "rot90": True,
          "photometric": 0.5}


def demo_config(**overrides):
    return FCOSDemoConfig(**{"min_size": (48,), "max_size": 80, **overrides})


BACKGROUND = 40


class SyntheticDataset:
    """Three painted 60 x 90 images, each with its boxes, through `transforms`."""

    def __init__(self, transforms):
        self.transforms = transforms

    def __len__(self):
        return 3

    def __getitem__(self, index):
        sample = make_sample(60, 90, [[5 + index, 5, 40, 30], [50, 20, 85, 55], [10, 35, 30, 58]])
        sample["image"][:] = BACKGROUND  # some colour for the photometric distortion
        return self.transforms(paint(sample))


def test_every_augmentation_is_off_in_the_paper_configs():
    for config in (FCOSConfig, ATSSConfig, RetinaNetConfig, FCOSDemoConfig):
        cfg = config()
        steps = build_transforms(cfg, train=True).transforms
        assert [type(step) for step in steps] == [Resize, RandomHorizontalFlip], config
        assert (steps[0].min_sizes, steps[0].max_size, steps[1].prob) == (cfg.min_size, cfg.max_size, cfg.hflip_prob)
        assert (cfg.scale_jitter, cfg.vflip_prob, cfg.rot90, cfg.photometric) == ((1.0, 1.0), 0.0, False, 0.0)
    cfg = demo_config()
    dataset, before = SyntheticDataset(build_transforms(cfg, True)), SyntheticDataset(
        Compose([Resize(cfg.min_size, cfg.max_size), RandomHorizontalFlip(cfg.hflip_prob)]))
    for index in range(3):  # the same random draws as the pipeline before the augmentations existed
        ours, theirs = EpochSamples(dataset, 5)[(2, index)], EpochSamples(before, 5)[(2, index)]
        np.testing.assert_array_equal(ours["image"], theirs["image"])
        np.testing.assert_array_equal(ours["boxes"], theirs["boxes"])


def test_build_transforms_wires_each_augmentation_in_order():
    steps = build_transforms(demo_config(**ALL_ON), train=True).transforms
    assert [type(step) for step in steps] == [ScaleJitterCrop, RandomHorizontalFlip, RandomVerticalFlip,
                                              RandomRot90, PhotometricDistortion]
    assert (steps[0].scale_range, steps[0].min_visibility, steps[0].resize.min_sizes) == ((0.5, 2.0), 0.3, (48,))
    assert (steps[2].prob, steps[4].prob) == (0.5, 0.5)
    assert [type(s) for s in build_transforms(demo_config(rot90=True), True).transforms][-1] is RandomRot90
    assert [type(s) for s in build_transforms(demo_config(**ALL_ON), False).transforms] == [Resize]  # eval: as before


def test_augmented_samples_are_a_function_of_seed_epoch_and_index():
    samples = EpochSamples(SyntheticDataset(build_transforms(demo_config(**ALL_ON), True)), seed=11)
    first = samples[(3, 1)]
    random.random(), np.random.rand(), torch.rand(1)  # whatever the process drew in between
    again = samples[(3, 1)]
    for key in ("image", "boxes", "labels"):
        np.testing.assert_array_equal(first[key], again[key])
    others = [samples[(epoch, 1)] for epoch in range(4, 8)]
    assert all(o["image"].shape != first["image"].shape or not np.array_equal(o["image"], first["image"])
               for o in others)
    assert len({o["boxes"].tobytes() for o in others + [first]}) == 5


def test_full_pipeline_keeps_boxes_on_their_pixels():
    """Any draw of jitter, crop, flips and rotations: every kept box lies in the image, at least
    1 px wide and high, on its own pixels (to 1 px of bilinear blur at a non-integer factor)."""
    samples = EpochSamples(SyntheticDataset(build_transforms(demo_config(**{**ALL_ON, "photometric": 0.0}), True)),
                           seed=0)
    kept = 0
    for epoch in range(60):
        out = samples[(epoch, epoch % 3)]
        height, width = out["image"].shape[:2]
        assert min(height, width) <= 48 and max(height, width) <= 80
        boxes = out["boxes"]
        assert boxes.dtype == np.float32 and out["labels"].dtype == np.int64 and len(out["labels"]) == len(boxes)
        assert np.all(boxes >= 0) and np.all(boxes[:, [2, 3]] <= [width, height])
        assert np.all(boxes[:, 2] - boxes[:, 0] >= 1) and np.all(boxes[:, 3] - boxes[:, 1] >= 1)
        for box, label in zip(boxes, out["labels"]):
            ys, xs = np.nonzero(out["image"][..., label] > (BACKGROUND + 255) / 2)
            np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], box, atol=1.0)
            kept += 1
    assert kept > 60  # most boxes survive; some are cropped away


# ----------------------------------------------------------------------------- edges the mutants found

def test_rot90_turns_are_taken_modulo_four():
    """k counts quarter turns: k = 4 is none, 5 is one, -1 is three (boxes, pixels and scale)."""
    boxes = np.array([[1, 2, 4, 3]], np.float32)
    np.testing.assert_array_equal(rot90_boxes(boxes, 5, 10, 20), rot90_boxes(boxes, 1, 10, 20))
    np.testing.assert_array_equal(rot90_boxes(boxes, -1, 10, 20), rot90_boxes(boxes, 3, 10, 20))
    np.testing.assert_array_equal(rot90_boxes(boxes, 4, 10, 20), boxes)
    sample = make_sample(10, 20, boxes, scale=(0.5, 0.25))
    sample["image"] = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    assert RandomRot90().apply(sample, 4) is sample
    five, one = RandomRot90().apply(sample, 5), RandomRot90().apply(sample, 1)
    np.testing.assert_array_equal(five["image"], one["image"])
    np.testing.assert_array_equal(five["image"], np.rot90(sample["image"], 1))
    assert five["scale"] == one["scale"] == (0.25, 0.5)


def test_geometry_of_a_sample_without_scale():
    """A sample dict without "scale" is at scale 1: a rotation keeps (1, 1), a jitter gives its factors."""
    sample = make_sample(20, 40, [[2, 2, 10, 10]])
    del sample["scale"]
    assert RandomRot90().apply(sample, 1)["scale"] == (1.0, 1.0)
    out = ScaleJitterCrop(Resize((20,), 100), (2.0, 2.0), 0.3).apply(sample, (40, 80), (0, 0, 80, 40))
    assert out["scale"] == (2.0, 2.0)


def test_crop_keeps_a_one_pixel_box_and_divides_by_no_zero_area():
    """A 1 x 1 box fully inside is kept at min_visibility 0.5; a zero-area box is dropped without
    a division by zero (no RuntimeWarning)."""
    boxes = np.array([[5, 5, 6, 6], [2, 2, 2, 8], [3, 3, 9, 3]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out_boxes, out_labels = crop_boxes(boxes, np.array([0, 1, 2]), 0, 0, 50, 50, min_visibility=0.5)
    np.testing.assert_array_equal(out_boxes, [[5, 5, 6, 6]])
    np.testing.assert_array_equal(out_labels, [0])


def test_scale_jitter_to_under_one_pixel_keeps_one():
    """A factor that rounds a side to 0 px leaves it 1 px: 10 x 100 at x0.04 is 1 x 4."""
    jitter = ScaleJitterCrop(Resize((10,), 100), (0.04, 0.04), 0.3)
    assert jitter.draw(10, 100) == ((1, 4), (0, 0, 4, 1))
    assert ScaleJitterCrop(Resize((100,), 1000), (0.004, 0.004), 0.3).draw(1000, 100) == ((4, 1), (0, 0, 1, 4))


def test_brightness_is_torchvision_exactly_where_float32_rounds_up():
    """At 128/127 (in float32), 127 x factor is 127.99999 in float64 but 128.0 in float32, as
    torchvision computes it: the table is built in float32."""
    factor = 1.0078740119934082
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)    # [1, 256, 3]
    theirs = TF.adjust_brightness(torch.from_numpy(ramp).permute(2, 0, 1), factor).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(adjust_brightness(ramp, factor), theirs)
    assert adjust_brightness(ramp, factor)[0, 127, 0] == 128


def test_contrast_and_hue_reach_black():
    """Contrast x2 of a half-black, half-200 grey image (mean 100): 0 -> 0 (clipped from -100),
    200 -> 255 (from 300). A hue shift leaves black black."""
    image = np.zeros((2, 2, 3), np.uint8)
    image[:, 1] = 200
    np.testing.assert_array_equal(adjust_contrast(image, 2.0)[..., 0], [[0, 255], [0, 255]])
    coloured = np.array([[[0, 0, 0], [200, 30, 30]]], np.uint8)
    assert adjust_hue(coloured, 0.3)[0, 0].tolist() == [0, 0, 0]


def test_photometric_default_probability_and_call():
    """PhotometricDistortion() applies each change with probability 0.5; calling it changes the
    image as apply_image does with the same draw."""
    random.seed(1)
    draws = [PhotometricDistortion().draw() for _ in range(2000)]
    assert abs(np.mean([d["brightness"] is not None for d in draws]) - 0.5) < 0.04
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    sample = {**make_sample(8, 8, [[1, 2, 3, 4]]), "image": image}
    random.seed(3)
    expected = PhotometricDistortion(prob=1.0).apply_image(image, PhotometricDistortion(prob=1.0).draw())
    random.seed(3)
    np.testing.assert_array_equal(PhotometricDistortion(prob=1.0)(sample)["image"], expected)
    assert np.abs(expected.astype(int) - image).mean() > 3
