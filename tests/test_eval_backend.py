"""faster-coco-eval gives pycocotools' numbers: the 12 stats within 1e-9, per-class AP and the
F-measure thresholds, on the demo val set and on a synthetic set with crowded images, crowd
regions and images without boxes. Detections are built from the ground truth (jittered boxes
with scores that fall with the error, duplicates, wrong classes, false positives), so every
kind of match and miss occurs, as with a trained detector."""
import json

import numpy as np
import pytest

from bench.eval_backends import coco_of, perturbed_detections, synthetic_gt
from public.data.demo import ensure_demo_data
from public.engine.evaluate.evaluator import check_eval_backend, coco_evaluate
from public.engine.evaluate.report import f_measure_thresholds

pytest.importorskip("faster_coco_eval")


def assert_same(dataset: dict, results: list[dict]):
    coco_gt = coco_of(dataset)
    ours = coco_evaluate(coco_gt, results, backend="pycocotools")
    fast = coco_evaluate(coco_gt, results, backend="faster_coco_eval")
    np.testing.assert_allclose(fast.stats, ours.stats, rtol=0, atol=1e-9)
    assert [c["category_id"] for c in fast.per_class] == [c["category_id"] for c in ours.per_class]
    for a, b in zip(fast.per_class, ours.per_class):
        assert a["num_gt"] == b["num_gt"]
        np.testing.assert_allclose([a["AP"], a["AP50"], a["AP75"]], [b["AP"], b["AP50"], b["AP75"]], atol=1e-9)
    names = [c["name"] for c in dataset["categories"]]
    ids = [c["id"] for c in dataset["categories"]]
    t_fast, t_ours = (f_measure_thresholds(r.coco_eval, names, ids) for r in (fast, ours))
    assert [t["threshold"] for t in t_fast] == [t["threshold"] for t in t_ours]
    return ours


def test_same_stats_on_the_demo_val_set():
    dataset = json.loads(open(ensure_demo_data()["val_annotations"]).read())
    result = assert_same(dataset, perturbed_detections(dataset, seed=1))
    assert 0.3 < result.stats[0] < 0.9               # a realistic, imperfect detector


def test_same_stats_with_crowded_and_empty_images():
    dataset = synthetic_gt(120, num_classes=6, seed=3, crowded_fraction=0.3, empty_fraction=0.2,
                           crowd_region_fraction=0.05)
    boxes_per_image = np.bincount([a["image_id"] for a in dataset["annotations"]], minlength=121)[1:]
    assert (boxes_per_image >= 40).sum() >= 20 and (boxes_per_image == 0).sum() >= 15
    assert sum(a["iscrowd"] for a in dataset["annotations"]) >= 20
    results = perturbed_detections(dataset, seed=4)
    # Detections on images without ground truth (all false positives) and none on some images.
    assert {r["image_id"] for r in results} & {i + 1 for i in np.flatnonzero(boxes_per_image == 0)}
    results = [r for r in results if r["image_id"] % 17 != 0]
    assert_same(dataset, results)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="eval_backend must be one of"):
        check_eval_backend("fast")
