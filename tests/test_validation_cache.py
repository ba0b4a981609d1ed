"""The validation cache (public/data/validation_cache.py): a later build reuses the report of
the same json, folder and mode, identical to a fresh one; any changed file or json refuses it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from public.data import validate, validation_cache
from public.data.coco import CocoDetection
from test_validate import broken_but_repairable, write


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSEDET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(validation_cache, "MIN_IMAGES", 1)
    return tmp_path / "cache" / "validation"


def parses(monkeypatch) -> list:
    """Counts the validation passes that read the json (rather than the cache)."""
    calls, inner = [], validate._validate
    monkeypatch.setattr(validate, "_validate", lambda *a: calls.append(1) or inner(*a))
    return calls


def test_cached_report_equals_a_fresh_one(tmp_path, cache, monkeypatch):
    paths = write(tmp_path, *broken_but_repairable())
    calls = parses(monkeypatch)
    fresh = validate.validate_coco(*paths)
    assert len(calls) == 1 and len(list(cache.glob("*.npz"))) == 1
    cached = validate.validate_coco(*paths)
    assert len(calls) == 1                                # not parsed again
    assert cached.repair_message() == fresh.repair_message() != ""
    assert cached.image_ids == fresh.image_ids and list(cached.file_names) == list(fresh.file_names)
    for name in validation_cache.ARRAYS:
        np.testing.assert_array_equal(getattr(cached, name), getattr(fresh, name))
        assert getattr(cached, name).dtype == getattr(fresh, name).dtype, name
    assert json.dumps(cached.ground_truth) == json.dumps(fresh.ground_truth)
    sample = CocoDetection(*paths)[3]
    assert sample["boxes"].tolist() == [[4, 4, 14, 14], [16, 16, 24, 24]] and len(calls) == 1
    validate.validate_coco(*paths, "off")                 # another mode: its own entry
    assert len(calls) == 2


def test_a_changed_file_or_json_refuses_the_cache(tmp_path, cache, monkeypatch):
    images_dir, ann_file = write(tmp_path, *broken_but_repairable())
    calls = parses(monkeypatch)
    validate.validate_coco(images_dir, ann_file)
    path = Path(images_dir) / "002.jpg"
    path.write_bytes(path.read_bytes()[:-100])            # truncated since
    report = validate.validate_coco(images_dir, ann_file)
    assert len(calls) == 2 and [g.what for g in report.fatal] == ["truncated image files"]
    path.unlink()
    report = validate.validate_coco(images_dir, ann_file)
    assert len(calls) == 3 and [g.what for g in report.fatal] == ["image files that do not exist"]
    data = json.loads(Path(ann_file).read_text())
    data["images"] = [im for im in data["images"] if im["id"] != 2]
    Path(ann_file).write_text(json.dumps(data))
    validate.validate_coco(images_dir, ann_file)           # fixed: parsed, then cached
    validate.validate_coco(images_dir, ann_file)
    assert len(calls) == 4


def test_cache_off_and_small_sets_are_not_cached(tmp_path, cache, monkeypatch):
    paths = write(tmp_path, *broken_but_repairable())
    monkeypatch.setattr(validation_cache, "MIN_IMAGES", 5)  # 4 images
    validate.validate_coco(*paths)
    monkeypatch.setattr(validation_cache, "MIN_IMAGES", 1)
    monkeypatch.setenv("DENSEDET_CACHE_DIR", "off")
    validate.validate_coco(*paths)
    assert not cache.exists()
