"""Mosaic: four training images in one (YOLOv4; Ultralytics' and YOLOX's default for training
from scratch), for small datasets.

A mosaic needs other samples of the dataset, so it is a step of the training dataset
(``CocoDetection.mosaic``, set by ``public.data.loaders.build_dataset``), not of the per-sample
transform chain. With probability ``prob`` a training sample becomes:

1. A square canvas of side S, the training size drawn as the plain Resize would (``min_size``
   with ``multiscale_mode``; capped at ``max_size`` with ``resize_mode='keep_ratio'``), filled
   with grey 114 (Ultralytics').
2. A centre (cx, cy), integers uniform in [S/4, 3S/4], and one factor f ~ U[``scale_range``].
3. The sample's own image and three others (indices uniform over the dataset, repeats allowed,
   as Ultralytics' ``random.choices``), each resized to f x the size the training Resize gives it
   at S (keep-ratio: shorter side f*S; square: f*S x f*S), are placed around the centre:
   the own image top-left (its bottom-right corner at the centre), then top-right, bottom-left,
   bottom-right. What falls outside the canvas is cut.
4. Boxes follow their image (scaled, shifted) and are clipped to the canvas with
   ``augment.crop_boxes``: a box with under ``min_visibility`` of its area left, or under 1 px
   wide or high, is dropped with its label (the rule of ScaleJitterCrop).
5. The rest of the training chain (flips, rotations, photometric distortion) runs on the canvas;
   the Resize or ScaleJitterCrop it replaces does not.

Why this rather than Ultralytics' 2S x 2S canvas followed by a random affine back to S: with
Ultralytics' defaults (no rotation, shear or perspective; scale 0.5) that affine is a crop of the
2S canvas around its middle, scaled by U[0.5, 1.5], so placing the four images at that scale on
an S x S canvas directly gives the same kind of picture (objects at 0.5-1.5x their plain training
size, four images cut around a random centre) at a quarter of the pixels, without the affine's
resampling of the whole canvas, and with the box maths of the crop above (no box corners through
a matrix). ``scale_range`` (0.5, 1.5) is Ultralytics' scale=0.5; at f = 0.5 the four images fit
the canvas around a central centre, at 1.5 each shows the part next to the centre.

The mosaic sample keeps the own image's ``image_id`` and ``orig_size``; its ``scale`` is the own
image's resize factor (sx, sy) (read only at evaluation, where no mosaic runs).

Randomness comes only from Python's ``random`` (``public.data.seeding`` seeds it from (seed,
epoch, index) around the whole sample): whether to mosaic, the three other images, S, the centre
and f are drawn from that stream before the images are read, so a sample is the same in any
process, worker count or resumed run. ``draw`` and ``apply`` split the choices from the rest, so
the tests give them by hand.

``close_from_epoch``: from this epoch on (0-based) no mosaic (Ultralytics' ``close_mosaic``: the
last epochs train on plain images, as the model will see them). The epoch comes with each index
from ``EpochSamples``.
"""
from __future__ import annotations

import random

import cv2
import numpy as np

from public.data.augment import ScaleJitterCrop, crop_boxes
from public.data.transforms import Compose, Resize

FILL = 114  # the grey of the canvas where no image falls (Ultralytics', YOLOX's)


class Mosaic:
    """Four images around a random centre of a square canvas (the module docstring says how).

    Args:
        resize: the training ``Resize`` (its size draw, ``output_size`` and max_size are used).
        prob: probability of a mosaic per sample (0 never).
        scale_range: (low, high) of the factor on each image's plain training size.
        min_visibility: the fraction of a box's area that must stay on the canvas.
        after: the rest of the training chain, run on the canvas (flips, photometric, ...).
        close_from_epoch: no mosaic from this 0-based epoch on (None: never closed).
    """

    def __init__(self, resize: Resize, prob: float, scale_range: tuple[float, float] = (0.5, 1.5),
                 min_visibility: float = 0.3, after=None, close_from_epoch: int | None = None):
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"mosaic scale range must be (low, high) with 0 < low <= high, got {scale_range!r}")
        self.resize, self.prob, self.scale_range = resize, prob, (float(low), float(high))
        self.min_visibility, self.after = min_visibility, after or Compose([])
        self.close_from_epoch = close_from_epoch

    def active(self, epoch: int | None) -> bool:
        """Whether mosaics are drawn in ``epoch`` (None: an epoch not known, e.g. ``dataset[i]``)."""
        return self.prob > 0 and (epoch is None or self.close_from_epoch is None or epoch < self.close_from_epoch)

    def canvas_size(self, size: int) -> int:
        """The canvas side for a drawn training size: the size, capped at max_size when keeping ratios."""
        return size if self.resize.square else min(size, self.resize.max_size)

    def draw(self, index: int, count: int) -> dict | None:
        """The random choices for dataset ``index`` of ``count`` images, or None (no mosaic this time):
        {"indices": [index, 3 others], "size": S, "centre": (cx, cy), "factor": f}."""
        if random.random() >= self.prob:
            return None
        others = [random.randrange(count) for _ in range(3)]
        size = self.canvas_size(self.resize.draw_size())
        centre_x = random.randint(size // 4, 3 * size // 4)
        centre_y = random.randint(size // 4, 3 * size // 4)
        factor = random.uniform(*self.scale_range)
        return {"indices": [index, *others], "size": size, "centre": (centre_x, centre_y), "factor": factor}

    def apply(self, samples: list[dict], size: int, centre: tuple[int, int], factor: float) -> dict:
        """The mosaic of four raw samples (top-left, top-right, bottom-left, bottom-right) on a
        ``size`` x ``size`` canvas around ``centre`` (cx, cy), each at ``factor`` x its plain
        training size; ``after`` is not applied here."""
        centre_x, centre_y = centre
        canvas = np.full((size, size, 3), FILL, dtype=np.uint8)  # [S, S, 3]
        all_boxes, all_labels, main_scale = [], [], (1.0, 1.0)
        for position, sample in enumerate(samples):   # four pieces, not a loop over boxes
            image = sample["image"]
            height, width = image.shape[:2]
            plain_h, plain_w = self.resize.output_size(height, width, size)
            new_h, new_w = max(1, int(round(plain_h * factor))), max(1, int(round(plain_w * factor)))
            if (new_h, new_w) != (height, width):
                image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
            sx, sy = new_w / width, new_h / height
            # The image's top-left corner on the canvas: it touches the centre with its bottom-right
            # (0), bottom-left (1), top-right (2) or top-left (3) corner.
            left = centre_x - new_w if position in (0, 2) else centre_x
            top = centre_y - new_h if position in (0, 1) else centre_y
            x1, y1 = max(left, 0), max(top, 0)
            x2, y2 = min(left + new_w, size), min(top + new_h, size)
            if x2 > x1 and y2 > y1:
                canvas[y1:y2, x1:x2] = image[y1 - top:y2 - top, x1 - left:x2 - left]
            boxes = (sample["boxes"] * np.array([sx, sy, sx, sy], dtype=np.float32)).astype(np.float32)  # [N, 4]
            # The canvas is the window (-left, -top, size, size) of this image's coordinates.
            boxes, labels = crop_boxes(boxes, sample["labels"], -left, -top, size, size, self.min_visibility)
            all_boxes.append(boxes)
            all_labels.append(labels)
            if position == 0:
                main_scale = (sx, sy)
        main = samples[0]
        return {"image": canvas, "boxes": np.concatenate(all_boxes).astype(np.float32).reshape(-1, 4),
                "labels": np.concatenate(all_labels).astype(np.int64), "image_id": main["image_id"],
                "orig_size": main["orig_size"], "scale": main_scale}

    def __call__(self, load, count: int, index: int, epoch: int | None) -> dict | None:
        """The mosaic sample of ``index`` (``load(i)``: dataset image i untransformed), with the rest
        of the chain applied, or None where this sample is not a mosaic (closed epoch or the draw)."""
        if not self.active(epoch):
            return None
        params = self.draw(index, count)
        if params is None:
            return None
        samples = [load(i) for i in params.pop("indices")]
        return self.after(self.apply(samples, **params))

    def __repr__(self) -> str:
        return (f"Mosaic(prob={self.prob}, scale_range={self.scale_range}, min_visibility={self.min_visibility}, "
                f"close_from_epoch={self.close_from_epoch}, then {self.after!r})")


def build_mosaic(cfg, train_transforms: Compose) -> Mosaic | None:
    """The training mosaic of a config (None when ``cfg.mosaic`` is 0), around the training chain
    ``train_transforms`` (``build_transforms(cfg, train=True)``): its first step (Resize or
    ScaleJitterCrop) gives the size draw, the steps after it run on the canvas."""
    if cfg.mosaic <= 0:
        return None
    first, rest = train_transforms.transforms[0], train_transforms.transforms[1:]
    resize = first.resize if isinstance(first, ScaleJitterCrop) else first
    close = cfg.epochs - cfg.mosaic_close if cfg.mosaic_close > 0 else None
    return Mosaic(resize, cfg.mosaic, tuple(cfg.mosaic_scale), cfg.crop_min_visibility, Compose(rest), close)
