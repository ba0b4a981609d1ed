"""Built-in demo dataset: coloured shapes on textured backgrounds, in COCO format.

The default job trains on it, so it must be learnable from random init in a few CPU
minutes: shapes are solid fills with sharp (non anti-aliased) edges, each class differs
from the others by both shape and base colour, and the background is low-contrast
texture so it is never mistaken for an object. It is generated deterministically from a
seed on first use (a few seconds for 300 images) into `data/demo/` (git-ignored).

Layout (the same for every built-in dataset: the helpers below write it, atomically, for
this one and for the tree crowns of public/data/crowns.py)::

    data/demo/train/000000.png ...
    data/demo/val/000000.png ...
    data/demo/annotations/instances_train.json
    data/demo/annotations/instances_val.json
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

DEMO_ROOT: Path = Path(__file__).resolve().parents[2] / "data" / "demo"
DEMO_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
# Deliberately non-contiguous, so the id <-> label mapping is exercised on every demo run.
DEMO_CATEGORY_IDS: tuple[int, ...] = (3, 7, 12, 40, 90)
# Base colour of each class (RGB); every object jitters it by up to +-COLOUR_JITTER per channel.
DEMO_COLOURS: tuple[tuple[int, int, int], ...] = (
    (220, 40, 40),    # circle: red
    (40, 190, 60),    # square: green
    (40, 80, 230),    # triangle: blue
    (235, 210, 30),   # cross: yellow
    (200, 40, 210),   # ring: magenta
)
COLOUR_JITTER = 20

IMAGE_SIDE_RANGE = (128, 192)   # width and height are each drawn uniformly from this range
OBJECT_SIZE_RANGE = (10, 100)   # object side in pixels, log-uniform (as many small as large)
MAX_OBJECTS = 6
NEGATIVE_FRACTION = 0.03        # images with no objects at all
MIN_VISIBLE_FRACTION = 0.7      # a later object may hide at most 30% of an earlier one
PLACEMENT_TRIES = 20


# ---- shared by the built-in datasets (this one and public/data/crowns.py) --------------------
# One drawn image: RGB uint8 [H, W, 3] and its objects [(class_index, (x1, y1, x2, y2)), ...],
# boxes in pixels with x2/y2 exclusive.
DrawnImage = tuple[np.ndarray, list]


def builtin_paths(root: str | os.PathLike) -> dict[str, str]:
    """Paths of a built-in dataset's image folders and annotation files under `root` (the
    layout in this module's docstring)."""
    root = Path(root)
    return {
        "train_images": str(root / "train"),
        "train_annotations": str(root / "annotations" / "instances_train.json"),
        "val_images": str(root / "val"),
        "val_annotations": str(root / "annotations" / "instances_val.json"),
    }


def ensure_generated(root: str | os.PathLike, generate: Callable[[Path], None]) -> dict[str, str]:
    """Run `generate(folder)` to make a built-in dataset under `root` unless its annotation
    files already exist.

    The dataset is written to a temporary sibling folder and renamed into place, so a crash
    never leaves half a dataset and two concurrent processes (e.g. DDP ranks) both end up
    with one complete copy. An existing dataset is reused as is, whatever it was made with;
    delete the folder to regenerate.

    Returns:
        `builtin_paths(root)`.
    """
    root = Path(root)
    paths = builtin_paths(root)
    if _is_complete(paths):
        return paths
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-tmp-", dir=root.parent))
    try:
        generate(tmp)
        try:
            os.replace(tmp, root)  # atomic; succeeds when `root` is absent or an empty dir
        except OSError:
            if _is_complete(paths):  # another process won the race: keep its copy
                return paths
            # A stale, incomplete `root` from an older crash: move it aside, then retry.
            stale = Path(tempfile.mkdtemp(prefix=f".{root.name}-stale-", dir=root.parent))
            os.replace(root, stale / root.name)
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return paths


def _is_complete(paths: dict[str, str]) -> bool:
    return os.path.isfile(paths["train_annotations"]) and os.path.isfile(paths["val_annotations"])


def write_builtin_data(
    root: str | os.PathLike, num_train: int, num_val: int, seed: int,
    draw_split: Callable[[np.random.Generator, int], Iterable[DrawnImage]],
    category_ids: tuple[int, ...], class_names: tuple[str, ...], description: str,
) -> None:
    """Write `num_train` + `num_val` images drawn by `draw_split(rng, count)` and their COCO
    json files under `root`.

    Each split has its own random stream derived from `seed`, so the val set does not
    change when `num_train` does. Same arguments -> byte-identical files.
    """
    paths = builtin_paths(root)
    os.makedirs(Path(paths["train_annotations"]).parent, exist_ok=True)
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        rng = np.random.default_rng([seed, split_index])
        images_dir = Path(paths[f"{split}_images"])
        images_dir.mkdir(parents=True, exist_ok=True)
        dataset = _write_split(draw_split(rng, count), images_dir, category_ids, class_names, description)
        with open(paths[f"{split}_annotations"], "w") as f:
            json.dump(dataset, f)


def _write_split(drawn: Iterable[DrawnImage], images_dir: Path, category_ids: tuple[int, ...],
                 class_names: tuple[str, ...], description: str) -> dict:
    """Save each drawn image as `images_dir/000000.png`, ...; return the split's COCO dict."""
    images, annotations = [], []
    for index, (image, objects) in enumerate(drawn):
        height, width = image.shape[:2]
        image_id = index + 1
        file_name = f"{index:06d}.png"
        cv2.imwrite(str(images_dir / file_name), image[:, :, ::-1])  # RGB -> BGR
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for class_index, (x1, y1, x2, y2) in objects:
            w, h = x2 - x1, y2 - y1
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category_ids[class_index],
                "bbox": [float(x1), float(y1), float(w), float(h)],
                "area": float(w * h),
                "iscrowd": 0,
            })
    return {
        "info": {"description": description},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name} for cid, name in zip(category_ids, class_names)],
    }


# ---- the demo shapes ---------------------------------------------------------------------------
def demo_paths(root: str | os.PathLike = DEMO_ROOT) -> dict[str, str]:
    """Paths of the demo dataset's image folders and annotation files under `root`."""
    return builtin_paths(root)


def ensure_demo_data(
    root: str | os.PathLike = DEMO_ROOT, num_train: int = 240, num_val: int = 60, seed: int = 0
) -> dict[str, str]:
    """Generate the demo dataset under `root` unless its annotation files already exist
    (atomically, see `ensure_generated`); an existing dataset is reused as is, whatever
    `num_*`/`seed` it was made with.

    Returns:
        `demo_paths(root)`.
    """
    return ensure_generated(root, lambda folder: generate_demo_data(folder, num_train, num_val, seed))


def generate_demo_data(root: str | os.PathLike, num_train: int, num_val: int, seed: int) -> None:
    """Write `num_train` + `num_val` images and their COCO json files under `root`
    (deterministic per split, see `write_builtin_data`)."""
    write_builtin_data(root, num_train, num_val, seed, _draw_split, DEMO_CATEGORY_IDS, DEMO_CLASSES,
                       "densedet demo shapes")


def _draw_split(rng: np.random.Generator, count: int) -> Iterable[DrawnImage]:
    """Draw the `count` images of one split, one at a time."""
    num_negatives = max(1, round(NEGATIVE_FRACTION * count)) if count > 0 else 0
    negative = np.zeros(count, dtype=bool)
    negative[rng.choice(count, size=num_negatives, replace=False)] = True
    for index in range(count):
        height, width = (int(v) for v in rng.integers(IMAGE_SIDE_RANGE[0], IMAGE_SIDE_RANGE[1] + 1, 2))
        image = _background(rng, height, width)  # [H, W, 3] uint8 RGB
        num_objects = 0 if negative[index] else int(rng.integers(1, MAX_OBJECTS + 1))
        objects = _draw_objects(rng, image, num_objects)  # [(class_index, (x1, y1, x2, y2)), ...]
        yield image, objects


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-contrast texture: greyish base + smoothed noise + a soft gradient (+ faint stripes)."""
    base = rng.uniform(90, 160) + rng.uniform(-15, 15, 3)  # [3] near-grey so shapes' colours stand out
    # Smoothed noise: coarse random grid upsampled with bicubic interpolation.
    coarse = rng.normal(0.0, 10.0, (height // 12 + 2, width // 12 + 2, 3)).astype(np.float32)
    noise = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)  # [H, W, 3]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)  # [H, W] each
    angle = rng.uniform(0, 2 * np.pi)
    along = (np.cos(angle) * xs + np.sin(angle) * ys) / max(height, width)  # [H, W] in ~[-1.4, 1.4]
    gradient = rng.uniform(-20, 20) * along
    texture = noise + gradient[:, :, None]
    if rng.random() < 0.5:
        stripe_angle = rng.uniform(0, np.pi)
        period = rng.uniform(10, 40)
        phase = (np.cos(stripe_angle) * xs + np.sin(stripe_angle) * ys) * (2 * np.pi / period)
        texture += rng.uniform(3, 8) * np.sin(phase)[:, :, None]
    return np.clip(base + texture, 0, 255).astype(np.uint8)


def _shape_mask(class_index: int, height: int, width: int, cx: int, cy: int, size: int) -> np.ndarray:
    """Binary mask [H, W] (uint8 0/1) of one filled shape of side ~`size` centred at (cx, cy)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    r = size // 2
    name = DEMO_CLASSES[class_index]
    if name == "circle":
        cv2.circle(mask, (cx, cy), r, 1, thickness=-1, lineType=cv2.LINE_8)
    elif name == "square":
        cv2.rectangle(mask, (cx - r, cy - r), (cx + r, cy + r), 1, thickness=-1)
    elif name == "triangle":
        corners = np.array([[cx, cy - r], [cx + r, cy + r], [cx - r, cy + r]], dtype=np.int32)
        cv2.fillPoly(mask, [corners], 1, lineType=cv2.LINE_8)
    elif name == "cross":
        arm = max(1, size // 6)  # half the arm thickness: arms are a third of the side wide
        cv2.rectangle(mask, (cx - r, cy - arm), (cx + r, cy + arm), 1, thickness=-1)
        cv2.rectangle(mask, (cx - arm, cy - r), (cx + arm, cy + r), 1, thickness=-1)
    elif name == "ring":
        thickness = max(2, size // 5)
        cv2.circle(mask, (cx, cy), r, 1, thickness=-1, lineType=cv2.LINE_8)
        cv2.circle(mask, (cx, cy), max(r - thickness, 1), 0, thickness=-1, lineType=cv2.LINE_8)
    return mask


def _draw_objects(rng: np.random.Generator, image: np.ndarray, num_objects: int) -> list:
    """Paint up to `num_objects` shapes onto `image` in place.

    A placement is rejected (and retried) when it would hide more than
    1 - MIN_VISIBLE_FRACTION of an object already drawn, so most objects stay mostly visible.

    Returns:
        list of (class_index, (x1, y1, x2, y2)): the tight pixel box of each drawn shape,
        x2/y2 exclusive (a shape covering columns 3..7 has x1=3, x2=8).
    """
    height, width = image.shape[:2]
    owner = np.full((height, width), -1, dtype=np.int64)  # [H, W] index of the top object, -1 = background
    areas: list[int] = []
    objects = []
    log_lo, log_hi = np.log(OBJECT_SIZE_RANGE[0]), np.log(OBJECT_SIZE_RANGE[1])
    for _ in range(num_objects):
        class_index = int(rng.integers(len(DEMO_CLASSES)))
        colour = np.clip(np.array(DEMO_COLOURS[class_index]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255)
        for _try in range(PLACEMENT_TRIES):
            size = int(round(np.exp(rng.uniform(log_lo, log_hi))))
            size = min(size, min(height, width) - 4)
            r = size // 2
            # Keep the whole shape inside the image, so every box lies inside it.
            cx = int(rng.integers(r + 1, width - r - 1))
            cy = int(rng.integers(r + 1, height - r - 1))
            mask = _shape_mask(class_index, height, width, cx, cy, size).astype(bool)  # [H, W]
            new_owner = np.where(mask, len(areas), owner)  # [H, W]
            visible = np.bincount(new_owner.ravel() + 1, minlength=len(areas) + 2)[1:-1]  # [K] pixels left per object
            if np.all(visible >= MIN_VISIBLE_FRACTION * np.asarray(areas, dtype=np.float64)):
                break
        else:
            continue  # no placement keeps the earlier objects visible: draw one object fewer
        owner = new_owner
        areas.append(int(mask.sum()))
        image[mask] = colour.astype(np.uint8)
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        objects.append((class_index, (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)))
    return objects
