"""Sample transforms: numpy in, numpy out, `dict -> dict`.

A sample is the dict `CocoDetection` returns: image uint8 [H, W, 3], boxes float32 [N, 4]
xyxy pixels, labels int64 [N], image_id, orig_size (h, w), scale (sx, sy). Transforms that
move pixels keep `scale` up to date so that `boxes_now = boxes_original * scale` (except the
flips, horizontal and vertical, here and the training augmentations of `public.data.augment`,
which keep it as the resize factor: at training it is not read).
"""

from __future__ import annotations

import random

import cv2
import numpy as np

from public.data.augment import PhotometricDistortion, RandomRot90, ScaleJitterCrop


class Compose:
    """Apply transforms in order: `Compose([a, b])(sample) == b(a(sample))`."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, sample: dict) -> dict:
        for transform in self.transforms:
            sample = transform(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class Resize:
    """Resize the image and its boxes.

    keep-ratio (default, the FCOS paper's "800 x 1333"): the shorter side becomes the chosen
    min size unless that makes the longer side exceed `max_size`, in which case the longer
    side becomes `max_size`. `square=True` resizes to (s, s) ignoring aspect ratio, so x and
    y scales differ.

    Args:
        min_sizes: candidate shorter-side sizes (or square sides).
        max_size: cap on the longer side (keep-ratio only).
        mode: "choice" picks one of `min_sizes` per sample; "range" draws an integer uniformly
            in [min(min_sizes), max(min_sizes)].
        square: resize to a square instead of keeping the aspect ratio.
    """

    def __init__(self, min_sizes: tuple[int, ...], max_size: int, mode: str = "choice", square: bool = False):
        if mode not in ("choice", "range"):
            raise ValueError(f"Resize mode must be 'choice' or 'range', got {mode!r}")
        if isinstance(min_sizes, int):
            min_sizes = (min_sizes,)
        if not min_sizes:
            raise ValueError("Resize needs at least one min size")
        self.min_sizes = tuple(int(s) for s in min_sizes)
        self.max_size = int(max_size)
        self.mode = mode
        self.square = square

    def draw_size(self) -> int:
        """This sample's min size (or square side), drawn from `min_sizes` by `mode`."""
        if self.mode == "range":
            return random.randint(min(self.min_sizes), max(self.min_sizes))
        return random.choice(self.min_sizes)

    def output_size(self, height: int, width: int, size: int) -> tuple[int, int]:
        """(new_h, new_w) for an input of `height` x `width` and target size `size`."""
        if self.square:
            return size, size
        scale = size / min(height, width)
        if max(height, width) * scale > self.max_size:
            scale = self.max_size / max(height, width)
        return max(1, int(round(height * scale))), max(1, int(round(width * scale)))

    def __call__(self, sample: dict) -> dict:
        image = sample["image"]
        height, width = image.shape[:2]
        new_h, new_w = self.output_size(height, width, self.draw_size())
        # Exact per-axis ratios (rounding the size makes them differ slightly from the nominal scale).
        sx, sy = new_w / width, new_h / height
        out = dict(sample)
        if (new_h, new_w) != (height, width):
            out["image"] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        out["boxes"] = (sample["boxes"] * np.array([sx, sy, sx, sy], dtype=np.float32)).astype(np.float32)  # [N, 4]
        old_sx, old_sy = sample.get("scale", (1.0, 1.0))
        out["scale"] = (old_sx * sx, old_sy * sy)
        return out

    def __repr__(self) -> str:
        return f"Resize(min_sizes={self.min_sizes}, max_size={self.max_size}, mode={self.mode!r}, square={self.square})"


class RandomFlip:
    """Mirror the image along ``axis`` (1: left-right, 0: top-bottom) with probability ``prob``;
    boxes follow: x1' = W - x2, x2' = W - x1 (or y1' = H - y2, y2' = H - y1)."""
    axis = 1

    def __init__(self, prob: float = 0.5):
        self.prob = prob

    def __call__(self, sample: dict) -> dict:
        if random.random() >= self.prob:
            return sample
        image, boxes = sample["image"], sample["boxes"]   # [H, W, 3], [N, 4]
        size = image.shape[self.axis]                      # W or H
        low, high = (0, 2) if self.axis == 1 else (1, 3)   # the box columns along the axis
        flipped = boxes.copy()
        flipped[:, low], flipped[:, high] = size - boxes[:, high], size - boxes[:, low]
        out = dict(sample)
        out["image"] = np.ascontiguousarray(np.flip(image, self.axis))
        out["boxes"] = flipped
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prob={self.prob})"


class RandomHorizontalFlip(RandomFlip):
    """Mirror the image left-right with probability `prob`; boxes follow: x1' = W - x2, x2' = W - x1."""
    axis = 1


class RandomVerticalFlip(RandomFlip):
    """Mirror the image top-bottom with probability `prob`; boxes follow: y1' = H - y2, y2' = H - y1."""
    axis = 0


def build_transforms(cfg, train: bool) -> Compose:
    """Training or evaluation transforms from a config.

    Reads cfg.min_size (tuple of ints), cfg.max_size, cfg.multiscale_mode ("choice"|"range"),
    cfg.resize_mode ("keep_ratio"|"square"), cfg.hflip_prob, cfg.test_min_size and
    cfg.test_resize: with "torchvision" the evaluation images stay as read (no transform) and
    are resized on the device (``public.data.prefetcher.TorchvisionResize``).

    Training also reads the augmentations of ``public.data.augment`` (all off by default, and
    absent from the pipeline when off): cfg.scale_jitter and cfg.crop_min_visibility (the Resize
    becomes a ScaleJitterCrop), cfg.vflip_prob, cfg.rot90 and cfg.photometric. Train order:
    Resize or ScaleJitterCrop, RandomHorizontalFlip, RandomVerticalFlip, RandomRot90,
    PhotometricDistortion.
    """
    square = cfg.resize_mode == "square"
    if not train and cfg.test_resize == "torchvision":
        if square:
            raise ValueError("test_resize='torchvision' keeps the aspect ratio: it needs resize_mode='keep_ratio'")
        return Compose([])
    if train:
        resize = Resize(tuple(cfg.min_size), cfg.max_size, cfg.multiscale_mode, square)
        if tuple(cfg.scale_jitter) != (1.0, 1.0):
            resize = ScaleJitterCrop(resize, tuple(cfg.scale_jitter), cfg.crop_min_visibility)
        steps = [resize, RandomHorizontalFlip(cfg.hflip_prob)]
        if cfg.vflip_prob > 0:
            steps.append(RandomVerticalFlip(cfg.vflip_prob))
        if cfg.rot90:
            steps.append(RandomRot90())
        if cfg.photometric > 0:
            steps.append(PhotometricDistortion(cfg.photometric))
        return Compose(steps)
    return Compose([Resize((cfg.test_min_size,), cfg.max_size, "choice", square)])
