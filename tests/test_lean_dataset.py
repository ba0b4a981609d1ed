"""The lean dataset (flat arrays, no parsed json kept) gives exactly what the validator gave
before (tests/legacy_validate.py, a frozen copy): the same messages, per-image targets, and
evaluation ground truth and scores, over every repair case of tests/test_validate.py."""
from __future__ import annotations

import json

import numpy as np
import pytest

import legacy_validate
from public.data.coco import CocoDetection
from public.data.validate import validate_coco
from public.engine.evaluate.evaluator import coco_evaluate
from test_validate import ann, broken_but_repairable, good_annotations, good_images, image, write

GT_KEYS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd", "ignore")  # what COCOeval reads
IMAGE_KEYS = ("id", "file_name", "height", "width")


def cases():
    """(name, images, annotations, categories) of the validation corpus."""
    images, annotations = broken_but_repairable()
    yield "all repairs", images, annotations, None
    for index in range(1, 15):      # each repair, crowd and ignore case alone in a clean set
        alone_images = [*images[:3], image(4)]
        broken = dict(annotations[index])
        if "id" in broken:
            broken["id"] = 1 if index == 6 else broken["id"] + 100
        yield f"case {index}", alone_images, good_annotations() + [broken], None
    numeric = good_images(3)
    numeric[2]["id"] = "3"
    strings = good_annotations()
    strings[2].update(image_id="3", id="3", category_id="1")
    yield "ids as strings", numeric, strings, [{"id": "1", "name": "cat"}, {"id": 2, "name": "dog"}]
    yield "image id no number", good_images(3), good_annotations() + [ann(99, "three", 1, [2, 2, 8, 8])], None
    yield "an image without boxes", good_images(5), good_annotations(), None


CASES = list(cases())


def _restricted(entries: list[dict], keys) -> list[dict]:
    return [{k: e[k] for k in keys if k in e} for e in entries]


@pytest.mark.parametrize("check_images", ["header", "off"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_lean_report_gives_the_legacy_targets_ground_truth_and_messages(tmp_path, case, check_images):
    _, images, annotations, categories = case
    paths = write(tmp_path, images, annotations, **({"categories": categories} if categories else {}))
    legacy = legacy_validate.validate_coco(*paths, check_images)
    lean = validate_coco(*paths, check_images)
    assert lean.fatal_message() == legacy.fatal_message() and lean.repair_message() == legacy.repair_message()
    assert lean.image_ids == legacy.image_ids and list(lean.file_names) == legacy.file_names
    np.testing.assert_array_equal(lean.sizes, legacy.sizes)
    assert len(lean.boxes) == len(legacy.boxes) == len(images)
    for lean_boxes, legacy_boxes, lean_labels, legacy_labels in zip(lean.boxes, legacy.boxes, lean.labels,
                                                                   legacy.labels):
        assert lean_boxes.dtype == legacy_boxes.dtype and lean_labels.dtype == legacy_labels.dtype
        np.testing.assert_array_equal(lean_boxes, legacy_boxes)
        np.testing.assert_array_equal(lean_labels, legacy_labels)
    gt, legacy_gt = lean.ground_truth, legacy.ground_truth
    assert json.dumps(_restricted(gt["annotations"], GT_KEYS)) == json.dumps(_restricted(legacy_gt["annotations"],
                                                                                          GT_KEYS))
    assert _restricted(gt["images"], IMAGE_KEYS) == _restricted(legacy_gt["images"], IMAGE_KEYS)
    assert gt["categories"] == legacy_gt["categories"]
    assert lean.num_crowd == legacy.num_crowd


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_lean_dataset_samples_and_scores_equal_the_legacy_ones(tmp_path, backend):
    """Every sample of the dataset has the legacy targets, and noisy detections score the same
    12 stats against the lean ground truth as against the legacy one."""
    images, annotations = broken_but_repairable()
    paths = write(tmp_path, images, annotations)
    legacy = legacy_validate.validate_coco(*paths)
    dataset = CocoDetection(*paths)
    rng = np.random.default_rng(0)
    detections = []
    for i in range(len(dataset)):
        sample = dataset[i]
        assert sample["image_id"] == legacy.image_ids[i]
        np.testing.assert_array_equal(sample["boxes"], legacy.boxes[i])
        np.testing.assert_array_equal(sample["labels"], legacy.labels[i])
        for (x1, y1, x2, y2), label in zip(sample["boxes"].tolist(), sample["labels"].tolist()):
            for _ in range(3):
                jitter = rng.normal(0, 1.5, 4)
                detections.append({"image_id": sample["image_id"], "category_id": int(rng.choice([1, 2])),
                                   "bbox": [x1 + jitter[0], y1 + jitter[1], x2 - x1 + jitter[2], y2 - y1 + jitter[3]],
                                   "score": float(rng.random())})
    ours = coco_evaluate(dataset.coco, detections, dataset.image_ids, backend)
    theirs = coco_evaluate(legacy.coco(), detections, legacy.image_ids, backend)
    assert ours.stats == theirs.stats and 0 < ours.stats[0] < 1
    assert ours.per_class == theirs.per_class


def test_training_set_keeps_no_parsed_json_nor_coco_object(tmp_path):
    """What a dataset keeps: flat arrays; the COCO object only once evaluation asks for it."""
    images, annotations = broken_but_repairable()
    dataset = CocoDetection(*write(tmp_path, images, annotations))
    assert "coco" not in vars(dataset)
    for name, value in vars(dataset.validation).items():
        assert not isinstance(value, dict) or name == "gt_ignore", name
        assert not (isinstance(value, list) and value and isinstance(value[0], (dict, np.ndarray))) \
            or name in ("groups", "categories"), name
    assert dataset.coco is dataset.coco and "coco" in vars(dataset)   # built once, on first use
