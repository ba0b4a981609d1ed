"""COCO-format detection dataset: validates the json once, then reads and transforms images."""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO

_SHOW_IDS = 5  # how many offending annotation ids / paths an error or warning lists


class CocoDetection(torch.utils.data.Dataset):
    """Images and boxes of a COCO-format detection json.

    Everything is validated once in `__init__` (vectorised over all annotations), so
    `__getitem__` only reads the image and applies `transforms`. COCO category ids may be
    any integers; they are mapped to contiguous labels `0..C-1` in sorted-id order.

    Target cleaning (one summarised warning per dataset): crowd annotations are left out
    of the targets (they stay in `coco` so the evaluator ignores them); boxes are converted
    xywh -> xyxy and clipped to the image; boxes that are non-finite, malformed, or narrower
    or shorter than 1 px after clipping are dropped, as are annotations whose category or
    image is not in the json. Images without boxes are kept as negatives.

    Args:
        images_dir: folder that `file_name` of each image is relative to.
        annotations_file: COCO json with "images", "annotations" and "categories".
        transforms: optional callable sample -> sample (see `transforms.py`).

    `dataset[i]` returns a dict:
        image: uint8 [H, W, 3] RGB; boxes: float32 [N, 4] xyxy pixels; labels: int64 [N];
        image_id: int; orig_size: (h, w) of the file on disk; scale: (sx, sy) with
        transformed = original * scale ((1.0, 1.0) without transforms).
    """

    def __init__(self, images_dir: str, annotations_file: str, transforms=None):
        self.images_dir = str(images_dir)
        self.annotations_file = str(annotations_file)
        self.transforms = transforms
        dataset = _load_json(self.annotations_file)
        if not os.path.isdir(self.images_dir):
            raise FileNotFoundError(
                f"images folder {self.images_dir!r} (for {self.annotations_file!r}) does not exist"
            )

        # pycocotools prints progress on stdout; the index is built from the dict we already parsed.
        self.coco = COCO()
        self.coco.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()

        categories = sorted(dataset["categories"], key=lambda c: c["id"])
        self.category_ids: list[int] = [int(c["id"]) for c in categories]
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"{self.annotations_file}: duplicate category ids {self.category_ids}")
        self.class_names: list[str] = [str(c.get("name", c["id"])) for c in categories]
        self.cat_id_to_label: dict[int, int] = {cid: label for label, cid in enumerate(self.category_ids)}
        self.label_to_cat_id: list[int] = list(self.category_ids)

        images = sorted(dataset["images"], key=lambda im: im["id"])
        self.image_ids: list[int] = [int(im["id"]) for im in images]
        if len(set(self.image_ids)) != len(self.image_ids):
            raise ValueError(f"{self.annotations_file}: duplicate image ids")
        self._paths = [os.path.join(self.images_dir, im["file_name"]) for im in images]
        # Sizes from the json, NaN where absent (then boxes are clipped with the real size in __getitem__).
        self._json_sizes = np.array(
            [[im.get("height", np.nan), im.get("width", np.nan)] for im in images], dtype=np.float64
        ).reshape(-1, 2)  # [I, 2] (h, w)
        self._check_files_exist()
        self._boxes, self._labels = self._build_targets(dataset["annotations"])

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def portrait(self) -> np.ndarray:
        """bool [I]: taller than wide, from the json's sizes (False where they are absent)."""
        return self._json_sizes[:, 0] > self._json_sizes[:, 1]

    def __getitem__(self, index: int) -> dict:
        path, image_id = self._paths[index], self.image_ids[index]
        # IGNORE_ORIENTATION: annotations are in stored-pixel coordinates, so EXIF rotation must not apply.
        image = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if image is None:
            raise RuntimeError(f"cannot read image {path!r} (image id {image_id}, from {self.annotations_file})")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # [H, W, 3] uint8
        height, width = image.shape[:2]
        boxes, labels = self._boxes[index], self._labels[index]
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
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def _check_files_exist(self) -> None:
        missing = [p for p in self._paths if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(self._paths)} images listed in {self.annotations_file} are missing, "
                f"e.g. {missing[:_SHOW_IDS]}"
            )

    def _build_targets(self, annotations: list[dict]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Clean all annotations at once; return per-image boxes [N_i, 4] float32 and labels [N_i] int64."""
        num_images = len(self.image_ids)
        if not annotations:
            empty_boxes = [np.zeros((0, 4), np.float32) for _ in range(num_images)]
            return empty_boxes, [np.zeros(0, np.int64) for _ in range(num_images)]

        ann_ids = np.array([a.get("id", -1) for a in annotations], dtype=np.int64)  # [A]
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in annotations])  # [A]
        bbox = np.array([_as_xywh(a.get("bbox")) for a in annotations], dtype=np.float64)  # [A, 4] xywh
        image_index_of = {image_id: i for i, image_id in enumerate(self.image_ids)}
        image_index = np.array([image_index_of.get(a.get("image_id"), -1) for a in annotations])  # [A]
        label = np.array([self.cat_id_to_label.get(a.get("category_id"), -1) for a in annotations])  # [A]

        xyxy = np.concatenate([bbox[:, :2], bbox[:, :2] + bbox[:, 2:]], axis=1)  # [A, 4]
        finite = np.isfinite(xyxy).all(axis=1) & (bbox[:, 2:] >= 0).all(axis=1)
        # Clip to the json size; where it is absent (NaN) clip below at 0 only, the rest at load time.
        sizes = self._json_sizes[np.maximum(image_index, 0)]  # [A, 2] (h, w)
        upper = np.where(np.isnan(sizes[:, ::-1]), np.inf, sizes[:, ::-1])  # [A, 2] (w, h)
        clipped = np.clip(xyxy, 0.0, np.tile(upper, 2))  # [A, 4]
        was_clipped = finite & (np.abs(clipped - xyxy) > 1e-6).any(axis=1)
        big_enough = ((clipped[:, 2:] - clipped[:, :2]) >= 1.0).all(axis=1)

        bad_image = image_index < 0
        bad_category = label < 0
        degenerate = ~finite | ~big_enough
        keep = ~crowd & ~bad_image & ~bad_category & ~degenerate
        self._warn_cleaning(ann_ids, ~crowd, bad_image, bad_category, degenerate, was_clipped & keep)

        # Group kept annotations by image: stable sort keeps json order within an image.
        kept = np.flatnonzero(keep)
        kept = kept[np.argsort(image_index[kept], kind="stable")]
        splits = np.searchsorted(image_index[kept], np.arange(1, num_images))  # [I-1]
        boxes = np.split(clipped[kept].astype(np.float32), splits)
        labels = np.split(label[kept].astype(np.int64), splits)
        return boxes, labels

    def _warn_cleaning(self, ann_ids, considered, bad_image, bad_category, degenerate, clipped) -> None:
        """One summarised warning for everything repaired or dropped in this dataset."""
        parts = []
        for name, mask in (
            ("with an image id not in 'images'", considered & bad_image),
            ("with a category id not in 'categories'", considered & ~bad_image & bad_category),
            ("with a degenerate box (non-finite, negative size, or < 1 px after clipping)",
             considered & ~bad_image & ~bad_category & degenerate),
        ):
            if mask.any():
                parts.append(f"dropped {int(mask.sum())} annotations {name}, ids {ann_ids[mask][:_SHOW_IDS].tolist()}")
        if clipped.any():
            parts.append(f"clipped {int(clipped.sum())} boxes to their image, ids {ann_ids[clipped][:_SHOW_IDS].tolist()}")
        if parts:
            warnings.warn(f"{self.annotations_file}: " + "; ".join(parts), stacklevel=4)


def _load_json(annotations_file: str) -> dict:
    if not os.path.isfile(annotations_file):
        raise FileNotFoundError(f"annotations file {annotations_file!r} does not exist")
    try:
        with open(annotations_file) as f:
            dataset = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"annotations file {annotations_file!r} is not valid json: {error}") from error
    if not isinstance(dataset, dict):
        raise ValueError(f"annotations file {annotations_file!r} must hold a json object, got {type(dataset).__name__}")
    missing = [key for key in ("images", "annotations", "categories") if key not in dataset]
    if missing:
        raise ValueError(f"annotations file {annotations_file!r} has no {missing} (not COCO detection format)")
    return dataset


def _as_xywh(bbox) -> list[float]:
    """A json bbox as 4 floats; anything malformed becomes NaNs (dropped as degenerate)."""
    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError):
        return [np.nan] * 4
    return values if len(values) == 4 else [np.nan] * 4


def _clip_to_size(boxes: np.ndarray, labels: np.ndarray, width: int, height: int):
    """Clip xyxy boxes [N, 4] to a width x height image and drop those left < 1 px wide or tall."""
    clipped = np.clip(boxes, 0.0, np.array([width, height, width, height], dtype=np.float32))
    keep = ((clipped[:, 2:] - clipped[:, :2]) >= 1.0).all(axis=1)
    return clipped[keep], labels[keep]
