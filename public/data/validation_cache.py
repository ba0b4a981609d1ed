"""A cache of the validation pass for large sets: a later run (or each process of a DDP run)
reuses the lean report instead of parsing the json and checking every file again.

Keyed by the json's contents (a BLAKE2 digest of its bytes), the images folder and the
``check_images`` mode; reused only if every listed file is unchanged since (the same size,
modification and change times, inode: one ``stat`` each, ~0.5 s for 118k files), refused
(and replaced) when anything changed. A report with fatal problems is never cached: they are
found again, as the files may have been fixed. Only sets of at least ``MIN_IMAGES`` images
are cached (a small set validates in well under a second).

Where: ``$DENSEDET_CACHE_DIR`` (default ``~/.cache/densedet``)/validation; set
``DENSEDET_CACHE_DIR=off`` to turn the cache off. A file that cannot be written (read-only
home) only means no cache.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

MIN_IMAGES = 2000
VERSION = 1
ARRAYS = ("file_names", "sizes", "target_boxes", "target_labels", "target_offsets", "gt_ids", "gt_image_index",
          "gt_labels", "gt_boxes", "gt_areas", "gt_crowd")


def cache_dir() -> Path | None:
    root = os.environ.get("DENSEDET_CACHE_DIR", str(Path.home() / ".cache" / "densedet"))
    return None if root.lower() in ("off", "0", "") else Path(root) / "validation"


def _json_digest(annotations_file: str) -> str | None:
    try:
        with open(annotations_file, "rb") as f:
            return hashlib.file_digest(f, "blake2b").hexdigest()[:40]
    except OSError:
        return None


def _entry(report, check_images: str) -> Path | None:
    folder = cache_dir()
    digest = _json_digest(report.annotations_file) if folder is not None else None
    if digest is None:
        return None
    key = hashlib.blake2b(f"{VERSION}|{digest}|{os.path.abspath(report.images_dir)}|{check_images}".encode(),
                          digest_size=20).hexdigest()
    return folder / f"{key}.npz"


def files_signature(images_dir: str, file_names, check_images: str) -> str:
    """A digest of every listed file's (size, mtime_ns, ctime_ns, inode); "" with check_images="off"
    (no file was read)."""
    if check_images == "off":
        return ""
    stats = np.full((len(file_names), 4), -1, dtype=np.int64)      # [I, 4]; -1: missing
    for i, name in enumerate(file_names):
        try:
            st = os.stat(os.path.join(images_dir, str(name)))
        except OSError:
            continue
        stats[i] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    return hashlib.blake2b(stats.tobytes(), digest_size=20).hexdigest()


def save(report, check_images: str) -> None:
    if len(report.image_ids) < MIN_IMAGES or report.fatal or not report.cleaned:
        return
    entry = _entry(report, check_images)
    if entry is None:
        return
    meta = {"groups": [vars(g) for g in report.groups], "image_ids": report.image_ids,
            "category_ids": report.category_ids, "class_names": report.class_names,
            "categories": report.categories, "num_crowd": report.num_crowd,
            "gt_ignore": [[row, value] for row, value in report.gt_ignore.items()],
            "files": files_signature(report.images_dir, report.file_names, check_images)}
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **{name: getattr(report, name) for name in ARRAYS})
        os.replace(tmp, entry)
    except OSError:
        pass


def load(report, check_images: str):
    """The cached report for this json, folder and mode if every file is unchanged, else None."""
    entry = _entry(report, check_images)
    if entry is None or not entry.is_file():
        return None
    from public.data.validate import ProblemGroup

    try:
        with np.load(entry, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            arrays = {name: stored[name] for name in ARRAYS}
    except (OSError, ValueError, KeyError):
        return None
    if files_signature(report.images_dir, arrays["file_names"], check_images) != meta["files"]:
        return None
    for name, value in arrays.items():
        setattr(report, name, value)
    report.groups = [ProblemGroup(**g) for g in meta["groups"]]
    report.image_ids, report.category_ids = meta["image_ids"], meta["category_ids"]
    report.class_names, report.categories = meta["class_names"], meta["categories"]
    report.num_crowd, report.cleaned = meta["num_crowd"], True
    report.gt_ignore = {row: value for row, value in meta["gt_ignore"]}
    return report
