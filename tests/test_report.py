"""test.py's figures: the confusion matrix on a hand-built case, PR curves drawn from COCOeval's
arrays, the report's files, and detections drawn readably at any image size."""
import contextlib
import io
import json

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from bench.eval_backends import perturbed_detections
from helpers import demo_subset
from public.data.coco import CocoDetection
from public.engine.evaluate.evaluator import coco_evaluate
from public.engine.evaluate.report import (_pr_at_iou50, class_colour, confusion_matrix, draw_detections,
                                  f_measure_thresholds, line_width, normalize_columns, plot_confusion_matrix,
                                  pr_figures, write_figures)


def coco_from(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def ann(n, image_id, category_id, bbox, crowd=0):
    return {"id": n, "image_id": image_id, "category_id": category_id, "bbox": bbox, "area": bbox[2] * bbox[3],
            "iscrowd": crowd}


def det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


# ---- confusion matrix ---------------------------------------------------------------------------------
def test_confusion_matrix_hand_built():
    # Classes "a" (id 7, label 0) and "b" (id 2, label 1); C = 2 is background.
    images = [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 200} for i in (1, 2, 3, 4)]
    annotations = [
        ann(1, 1, 7, [0, 0, 10, 10]), ann(2, 1, 2, [20, 20, 10, 10]), ann(3, 1, 7, [50, 50, 20, 20], crowd=1),
        ann(4, 2, 2, [0, 0, 20, 20]),
        ann(5, 4, 7, [0, 0, 10, 10]), ann(6, 4, 2, [2, 0, 10, 10]),
    ]
    coco = coco_from({"images": images, "annotations": annotations,
                      "categories": [{"id": 7, "name": "a"}, {"id": 2, "name": "b"}]})
    results = [
        det(1, 7, [0, 0, 10, 10], 0.9),      # a on a: [0, 0]
        det(1, 7, [21, 20, 10, 10], 0.8),    # a on b (IoU 0.82): [0, 1]
        det(1, 2, [100, 100, 10, 10], 0.7),  # b on nothing: [1, 2]
        det(1, 2, [52, 52, 10, 10], 0.9),    # b inside the crowd region: ignored
        det(1, 7, [1, 0, 10, 10], 0.6),      # duplicate of a, its box already taken: [0, 2]
        det(1, 2, [0, 0, 10, 10], 0.1),      # below b's threshold: dropped
        det(3, 7, [5, 5, 30, 30], 0.95),     # a on an image without boxes: [0, 2]
        det(4, 2, [2, 0, 10, 10], 0.9),      # IoU 1 with b, 0.67 with a: b takes it: [1, 1], a missed: [2, 0]
    ]                                        # image 2's b is missed: [2, 1]
    matrix = confusion_matrix(coco, results, [7, 2], [0.5, 0.5])
    np.testing.assert_array_equal(matrix, [[1, 1, 2],
                                           [0, 1, 1],
                                           [1, 1, 0]])
    np.testing.assert_allclose(normalize_columns(matrix), [[0.5, 1 / 3, 2 / 3], [0, 1 / 3, 1 / 3], [0.5, 1 / 3, 0]])
    # A higher threshold for "a" drops its detections scoring below it.
    np.testing.assert_array_equal(confusion_matrix(coco, results, [7, 2], [0.85, 0.5]),
                                  [[1, 0, 1], [0, 1, 1], [1, 2, 0]])
    fig = plot_confusion_matrix(matrix, ["a", "b"], "/dev/null")
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), normalize_columns(matrix))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "background"]


# ---- PR curves and the report's files ---------------------------------------------------------------------
def test_pr_curves_and_report_figures(tmp_path):
    images_dir, annotations = demo_subset(tmp_path, 8, "val")
    dataset = CocoDetection(images_dir, annotations)
    gt = json.loads(open(annotations).read())
    results = perturbed_detections(gt, seed=2)
    result = coco_evaluate(dataset.coco, results, dataset.image_ids)
    result.results = results
    thresholds = f_measure_thresholds(result.coco_eval, dataset.class_names, dataset.category_ids)

    recall, precision, _ = _pr_at_iou50(result.coco_eval)
    figures = dict(pr_figures(result.coco_eval, dataset.class_names, dataset.category_ids, thresholds))
    with_gt = [k for k in range(len(dataset.category_ids)) if (precision[:, k] >= 0).any()]
    assert len(figures) == len(with_gt) + 1
    for k in with_gt:
        line = figures[f"{k:03d}_{dataset.class_names[k]}.png"].axes[0].lines[0]
        np.testing.assert_array_equal(line.get_xdata(), recall)
        np.testing.assert_array_equal(line.get_ydata(), np.clip(precision[:, k], 0, 1))
    mean_line = figures["all_classes.png"].axes[0].lines[-1]
    np.testing.assert_allclose(mean_line.get_ydata(), np.clip(precision[:, with_gt], 0, 1).mean(axis=1))

    paths = write_figures(result, dataset, thresholds, tmp_path / "report", default_threshold=0.3, num_samples=3)
    assert [p.name for p in paths["pr_curves"]][-1] == "all_classes.png"
    for path, min_side in ((paths["confusion_matrix"], 400), (paths["samples"], 600), (paths["pr_curves"][0], 300)):
        image = cv2.imread(str(path))
        assert image is not None and min(image.shape[:2]) >= min_side, path


def test_confusion_matrix_columns_count_every_ground_truth_box(tmp_path):
    images_dir, annotations = demo_subset(tmp_path, 8, "val")
    gt = json.loads(open(annotations).read())
    coco = coco_from(gt)
    ids = [c["id"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    results = perturbed_detections(gt, seed=5)
    matrix = confusion_matrix(coco, results, ids, [0.4] * len(ids))
    per_class = [sum(1 for a in gt["annotations"] if a["category_id"] == i and not a["iscrowd"]) for i in ids]
    np.testing.assert_array_equal(matrix[:, :-1].sum(axis=0), per_class)
    kept = sum(1 for r in results if r["score"] >= 0.4)
    assert matrix[:-1, :].sum() == kept                 # no crowd regions: every kept detection counted once


# ---- drawing ---------------------------------------------------------------------------------------------
def test_drawing_follows_the_image_size_and_keeps_labels_off_small_objects():
    assert line_width(160, 160) == 1 and line_width(480, 640) == 2 and line_width(3000, 4000) == 14
    for height, width in ((160, 200), (3000, 4000)):
        image = np.zeros((height, width, 3), np.uint8)
        side = width // 20                                  # a small object, 5% of the width
        boxes = np.array([[width // 2, 0, width // 2 + side, side],                  # at the top edge
                          [width // 4, height // 2, width // 4 + side, height // 2 + side]], np.float64)
        drawn = draw_detections(image, boxes, np.array([0.9, 0.8]), np.array([0, 1]), ["circle", "ring"])
        lw = line_width(height, width)
        for (x1, y1, x2, y2), label in zip(boxes.astype(int), (0, 1)):
            # The line has the expected width; the box's inside stays untouched.
            column = drawn[y1 + side // 2, :, :]
            assert (column[x1 - lw: x1 + lw + 1] == class_colour(label)).all(axis=1).sum() >= lw
            assert (drawn[y1 + lw + 1: y2 - lw, x1 + lw + 1: x2 - lw] == 0).all()
        # The label tab of the top box is below it, the other's above it, each in its colour.
        x1, y1, x2, y2 = boxes[0].astype(int)
        assert (drawn[y2 + lw + 1, x1: x2] != 0).any(axis=1).mean() > 0.5
        x1, y1, x2, y2 = boxes[1].astype(int)
        assert (drawn[y1 - lw - 2, x1: x2] != 0).any(axis=1).mean() > 0.5
        text_rows = np.flatnonzero((drawn[:y1 - lw, x1: x1 + 4 * side] != 0).any(axis=(1, 2)))
        tab_height = text_rows.max() - text_rows.min() + 1
        assert 0.015 * height <= tab_height <= 0.1 * height or (height == 160 and tab_height <= 16)


# ---- the report is at IoU 0.5 ------------------------------------------------------------------------------
def test_pr_curves_and_f_thresholds_are_at_iou_50_by_hand():
    """Detections with IoU 0.6 to their box count as hits at IoU 0.5 (and misses at 0.75), the
    exact ones at both: the curves and F-optimal thresholds below are worked out by hand at 0.5.

    Class "a" (id 7, label 0), 3 boxes; detections by score:
        0.9 IoU 0.6 with box 1 | 0.8 on nothing | 0.7 exact on box 2 | 0.6 IoU 0.6 with box 3
        at IoU 0.5: hits 1, 1, 2, 3 -> recall 1/3, 1/3, 2/3, 1; precision 1, 1/2, 2/3, 3/4;
        interpolated (best precision at this recall or beyond) 1, 3/4, 3/4, 3/4.
        A recall threshold r is first reached at 0.9 (r <= 1/3), 0.7 (<= 2/3), 0.6 (<= 1);
        F = 2PR / (P + R) is highest at R = 1, P = 3/4: F = 6/7 at score >= 0.6.
        (At IoU 0.75 only the 0.7 detection hits: precision 1/3 up to recall 1/3, F 1/3 at 0.7.)
    Class "b" (id 2, label 1), 1 box; detections: 0.5 IoU 0.6, 0.4 exact (a duplicate at 0.5):
        at IoU 0.5 recall 1 at precision 1 from score 0.5: F = 1 at 0.5.
        (At IoU 0.75 the 0.5 one misses and 0.4 hits: precision 1/2, F 2/3 at 0.4.)
    """
    images = [{"id": i, "file_name": f"{i}.png", "width": 400, "height": 400} for i in (1, 2)]
    annotations = [ann(1, 1, 7, [0, 0, 100, 100]), ann(2, 1, 7, [200, 0, 100, 100]), ann(3, 2, 7, [0, 200, 100, 100]),
                   ann(4, 2, 2, [200, 200, 100, 100])]
    coco = coco_from({"images": images, "annotations": annotations,
                      "categories": [{"id": 7, "name": "a"}, {"id": 2, "name": "b"}]})
    # a box shifted by 25 along one side: IoU 75 / 125 = 0.6
    results = [det(1, 7, [25, 0, 100, 100], 0.9), det(1, 7, [300, 300, 50, 50], 0.8), det(1, 7, [200, 0, 100, 100], 0.7),
               det(2, 7, [0, 225, 100, 100], 0.6),
               det(2, 2, [225, 200, 100, 100], 0.5), det(2, 2, [200, 200, 100, 100], 0.4)]
    result = coco_evaluate(coco, results)                 # the report's path: test.py scores with this
    names, cat_ids = ["a", "b"], [7, 2]
    thresholds = f_measure_thresholds(result.coco_eval, names, cat_ids)
    assert thresholds == [{"name": "a", "category_id": 7, "threshold": 0.6, "f_measure": pytest.approx(6 / 7)},
                          {"name": "b", "category_id": 2, "threshold": 0.5, "f_measure": pytest.approx(1.0)}]

    recall, precision, scores = _pr_at_iou50(result.coco_eval)
    np.testing.assert_allclose(recall, np.linspace(0, 1, 101))
    k_a, k_b = result.coco_eval.params.catIds.index(7), result.coco_eval.params.catIds.index(2)
    expected_a = np.where(recall <= 1 / 3, 1.0, 0.75)
    np.testing.assert_allclose(precision[:, k_a], expected_a)
    np.testing.assert_allclose(scores[:, k_a], np.select([recall <= 1 / 3, recall <= 2 / 3], [0.9, 0.7], 0.6))
    np.testing.assert_allclose(precision[:, k_b], 1.0)
    np.testing.assert_allclose(scores[:, k_b], 0.5)
    # the curves drawn, and the best-F point marked on them
    figures = dict(pr_figures(result.coco_eval, names, cat_ids, thresholds))
    lines_a = figures["000_a.png"].axes[0].lines
    np.testing.assert_allclose(lines_a[0].get_ydata(), expected_a)
    np.testing.assert_allclose(lines_a[1].get_xydata(), [[1.0, 0.75]])
    np.testing.assert_allclose(figures["001_b.png"].axes[0].lines[0].get_ydata(), 1.0)
    np.testing.assert_allclose(figures["all_classes.png"].axes[0].lines[-1].get_ydata(), (expected_a + 1.0) / 2)
