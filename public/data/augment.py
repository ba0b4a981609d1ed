"""Training augmentations for small datasets: scale jitter with a random crop, photometric
distortion and 90-degree rotations (numpy/OpenCV, ``dict -> dict``; the flips, horizontal and
vertical, are in ``public.data.transforms``).

The sample dicts are those of ``public.data.transforms``: image uint8 [H, W, 3] RGB, boxes
float32 [N, 4] xyxy pixels, labels int64 [N], image_id, orig_size (h, w), scale (sx, sy). Every
augmentation is off in BaseConfig; ``build_transforms(cfg, train=True)`` adds the ones a config
turns on, in the order

    Resize or ScaleJitterCrop -> RandomHorizontalFlip -> RandomVerticalFlip -> RandomRot90
    -> PhotometricDistortion

(geometry on the already resized, at most training-sized image; colour last, on the pixels that
are kept). With everything off it is Resize -> RandomHorizontalFlip, the papers' pipeline.

Randomness comes only from Python's ``random``, which ``public.data.seeding`` seeds from (seed,
epoch, index) around every sample: an image gets the same augmentation in any process, worker
count or resumed run. Each random transform has ``draw`` (the random choices) and ``apply``
(the deterministic rest), so the tests can give the choices by hand.

``sample["scale"]`` stays the resize factor (sx, sy) along the image's current x and y axes:
a crop or a flip does not change it, a rotation by an odd multiple of 90 degrees swaps it.
``boxes_now = boxes_original * scale`` then no longer holds, which only matters where predictions
are mapped back to the original image: at evaluation, where none of these transforms runs.

Why our own numpy/OpenCV code rather than torchvision.transforms.v2 (the timings are in
docs/benchmarks.md, "Augmentation kernels"; bench/loader.py times the whole loader):

- Geometry. Flips, rotations by 90 degrees and crops are exact array operations (numpy slices,
  ``cv2.rotate``) and their box maths are the few lines below, checked against
  hand-computed boxes and drawn pixels in tests/test_augment.py. v2 does not fit the rule we
  need: ``v2.RandomCrop`` raises on an image smaller than the crop unless it pads it (we leave it
  smaller; collate pads the batch), torchvision's ``FixedSizeCrop`` lives in its reference
  scripts, not the library, and ``v2.SanitizeBoundingBoxes`` drops boxes by size only, while
  the visibility rule needs each box's area before the crop. ``v2.RandomRotation`` draws an
  angle from a continuous range, not one of four quarter turns; ``F.rotate(x, 90 * k,
  expand=True)`` is exact, and the tests use it as the oracle of our box formula.
- Colour. torchvision's kernels are the definitions we follow (``F.adjust_brightness``,
  ``adjust_contrast``, ``adjust_saturation``, ``adjust_hue``), but on a uint8 tensor they are 2-6x
  slower than OpenCV lookup tables, a saturating blend and OpenCV's float HSV conversion, which
  agree with torchvision's to 1 grey level (tests/test_augment.py checks this against torchvision on every run).
- Albumentations does all of this (its ``BboxParams(min_visibility=...)`` is our crop rule),
  but it is not a dependency, and what we need is under 300 lines proven against hand-made
  answers and torchvision: not worth a new dependency and its version churn.

Mosaic (four images in one) is not here: it needs other samples of the dataset, which a
per-sample transform does not see; it is a step of the training dataset (public/data/mosaic.py),
after which the chain above runs without its first step.
"""
from __future__ import annotations

import random

import cv2
import numpy as np


# ----------------------------------------------------------------------------- orientation

_CV2_ROTATE = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}


def rot90_boxes(boxes: np.ndarray, k: int, height: int, width: int) -> np.ndarray:
    """Boxes [N, 4] xyxy of an H x W image rotated by k quarter turns counter-clockwise
    (``np.rot90(image, k)``): a point (x, y) goes to (y, W - x) for k = 1, (W - x, H - y) for
    k = 2 and (H - y, x) for k = 3; the image becomes W x H for odd k."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    k = k % 4
    if k == 0:
        return boxes
    if k == 1:
        rotated = [y1, width - x2, y2, width - x1]
    elif k == 2:
        rotated = [width - x2, height - y2, width - x1, height - y1]
    else:
        rotated = [height - y2, x1, height - y1, x2]
    return np.stack(rotated, axis=1).astype(np.float32)  # [N, 4]


class RandomRot90:
    """Rotate by k quarter turns counter-clockwise, k uniform in 0..3, for imagery without an
    "up" (aerial, microscopy). With a horizontal flip of probability 0.5 as well, each of the 8
    symmetries of a square is equally likely (a vertical flip is then one of them). A rotated
    landscape image is portrait: aspect_ratio_grouping (by the stored orientation) then mixes
    orientations in a batch, which costs padding unless the images are square."""

    def draw(self) -> int:
        return random.randint(0, 3)

    def apply(self, sample: dict, k: int) -> dict:
        if k % 4 == 0:
            return sample
        image = sample["image"]
        height, width = image.shape[:2]
        out = dict(sample)
        out["image"] = cv2.rotate(image, _CV2_ROTATE[k % 4])  # == np.rot90(image, k), contiguous
        out["boxes"] = rot90_boxes(sample["boxes"], k, height, width)
        if k % 2:  # the image's x axis is the old y axis: the resize factors swap with it
            sx, sy = sample.get("scale", (1.0, 1.0))
            out["scale"] = (sy, sx)
        return out

    def __call__(self, sample: dict) -> dict:
        return self.apply(sample, self.draw())

    def __repr__(self) -> str:
        return "RandomRot90()"


# ----------------------------------------------------------------------------- scale jitter and crop

def crop_boxes(boxes: np.ndarray, labels: np.ndarray, left: int, top: int, width: int, height: int,
               min_visibility: float) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and labels as seen through the window (left, top, width, height) of their image.

    Boxes [N, 4] xyxy are shifted by (-left, -top) and clipped to [0, width] x [0, height]. A box
    is kept with its label when (a) at least ``min_visibility`` of its area is left inside the
    window (a box at exactly that fraction is kept) and (b) it is at least 1 px wide and high
    after clipping. Returns (boxes [K, 4] float32, labels [K] int64), K <= N.
    """
    area = ((boxes[:, 2] - boxes[:, 0]).astype(np.float64)
            * (boxes[:, 3] - boxes[:, 1]).astype(np.float64))  # [N]
    shifted = boxes - np.array([left, top, left, top], dtype=np.float32)
    clipped = np.clip(shifted, 0, np.array([width, height, width, height], dtype=np.float32)).astype(np.float32)
    visible_w = (clipped[:, 2] - clipped[:, 0]).astype(np.float64)  # [N]
    visible_h = (clipped[:, 3] - clipped[:, 1]).astype(np.float64)
    # float64: products of float32 coordinates are exact, and a ratio equal to the threshold in
    # exact arithmetic rounds to the same double as the threshold (kept, as the rule says).
    visible = np.divide(visible_w * visible_h, area, out=np.zeros_like(area), where=area > 0)
    keep = (visible >= min_visibility) & (visible_w >= 1) & (visible_h >= 1)  # [N]
    return clipped[keep], labels[keep]


class ScaleJitterCrop:
    """Large-scale jitter (Ghiasi et al., 2021, "Simple Copy-Paste"; torchvision's ScaleJitter +
    FixedSizeCrop, mmdetection's RandomResize + RandomCrop), relative to the plain training size.

    1. The plain size: the (h, w) that ``resize`` (the training Resize) gives this image.
    2. A factor f ~ U[low, high]; the image is resized once, to round(plain * f).
    3. The training box: shorter side <= the drawn min size and longer side <= max_size, oriented
       as the image (keep-ratio; the plain image always fits in it), or size x size (square). A
       resized image larger than the box is cropped to it at a uniformly random offset; a smaller
       one is left smaller (collate pads the batch).
    4. Boxes are scaled, then shifted into the window and clipped (``crop_boxes``): a box with
       less than ``min_visibility`` of its area left, or under 1 px wide or high, is dropped with
       its label. An image may be left with no box (a negative image; the losses handle it).

    Args:
        resize: the training ``Resize`` (its size draw, max_size and mode are used).
        scale_range: (low, high) of the factor f; (1, 1) is the plain resize.
        min_visibility: the fraction of a box's area that must stay inside the crop.
    """

    def __init__(self, resize, scale_range: tuple[float, float], min_visibility: float):
        low, high = scale_range   # 0 < low <= high: the scale_jitter key's declaration checks it
        self.resize, self.scale_range, self.min_visibility = resize, (float(low), float(high)), min_visibility

    def draw(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """((new_h, new_w), (left, top, crop_w, crop_h)) for an image of height x width."""
        size = self.resize.draw_size()
        plain_h, plain_w = self.resize.output_size(height, width, size)
        factor = random.uniform(*self.scale_range)
        new_h, new_w = max(1, int(round(plain_h * factor))), max(1, int(round(plain_w * factor)))
        if self.resize.square:
            box_h = box_w = size
        else:
            short, long = min(size, self.resize.max_size), self.resize.max_size
            box_h, box_w = (short, long) if new_h <= new_w else (long, short)
        crop_h, crop_w = min(new_h, box_h), min(new_w, box_w)
        top, left = random.randint(0, new_h - crop_h), random.randint(0, new_w - crop_w)
        return (new_h, new_w), (left, top, crop_w, crop_h)

    def apply(self, sample: dict, new_size: tuple[int, int], window: tuple[int, int, int, int]) -> dict:
        """Resize ``sample`` to new_size (h, w), then keep the window (left, top, width, height)."""
        image = sample["image"]
        height, width = image.shape[:2]
        new_h, new_w = new_size
        left, top, crop_w, crop_h = window
        sx, sy = new_w / width, new_h / height
        if (new_h, new_w) != (height, width):
            image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        out = dict(sample)
        out["image"] = np.ascontiguousarray(image[top:top + crop_h, left:left + crop_w])  # [crop_h, crop_w, 3]
        boxes = (sample["boxes"] * np.array([sx, sy, sx, sy], dtype=np.float32)).astype(np.float32)  # [N, 4]
        out["boxes"], out["labels"] = crop_boxes(boxes, sample["labels"], left, top, crop_w, crop_h,
                                                 self.min_visibility)
        old_sx, old_sy = sample.get("scale", (1.0, 1.0))
        out["scale"] = (old_sx * sx, old_sy * sy)  # the resize; the crop shifts but does not scale
        return out

    def __call__(self, sample: dict) -> dict:
        height, width = sample["image"].shape[:2]
        return self.apply(sample, *self.draw(height, width))

    def __repr__(self) -> str:
        return (f"ScaleJitterCrop({self.resize!r}, scale_range={self.scale_range}, "
                f"min_visibility={self.min_visibility})")


# ----------------------------------------------------------------------------- colour

def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """torchvision's ``F.adjust_brightness`` on uint8 [H, W, 3]: floor(clip(x * factor)), exactly."""
    table = np.clip(np.arange(256, dtype=np.float32) * np.float32(factor), 0, 255).astype(np.uint8)
    return cv2.LUT(image, table)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """torchvision's ``F.adjust_contrast``: blend with the mean grey level (to 1 grey level)."""
    mean = float(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean())
    table = np.arange(256, dtype=np.float32) * np.float32(factor) + np.float32(mean * (1.0 - factor))
    return cv2.LUT(image, np.clip(table, 0, 255).astype(np.uint8))


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """torchvision's ``F.adjust_saturation``: blend with the grey image (to 1 grey level)."""
    gray = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(image, factor, gray, 1.0 - factor, 0)  # uint8, saturating


def adjust_hue(image: np.ndarray, shift: float) -> np.ndarray:
    """torchvision's ``F.adjust_hue``: hue + shift turns (shift in [-0.5, 0.5]) in HSV (to 1 grey level)."""
    hsv = cv2.cvtColor(image.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_RGB2HSV)  # H in [0, 360)
    hue = hsv[..., 0]
    hue += np.float32(shift * 360)
    hue %= 360
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    rgb *= 255
    return np.clip(rgb, 0, 255).astype(np.uint8)


class PhotometricDistortion:
    """SSD's photometric distortion (Liu et al., 2016), as torchvision's RandomPhotometricDistort
    without its channel shuffle: brightness x U[0.875, 1.125], contrast x U[0.5, 1.5], saturation
    x U[0.5, 1.5] and hue + U[-0.05, 0.05] turn, each applied with probability ``prob``, in
    torchvision's order (brightness, contrast, saturation, hue; contrast moved after hue with
    probability 0.5). The channel shuffle is left out: swapping R, G and B changes colours that can
    tell classes apart (a red light from a green one). Boxes are untouched.
    """

    BRIGHTNESS, CONTRAST, SATURATION, HUE = (0.875, 1.125), (0.5, 1.5), (0.5, 1.5), (-0.05, 0.05)

    def __init__(self, prob: float = 0.5):
        self.prob = prob

    def draw(self) -> dict:
        """Each factor (None where not applied) and whether contrast comes before saturation and hue."""
        params = {}
        for name, (low, high) in (("brightness", self.BRIGHTNESS), ("contrast", self.CONTRAST),
                                  ("saturation", self.SATURATION), ("hue", self.HUE)):
            params[name] = random.uniform(low, high) if random.random() < self.prob else None
        params["contrast_first"] = random.random() < 0.5
        return params

    @staticmethod
    def apply_image(image: np.ndarray, params: dict) -> np.ndarray:
        if params["brightness"] is not None:
            image = adjust_brightness(image, params["brightness"])
        if params["contrast"] is not None and params["contrast_first"]:
            image = adjust_contrast(image, params["contrast"])
        if params["saturation"] is not None:
            image = adjust_saturation(image, params["saturation"])
        if params["hue"] is not None:
            image = adjust_hue(image, params["hue"])
        if params["contrast"] is not None and not params["contrast_first"]:
            image = adjust_contrast(image, params["contrast"])
        return image

    def __call__(self, sample: dict) -> dict:
        out = dict(sample)
        out["image"] = self.apply_image(sample["image"], self.draw())
        return out

    def __repr__(self) -> str:
        return f"PhotometricDistortion(prob={self.prob})"
