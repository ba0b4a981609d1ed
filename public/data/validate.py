"""One validation pass over a COCO-format json and its image folder.

Used by `CocoDetection` (so by every training run, `--evaluate` and `test.py`) and by the
dataset check command (`python -m tools.check_dataset`). It reads the json once, every image's
header (size and format) and its last bytes (JPEG end marker / PNG IEND chunk, the cheap sign of
a truncated file), and returns:

- the problems, grouped by kind and counted, each naming the file / image id / annotation id,
  with a severity: **fatal** (training or evaluation would fail or be meaningless: stop before
  the first step) or **repaired** (fixed here, reported in one summary warning);
- the cleaned training targets (per image: boxes xyxy float32 [N, 4], labels int64 [N]);
- the cleaned ground truth for COCOeval (the same boxes, plus crowd boxes as crowd, every
  annotation with a numeric `bbox`, an `area` and a unique `id`), so evaluation scores exactly
  what training learns from.

Fatal: the json missing, malformed or without images/annotations/categories lists; no
categories, or category ids that are not unique integers; image entries without an integer
`id` or a `file_name`; duplicate image ids; one file listed under two image ids; image files
missing, empty (0 bytes), unreadable, in a format OpenCV cannot read, truncated, or of a size
other than the json's `width`/`height`; no usable box in the whole json.

Repaired: boxes with a coordinate string that parses as a number (converted); boxes clipped to
their image; boxes dropped when malformed, non-finite, of zero or negative size, or under 1 px
after clipping; annotations dropped whose image or category is not in the json; a missing or
non-numeric `area` computed from the box; a missing or duplicate annotation `id` given a new
one; an image's missing `width`/`height` read from its file.
"""
from __future__ import annotations

import itertools
import json
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from public.data import validation_cache as _cache

FATAL, REPAIRED = "fatal", "repaired"
SHOW = 5                      # how many offending ids / files a message lists
CHECK_IMAGES = ("header", "decode", "off")
# PIL format names of the files OpenCV's imread decodes (the loader reads with OpenCV).
OPENCV_FORMATS = {"JPEG", "PNG", "BMP", "TIFF", "WEBP", "PPM", "JPEG2000", "SUN", "DIB", "AVIF"}
_TAIL_BYTES = 1024            # how much of a file's end is read for the end-marker check


class DatasetError(ValueError):
    """A dataset problem that would make training or evaluation fail; the message lists them all."""


@dataclass
class ProblemGroup:
    """One kind of problem and every place it occurs."""
    severity: str             # FATAL or REPAIRED
    what: str                 # e.g. "annotations with a box outside the image, clipped to it"
    items: list[str]          # e.g. ["annotation id 7 (image id 3)", ...]
    fix: str = ""             # what the user can do

    def format(self) -> str:
        shown = ", ".join(self.items[:SHOW])
        more = f" and {len(self.items) - SHOW} more" if len(self.items) > SHOW else ""
        fix = f" ({self.fix})" if self.fix else ""
        return f"{self.what} ({len(self.items)}): {shown}{more}{fix}"


@dataclass
class Validation:
    """Result of `validate_coco`. Targets and ground truth are filled (``cleaned``) when there is
    nothing fatal in the json itself (image-file problems still leave them filled).

    Lean by design: a few flat NumPy arrays and no parsed json, so that a COCO-sized set (118k
    images, 860k boxes) costs tens of MB and data-loader workers forked from the process share
    it without copying it (per-object Python structures are copied page by page as workers
    touch them). The ground truth dict and the pycocotools COCO object are built on demand
    from the arrays (``ground_truth``, ``coco()``): the evaluator's set only."""
    annotations_file: str
    images_dir: str
    groups: list[ProblemGroup] = field(default_factory=list)
    image_ids: list[int] = field(default_factory=list)        # sorted
    file_names: np.ndarray | list = field(default_factory=list)  # per image, as in the json (str [I] once cleaned)
    sizes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [I, 2] (h, w), NaN where unknown
    category_ids: list[int] = field(default_factory=list)      # sorted
    class_names: list[str] = field(default_factory=list)       # per category id
    categories: list[dict] = field(default_factory=list)       # the json's category entries, sorted by id
    # Training targets, flat: image i's are rows target_offsets[i]:target_offsets[i + 1], in json order.
    target_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # [T, 4] xyxy
    target_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))        # [T] 0..C-1
    target_offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))       # [I + 1]
    # Ground truth for COCOeval, flat, one row per kept annotation in json order (crowd included).
    gt_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))               # [G] unique ids
    gt_image_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))       # [G] into image_ids
    gt_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))            # [G] 0..C-1
    gt_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))                  # [G, 4] xywh float64
    gt_areas: np.ndarray = field(default_factory=lambda: np.zeros(0))                       # [G] float64
    gt_crowd: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))                 # [G]
    gt_ignore: dict[int, object] = field(default_factory=dict)  # row -> the json's "ignore" value, where given
    num_crowd: int = 0
    cleaned: bool = False

    @property
    def boxes(self) -> list[np.ndarray]:
        """Per image: float32 [N_i, 4] xyxy (views of ``target_boxes``)."""
        return np.split(self.target_boxes, self.target_offsets[1:-1]) if len(self.image_ids) else []

    @property
    def labels(self) -> list[np.ndarray]:
        """Per image: int64 [N_i] (views of ``target_labels``)."""
        return np.split(self.target_labels, self.target_offsets[1:-1]) if len(self.image_ids) else []

    @property
    def ground_truth(self) -> dict | None:
        """The cleaned COCO dict for COCOeval, built from the arrays (None unless ``cleaned``):
        images (id, file_name, height, width where known), annotations (id, image_id,
        category_id, bbox xywh, area, iscrowd, and "ignore" where the json gave one), categories."""
        if not self.cleaned:
            return None
        images = []
        for image_id, name, (h, w) in zip(self.image_ids, self.file_names, self.sizes.tolist()):
            entry = {"id": image_id, "file_name": str(name)}
            if math.isfinite(h) and math.isfinite(w):
                entry.update(height=int(h), width=int(w))
            images.append(entry)
        image_ids = np.asarray(self.image_ids, dtype=np.int64)
        annotations = [{"id": ann_id, "image_id": image_id, "category_id": cat_id, "bbox": bbox, "area": area,
                        "iscrowd": crowd}
                       for ann_id, image_id, cat_id, bbox, area, crowd in zip(
                           self.gt_ids.tolist(), image_ids[self.gt_image_index].tolist(),
                           np.asarray(self.category_ids, dtype=np.int64)[self.gt_labels].tolist(),
                           self.gt_boxes.tolist(), self.gt_areas.tolist(), self.gt_crowd.astype(int).tolist())]
        for row, value in self.gt_ignore.items():
            annotations[row]["ignore"] = value
        return {"images": images, "annotations": annotations, "categories": [dict(c) for c in self.categories]}

    def add(self, severity: str, what: str, items: list[str], fix: str = "") -> None:
        if items:
            self.groups.append(ProblemGroup(severity, what, list(items), fix))

    @property
    def fatal(self) -> list[ProblemGroup]:
        return [g for g in self.groups if g.severity == FATAL]

    @property
    def repaired(self) -> list[ProblemGroup]:
        return [g for g in self.groups if g.severity == REPAIRED]

    def fatal_message(self) -> str:
        lines = [f"{self.annotations_file} (images in {self.images_dir}): training would fail:"]
        lines += [f"  - {g.format()}" for g in self.fatal]
        return "\n".join(lines)

    def repair_message(self) -> str:
        """One summary of everything repaired, or "" when nothing was."""
        if not self.repaired:
            return ""
        lines = [f"{self.annotations_file}: repaired, training and evaluation use the repaired data:"]
        lines += [f"  - {g.format()}" for g in self.repaired]
        return "\n".join(lines)

    def raise_if_fatal(self) -> None:
        if self.fatal:
            raise DatasetError(self.fatal_message())

    def coco(self):
        """The cleaned ground truth as a pycocotools COCO object (the one to give COCOeval)."""
        import contextlib
        import io

        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = self.ground_truth
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        return coco


def validate_coco(images_dir: str, annotations_file: str, check_images: str = "header") -> Validation:
    """Validate a COCO json and its image folder; never raises for a data problem (see `Validation`).

    Args:
        images_dir: folder that each image's `file_name` is relative to.
        annotations_file: the COCO json.
        check_images: "header" (size and format from the file header, truncation from its end
            marker), "decode" (also decode every image fully, as the loader will), "off" (no
            file is opened; sizes come from the json).
    """
    if check_images not in CHECK_IMAGES:
        raise ValueError(f"check_images must be one of {CHECK_IMAGES}, got {check_images!r}")
    report = Validation(str(annotations_file), str(images_dir))
    cached = _cache.load(report, check_images)
    if cached is not None:
        return cached
    _validate(report, images_dir, annotations_file, check_images)
    # The parsed json is gone now: the few Python objects kept are made afresh (not the json's own,
    # which would keep its memory pages from being freed).
    report.image_ids = np.asarray(report.image_ids, dtype=np.int64).tolist()
    report.file_names = np.array([str(name) for name in report.file_names], dtype=str)  # [I] str
    _cache.save(report, check_images)
    return report


def _validate(report: Validation, images_dir: str, annotations_file: str, check_images: str) -> None:
    dataset = _load_json(report)
    if dataset is None:
        return
    _convert_numeric_string_ids(report, dataset)
    categories = _check_categories(report, dataset["categories"])
    images = _check_images_entries(report, dataset["images"])
    if categories is None or images is None:
        return
    report.categories = categories
    report.category_ids = [c["id"] for c in categories]
    report.class_names = [str(c.get("name", c["id"])) for c in categories]
    report.image_ids = [im["id"] for im in images]
    report.file_names = [im["file_name"] for im in images]
    report.sizes = np.array([[_number(im.get("height")), _number(im.get("width"))] for im in images],
                            dtype=np.float64).reshape(-1, 2)      # [I, 2] (h, w)
    if not os.path.isdir(images_dir):
        report.add(FATAL, "images folder does not exist", [repr(str(images_dir))],
                   f"check the images path given with {annotations_file}")
    elif check_images != "off":
        _check_image_files(report, check_images)
    _clean_annotations(report, dataset, images, categories)


def check_same_classes(train: Validation | object, val: Validation | object,
                       train_file: str, val_file: str) -> None:
    """Train and val must share category ids and names; raise DatasetError naming both files."""
    if list(train.category_ids) != list(val.category_ids):
        raise DatasetError(f"categories differ between {train_file} (ids {list(train.category_ids)}) and "
                           f"{val_file} (ids {list(val.category_ids)}): both jsons need the same 'categories'")
    renamed = [f"id {cid}: {a!r} vs {b!r}" for cid, a, b in
               zip(train.category_ids, train.class_names, val.class_names) if a != b]
    if renamed:
        raise DatasetError(f"category names differ between {train_file} and {val_file} for the same ids "
                           f"({'; '.join(renamed[:SHOW])}{' ...' if len(renamed) > SHOW else ''}): the ids "
                           f"mean different classes in the two files; give both jsons the same 'categories'")


# ---- the json ------------------------------------------------------------------------------
def _load_json(report: Validation) -> dict | None:
    path = report.annotations_file
    if not os.path.isfile(path):
        report.add(FATAL, "annotations file does not exist", [repr(path)], "check the path")
        return None
    try:
        with open(path) as f:
            dataset = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        report.add(FATAL, "annotations file is not valid json", [f"{path!r}: {error}"])
        return None
    if not isinstance(dataset, dict):
        report.add(FATAL, "annotations file does not hold a json object",
                   [f"{path!r} holds a {type(dataset).__name__}"])
        return None
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(dataset.get(key), list)]
    if missing:
        report.add(FATAL, "annotations file lacks lists of COCO detection format",
                   [f"{path!r} has no list {missing}"], "a COCO json has 'images', 'annotations' and 'categories'")
        return None
    return dataset


# Where a json holds ids: (list, key) pairs, with how a repair names the entry.
_ID_FIELDS = (("categories", "id", "category"), ("images", "id", "image"), ("annotations", "id", "annotation"),
              ("annotations", "image_id", "annotation"), ("annotations", "category_id", "annotation"))


def _convert_numeric_string_ids(report: Validation, dataset: dict) -> None:
    """Ids written as numeric strings ("3") become ints, as numeric-string boxes become numbers,
    consistently for image, category and annotation ids; one repair line names each entry. Other
    strings stay, and the checks after this refuse or repair them naming the entry."""
    converted = []
    for section, key, what in _ID_FIELDS:
        for i, entry in enumerate(dataset.get(section) or []):
            value = entry.get(key) if isinstance(entry, dict) else None
            if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
                entry[key] = int(value)
                converted.append(f"{what} #{i}: {key} {value!r}")
    report.add(REPAIRED, "ids written as strings, converted to integers", converted)


def _check_categories(report: Validation, categories: list) -> list[dict] | None:
    if not categories:
        report.add(FATAL, "no categories: the json's 'categories' list is empty", ["'categories': []"],
                   "list every class as {\"id\": int, \"name\": str}")
        return None
    bad = [f"category #{i} {c!r}" for i, c in enumerate(categories)
           if not isinstance(c, dict) or not _is_int(c.get("id"))]
    report.add(FATAL, "categories without an integer 'id'", bad)
    if bad:
        return None
    counts = Counter(c["id"] for c in categories)
    report.add(FATAL, "duplicate category ids", [f"category id {cid} ({n} times)" for cid, n in counts.items() if n > 1])
    if any(n > 1 for n in counts.values()):
        return None
    return sorted(categories, key=lambda c: c["id"])


def _check_images_entries(report: Validation, images: list) -> list[dict] | None:
    bad = [f"image #{i} {str(im)[:80]}" for i, im in enumerate(images)
           if not isinstance(im, dict) or not _is_int(im.get("id")) or not isinstance(im.get("file_name"), str)]
    report.add(FATAL, "image entries without an integer 'id' and a 'file_name'", bad)
    if bad:
        return None
    counts = Counter(im["id"] for im in images)
    duplicates = {i for i, n in counts.items() if n > 1}
    report.add(FATAL, "duplicate image ids", [
        f"image id {i} ({', '.join(im['file_name'] for im in images if im['id'] == i)})" for i in sorted(duplicates)
    ], "give every image its own id")
    by_file: dict[str, list[int]] = {}
    for im in images:
        by_file.setdefault(os.path.normpath(im["file_name"]), []).append(im["id"])
    report.add(FATAL, "files listed under more than one image id", [
        f"{name} (image ids {ids})" for name, ids in by_file.items() if len(ids) > 1
    ], "list each file once; its boxes would count as missed objects under the other id")
    if duplicates:
        return None
    return sorted(images, key=lambda im: im["id"])


# ---- the image files -----------------------------------------------------------------------
def _check_image_files(report: Validation, check_images: str) -> None:
    """Read every image's header and tail (threads: this is file I/O), or decode it fully."""
    paths = [os.path.join(report.images_dir, name) for name in report.file_names]
    decode = check_images == "decode"
    workers = min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda p: _inspect_image(p, decode), paths, chunksize=64))
    problems: dict[str, list[str]] = {}
    missing_size = []
    for i, (status, detail, size) in enumerate(results):
        where = f"image id {report.image_ids[i]} ({report.file_names[i]})"
        if status != "ok":
            problems.setdefault(status, []).append(f"{where}: {detail}" if detail else where)
            continue
        json_h, json_w = report.sizes[i]
        if np.isnan(json_h) or np.isnan(json_w):
            report.sizes[i] = size
            missing_size.append(where)
        elif (json_h, json_w) != size:
            rotated = " (EXIF rotation: the json has the rotated size, the loader reads the stored pixels)" \
                if (json_h, json_w) == size[::-1] and detail else ""
            problems.setdefault("size", []).append(
                f"{where}: {size[1]}x{size[0]} in the file, {int(json_w)}x{int(json_h)} in the json{rotated}")
    names = {
        "missing": ("image files that do not exist", "check images_dir and file_name"),
        "empty": ("image files of 0 bytes", "copy them again"),
        "unreadable": ("image files that cannot be read as images", "replace or remove them"),
        "format": ("image files in a format OpenCV cannot read", "convert them to JPEG or PNG"),
        "truncated": ("truncated image files", "copy them again, or remove them from the json"),
        "size": ("images whose size differs from the json's width/height",
                 "fix width/height in the json, or remove them to have them read from the file"),
    }
    for status, (what, fix) in names.items():
        report.add(FATAL, what, problems.get(status, []), fix)
    report.add(REPAIRED, "images without width/height in the json, read from the file", missing_size)


def _inspect_image(path: str, decode: bool) -> tuple[str, str, tuple[int, int] | None]:
    """(status, detail, (h, w)) of one file; status "ok" or a problem kind. The detail of an "ok"
    file is "rotated" when its EXIF orientation swaps width and height."""
    from PIL import Image, UnidentifiedImageError

    try:
        num_bytes = os.path.getsize(path)
    except OSError:
        return "missing", "", None
    if num_bytes == 0:
        return "empty", "", None
    try:
        image = Image.open(path)
    except UnidentifiedImageError:
        return "unreadable", "not an image file", None
    except OSError as error:
        return "unreadable", str(error), None
    with image:
        width, height = image.size
        if image.format not in OPENCV_FORMATS:
            return "format", str(image.format), None
        rotated = image.format == "JPEG" and image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        complete = _has_end_marker(path, image.format, num_bytes)
        if not complete or decode:
            try:
                image.load()  # raises OSError on a truncated file
            except (OSError, SyntaxError, ValueError) as error:
                kind = "truncated" if not complete or "truncated" in str(error) else "unreadable"
                return kind, str(error), None
    if decode or not complete:  # the loader's own decoder must read it too
        import cv2

        if cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) is None:
            return ("unreadable" if complete else "truncated"), "OpenCV cannot decode it", None
    return "ok", "rotated" if rotated else "", (height, width)


def _has_end_marker(path: str, fmt: str, num_bytes: int) -> bool:
    """JPEG ends with FFD9 and PNG with its IEND chunk (trailing zero padding allowed); other
    formats have no cheap check and pass."""
    if fmt not in ("JPEG", "PNG"):
        return True
    with open(path, "rb") as f:
        f.seek(max(0, num_bytes - _TAIL_BYTES))
        tail = f.read().rstrip(b"\x00")
    return tail.endswith(b"\xff\xd9") if fmt == "JPEG" else tail.endswith(b"IEND\xaeB`\x82")


# ---- the annotations -----------------------------------------------------------------------
def _clean_annotations(report: Validation, dataset: dict, images: list[dict], categories: list[dict]) -> None:
    """Fill the targets and the cleaned ground truth; record every repair."""
    annotations = dataset["annotations"]
    not_dicts = [f"annotation #{i}" for i, a in enumerate(annotations) if not isinstance(a, dict)]
    report.add(REPAIRED, "annotations that are not json objects, dropped", not_dicts)
    annotations = [a for a in annotations if isinstance(a, dict)]
    num_images = len(report.image_ids)
    count = len(annotations)

    # Ids: keep unique integer ids; give the others new ones above the largest.
    raw_ids = [a.get("id") for a in annotations]
    ann_ids, valid_id, duplicate_id = _unique_ids(raw_ids)  # [A] int64, [A] bool, [A] bool

    def name(k: int) -> str:
        return f"annotation id {ann_ids[k]}" if valid_id[k] and not duplicate_id[k] else f"annotation #{k}"

    image_index = _lookup([a.get("image_id") for a in annotations], report.image_ids)  # [A], -1: not in images
    label = _lookup([a.get("category_id") for a in annotations], report.category_ids)  # [A], -1: unknown
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in annotations], dtype=bool)  # [A]
    xywh, from_strings, malformed = _parse_boxes([a.get("bbox") for a in annotations])  # [A, 4], [A], [A]

    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)  # [A, 4]
    finite = np.isfinite(xyxy).all(axis=1)
    positive = finite & (xywh[:, 2:] > 0).all(axis=1)
    sizes = report.sizes[np.maximum(image_index, 0)] if num_images else np.full((count, 2), np.nan)  # [A, 2] (h, w)
    upper = np.where(np.isnan(sizes[:, ::-1]), np.inf, sizes[:, ::-1])  # [A, 2] (w, h)
    clipped = np.clip(xyxy, 0.0, np.tile(upper, 2)) if count else xyxy  # [A, 4]
    big_enough = ((clipped[:, 2:] - clipped[:, :2]) >= 1.0).all(axis=1)
    was_clipped = positive & big_enough & (np.abs(clipped - xyxy) > 1e-6).any(axis=1)

    bad_image = image_index < 0
    bad_category = ~bad_image & (label < 0)
    known = ~bad_image & ~bad_category
    dropped_malformed = known & malformed
    dropped_nonfinite = known & ~malformed & ~finite
    dropped_nonpositive = known & finite & ~positive
    dropped_small = known & positive & ~big_enough
    kept = known & positive & big_enough        # in the ground truth (crowd included)
    train = kept & ~crowd                        # in the training targets

    def where(mask):
        return [f"{name(k)} (image id {annotations[k].get('image_id')!r})" for k in np.flatnonzero(mask)]

    report.add(REPAIRED, "annotations of an image id not in 'images', dropped", where(bad_image),
               "add the image or remove the annotation")
    report.add(REPAIRED, "annotations of a category id not in 'categories', dropped",
               [f"{s}: category id {annotations[k].get('category_id')!r}" for s, k in
                zip(where(bad_category), np.flatnonzero(bad_category))])
    report.add(REPAIRED, "annotations with a malformed bbox (not 4 numbers), dropped",
               [f"{s}: {annotations[k].get('bbox')!r}" for s, k in
                zip(where(dropped_malformed), np.flatnonzero(dropped_malformed))])
    report.add(REPAIRED, "annotations with a NaN or infinite bbox coordinate, dropped", where(dropped_nonfinite))
    report.add(REPAIRED, "annotations with a zero or negative width or height, dropped", where(dropped_nonpositive))
    report.add(REPAIRED, "annotations outside their image or under 1 px once clipped to it, dropped",
               where(dropped_small))
    report.add(REPAIRED, "annotations with a box partly outside their image, clipped to it", where(was_clipped))
    report.add(REPAIRED, "annotations with bbox coordinates as strings, converted to numbers",
               where(kept & from_strings))

    # Ground truth: what COCOeval sees, the same boxes as training plus crowd (ignored) regions.
    clipped_xywh = np.concatenate([clipped[:, :2], clipped[:, 2:] - clipped[:, :2]], axis=1)  # [A, 4]
    box_area = clipped_xywh[:, 2] * clipped_xywh[:, 3]
    raw_area = _numbers([a.get("area") for a in annotations])  # [A], NaN where absent or not a number
    no_area = ~np.isfinite(raw_area) | (raw_area < 0)
    report.add(REPAIRED, "annotations without a numeric 'area', computed from the box", where(kept & no_area))
    report.add(REPAIRED, "annotations without an integer 'id', given a new one",
               [f"annotation #{k} (image id {annotations[k].get('image_id')}): id {ann_ids[k]}"
                for k in np.flatnonzero(kept & ~valid_id)])
    report.add(REPAIRED, "annotations with a duplicate 'id', given a new one",
               [f"annotation #{k} (id {raw_ids[k]}, image id {annotations[k].get('image_id')}): id {ann_ids[k]}"
                for k in np.flatnonzero(kept & duplicate_id)])
    # A clipped box's area cannot exceed the clipped box (a segment area outside the image is gone).
    area = np.where(no_area, box_area, np.where(was_clipped, np.minimum(raw_area, box_area), raw_area))
    kept_index = np.flatnonzero(kept)
    report.gt_ids = ann_ids[kept]
    report.gt_image_index = image_index[kept]
    report.gt_labels = label[kept]
    report.gt_boxes = clipped_xywh[kept]
    report.gt_areas = area[kept]
    report.gt_crowd = crowd[kept]
    report.gt_ignore = {row: annotations[k]["ignore"] for row, k in enumerate(kept_index.tolist())
                        if "ignore" in annotations[k]}

    # Targets per image: stable sort keeps json order within an image.
    order = np.flatnonzero(train)
    order = order[np.argsort(image_index[order], kind="stable")]
    report.target_boxes = clipped[order].astype(np.float32)                          # [T, 4]
    report.target_labels = label[order].astype(np.int64)                             # [T]
    report.target_offsets = np.searchsorted(image_index[order], np.arange(num_images + 1))  # [I + 1]
    report.num_crowd = int((kept & crowd).sum())
    report.cleaned = True
    if num_images and not train.any():
        why = ("the json has no annotations" if count == 0 else
               f"all {count} annotations were dropped or are crowd (see above)")
        report.add(FATAL, "no usable boxes: nothing to train on or score against",
                   [f"{report.annotations_file}: {why}"], "annotate at least one object")
    if not num_images:
        report.add(FATAL, "no images: the json's 'images' list is empty", [f"{report.annotations_file}"])


def _unique_ids(raw_ids: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Annotation ids [A] int64 with a new id (above the largest) for each missing, non-integer
    or repeated one; also which were valid integers and which repeated an earlier one."""
    count = len(raw_ids)
    valid = np.array([_is_int(i) for i in raw_ids], dtype=bool) if set(map(type, raw_ids)) != {int} \
        else np.ones(count, dtype=bool)
    ids = np.array([i if ok else 0 for i, ok in zip(raw_ids, valid)], dtype=np.int64)  # [A]
    duplicate = np.zeros(count, dtype=bool)
    valid_at = np.flatnonzero(valid)
    _, first = np.unique(ids[valid_at], return_index=True)
    duplicate[valid_at] = True
    duplicate[valid_at[first]] = False                 # the first of each id keeps it
    renumber = ~valid | duplicate
    start = int(ids[valid].max()) + 1 if valid.any() else 1
    ids[renumber] = np.arange(start, start + int(renumber.sum()))
    return ids, valid, duplicate


def _lookup(values: list, keys: list[int]) -> np.ndarray:
    """Index [A] int64 of each value in ``keys`` (sorted unique ints); -1 where absent or not an int."""
    keys_arr = np.asarray(keys, dtype=np.int64)
    if set(map(type, values)) <= {int}:
        arr = np.asarray(values, dtype=np.int64).reshape(-1)
    else:
        ok = [_is_int(v) for v in values]
        arr = np.array([v if good else 0 for v, good in zip(values, ok)], dtype=np.int64).reshape(-1)
        arr[~np.asarray(ok, dtype=bool)] = np.iinfo(np.int64).min  # matches no key
    if keys_arr.size == 0:
        return np.full(len(arr), -1, dtype=np.int64)
    index = np.clip(np.searchsorted(keys_arr, arr), 0, len(keys_arr) - 1)
    return np.where(keys_arr[index] == arr, index, -1)


def _parse_boxes(raw: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """json bboxes -> (xywh [A, 4] float64, converted from strings [A], malformed [A]); a
    malformed box is NaNs. One numpy conversion when every box is 4 json numbers."""
    try:
        if set(map(type, itertools.chain.from_iterable(raw))) <= {int, float}:
            arr = np.array(raw, dtype=np.float64)
            if arr.shape == (len(raw), 4):
                return arr, np.zeros(len(raw), dtype=bool), np.zeros(len(raw), dtype=bool)
    except (TypeError, ValueError):
        pass
    parsed = [_parse_box(b) for b in raw]
    xywh = np.array([p[0] for p in parsed], dtype=np.float64).reshape(-1, 4)
    return xywh, np.array([p[1] for p in parsed], dtype=bool), np.array([p[2] for p in parsed], dtype=bool)


def _numbers(values: list) -> np.ndarray:
    """json values [A] -> float64 [A]; NaN where absent or not a number."""
    if set(map(type, values)) <= {int, float}:
        return np.asarray(values, dtype=np.float64).reshape(-1)
    return np.array([_number(v) for v in values], dtype=np.float64).reshape(-1)


def _parse_box(bbox) -> tuple[list[float], bool, bool]:
    """(4 floats or NaNs, whether strings were converted, whether it is malformed)."""
    if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
            return [float(v) for v in bbox], False, False
        try:
            return [float(v) for v in bbox], any(isinstance(v, str) for v in bbox), False
        except (TypeError, ValueError):
            pass
    return [math.nan] * 4, False, True


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> float:
    """A json number (or a numeric string) as float; NaN when absent or not a number."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
