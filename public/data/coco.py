"""COCO-format detection dataset: validates the json once, then reads and transforms images."""

from __future__ import annotations

import functools
import logging
import os

import cv2
import numpy as np
import torch

from public.data.validate import validate_coco

logger = logging.getLogger("densedet")


class CocoDetection(torch.utils.data.Dataset):
    """Images and boxes of a COCO-format detection json.

    Everything is validated once in `__init__` by `validate.validate_coco` (the json, every
    image's header and end marker), so `__getitem__` only reads the image and applies
    `transforms`. Fatal problems (unreadable or truncated images, sizes that differ from the
    json, duplicate ids, nothing to train on, ...) raise one `DatasetError` listing them all;
    repairs are logged as one warning on the "densedet" logger (so in train.log). COCO
    category ids may be any integers; they are mapped to contiguous labels `0..C-1` in
    sorted-id order.

    Targets: crowd annotations are left out (they stay in `coco` so the evaluator ignores
    them); boxes are converted xywh -> xyxy and clipped to the image; boxes that are
    non-finite, malformed, of zero or negative size, or under 1 px after clipping are dropped,
    as are annotations whose category or image is not in the json. Images without boxes are
    kept as negatives. `coco` is the cleaned ground truth (pycocotools COCO) built from the
    same boxes, which evaluation scores against.

    Args:
        images_dir: folder that `file_name` of each image is relative to.
        annotations_file: COCO json with "images", "annotations" and "categories".
        transforms: optional callable sample -> sample (see `transforms.py`).
        check_images: "header" (default: size, format and end marker of every file), "decode"
            (decode every image once) or "off" (trust the json).

    `dataset[i]` returns a dict:
        image: uint8 [H, W, 3] RGB; boxes: float32 [N, 4] xyxy pixels; labels: int64 [N];
        image_id: int; orig_size: (h, w) of the file on disk; scale: (sx, sy) with
        transformed = original * scale ((1.0, 1.0) without transforms).
    """

    def __init__(self, images_dir: str, annotations_file: str, transforms=None, check_images: str = "header"):
        self.images_dir = str(images_dir)
        self.annotations_file = str(annotations_file)
        self.transforms = transforms
        report = validate_coco(self.images_dir, self.annotations_file, check_images)
        report.raise_if_fatal()
        if report.repair_message():
            logger.warning(report.repair_message())
        # The report is lean (flat arrays, no parsed json); __getitem__ reads NumPy arrays only, so that
        # forked data-loader workers touch no per-image Python object (which would copy its page).
        self.validation = report
        self.category_ids: list[int] = list(report.category_ids)
        self.class_names: list[str] = list(report.class_names)
        self.cat_id_to_label: dict[int, int] = {cid: label for label, cid in enumerate(self.category_ids)}
        self.label_to_cat_id: list[int] = list(self.category_ids)
        self._image_ids = np.asarray(report.image_ids, dtype=np.int64)        # [I]
        self._file_names = report.file_names                                 # [I] str
        # Sizes from the json or the file header; NaN only with check_images="off" and no json size
        # (then boxes are clipped with the real size in __getitem__).
        self._json_sizes = report.sizes                                      # [I, 2] (h, w)
        self._boxes, self._labels = report.target_boxes, report.target_labels  # [T, 4] float32, [T] int64
        self._offsets = report.target_offsets                                # [I + 1]
        # Training only (build_dataset): a public.data.mosaic.Mosaic that makes some samples
        # four-image mosaics; None: every sample is its own image.
        self.mosaic = None

    @property
    def image_ids(self) -> list[int]:
        return self._image_ids.tolist()

    @functools.cached_property
    def coco(self):
        """The cleaned ground truth (a pycocotools COCO), built on first use from the same arrays
        training reads: evaluation scores the boxes training learns from. A training set never
        builds it."""
        return self.validation.coco()

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self._image_ids)

    def portrait(self) -> np.ndarray:
        """bool [I]: taller than wide, from the json's sizes (False where they are absent)."""
        return self._json_sizes[:, 0] > self._json_sizes[:, 1]

    def __getitem__(self, index: int) -> dict:
        return self.item_in_epoch(index, None)

    def item_in_epoch(self, index: int, epoch: int | None) -> dict:
        """Sample ``index`` as training epoch ``epoch`` (0-based; None: unknown) sees it: a mosaic
        (``self.mosaic``, which can be closed for the last epochs) or the image through ``transforms``."""
        if self.mosaic is not None:
            sample = self.mosaic(self.load, len(self), index, epoch)
            if sample is not None:
                return sample
        sample = self.load(index)
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def load(self, index: int) -> dict:
        """Image ``index`` as read, with its boxes, before any transform."""
        path = os.path.join(self.images_dir, str(self._file_names[index]))
        image_id = int(self._image_ids[index])
        # IGNORE_ORIENTATION: annotations are in stored-pixel coordinates, so EXIF rotation must not apply.
        image = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if image is None:
            raise RuntimeError(f"cannot read image {path!r} (image id {image_id}, from {self.annotations_file})")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # [H, W, 3] uint8
        height, width = image.shape[:2]
        start, end = self._offsets[index], self._offsets[index + 1]
        boxes, labels = self._boxes[start:end], self._labels[start:end]
        json_h, json_w = self._json_sizes[index]
        if np.isnan(json_h) or np.isnan(json_w):
            boxes, labels = _clip_to_size(boxes, labels, width, height)
        elif (json_h, json_w) != (height, width):
            raise RuntimeError(
                f"image {path!r} (image id {image_id}) is {width}x{height} on disk but "
                f"{int(json_w)}x{int(json_h)} in {self.annotations_file}"
            )
        sample = {
            "image": image,
            "boxes": boxes.copy(),  # transforms modify boxes; keep the cached targets intact
            "labels": labels.copy(),
            "image_id": image_id,
            "orig_size": (height, width),
            "scale": (1.0, 1.0),
        }
        return sample


def _clip_to_size(boxes: np.ndarray, labels: np.ndarray, width: int, height: int):
    """Clip xyxy boxes [N, 4] to a width x height image and drop those left < 1 px wide or tall."""
    clipped = np.clip(boxes, 0.0, np.array([width, height, width, height], dtype=np.float32))
    keep = ((clipped[:, 2:] - clipped[:, :2]) >= 1.0).all(axis=1)
    return clipped[keep], labels[keep]
