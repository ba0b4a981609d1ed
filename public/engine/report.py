"""What test.py reports beyond COCO's stats: per-class score thresholds that maximise the
F-measure, precision-recall plots (drawn with OpenCV), and detections drawn on images."""
from __future__ import annotations

import colorsys
from pathlib import Path

import cv2
import numpy as np


# ---- thresholds ------------------------------------------------------------------------------
def _pr_at_iou50(coco_eval) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COCOeval's accumulated curves at IoU 0.5, area "all", maxDets 100:
    recall thresholds [R], interpolated precision [R, K] (-1: class without ground truth),
    score at which each recall threshold is first reached [R, K] (0 where never reached)."""
    params = coco_eval.params
    t = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.5)))
    a = list(params.areaRngLbl).index("all")
    m = list(params.maxDets).index(100) if 100 in params.maxDets else len(params.maxDets) - 1
    return (np.asarray(params.recThrs), coco_eval.eval["precision"][t, :, :, a, m],
            coco_eval.eval["scores"][t, :, :, a, m])


def f_measure_thresholds(coco_eval, class_names: list[str], category_ids: list[int]) -> list[dict]:
    """Per class, the score threshold that maximises F = 2PR / (P + R) at IoU 0.5.

    P is COCOeval's interpolated precision and R the recall threshold at each of its 101
    recall points; the threshold is the score of the detection at which that recall is first
    reached, so keeping detections scoring >= it gives (at least) that recall. Ties go to the
    lower recall (the higher threshold).

    Args:
        coco_eval: an evaluated and accumulated COCOeval (or None: no detections at all).
        class_names, category_ids: per contiguous label; coco_eval's catIds must be these ids.
    Returns:
        per label {"name", "category_id", "threshold": float | None, "f_measure": float};
        threshold None where F is 0 (no ground truth, or no true positive).
    """
    out = [{"name": name, "category_id": int(cat_id), "threshold": None, "f_measure": 0.0}
           for name, cat_id in zip(class_names, category_ids)]
    if coco_eval is None:
        return out
    if sorted(coco_eval.params.catIds) != sorted(category_ids):
        raise ValueError(f"COCOeval scored categories {coco_eval.params.catIds}, the model has {category_ids}")
    recall, precision, scores = _pr_at_iou50(coco_eval)                 # [R], [R, K], [R, K]
    recall = recall[:, None]                                            # [R, 1]
    valid = precision > 0
    f = np.where(valid, 2 * precision * recall / np.where(valid, precision + recall, 1.0), 0.0)  # [R, K]
    best = f.argmax(axis=0)                                             # [K] first maximum
    label_of = {cat_id: label for label, cat_id in enumerate(category_ids)}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        f_best = float(f[best[k], k])
        if f_best > 0:
            out[label_of[cat_id]].update(threshold=float(scores[best[k], k]), f_measure=f_best)
    return out


def thresholds_json(thresholds: list[dict]) -> dict[str, dict]:
    """{class name: {"threshold", "f_measure", "category_id"}}, the layout of thresholds.json."""
    return {t["name"]: {"threshold": t["threshold"], "f_measure": t["f_measure"], "category_id": t["category_id"]}
            for t in thresholds}


def format_thresholds(thresholds: list[dict]) -> str:
    width = max([len(t["name"]) for t in thresholds] + [5])
    lines = [f"{'class':<{width}}  {'thresh':>6}  {'F@.5':>6}"]
    for t in thresholds:
        value = f"{t['threshold']:6.3f}" if t["threshold"] is not None else f"{'-':>6}"
        lines.append(f"{t['name']:<{width}}  {value}  {t['f_measure']:6.3f}")
    return "\n".join(lines)


# ---- precision-recall plots --------------------------------------------------------------------
def plot_pr_curves(coco_eval, class_names: list[str], category_ids: list[int], out_dir: str | Path,
                   thresholds: list[dict] | None = None, size: tuple[int, int] = (480, 400)) -> list[Path]:
    """One PNG per class with ground truth: precision vs recall at IoU 0.5 (COCOeval's
    interpolated curve, area all, maxDets 100), the best-F point marked. Returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if coco_eval is None:
        return []
    recall, precision, _ = _pr_at_iou50(coco_eval)
    label_of = {cat_id: label for label, cat_id in enumerate(category_ids)}
    paths = []
    for k, cat_id in enumerate(coco_eval.params.catIds):
        if (precision[:, k] < 0).all():
            continue  # no ground truth: no curve
        name = class_names[label_of[cat_id]]
        best = thresholds[label_of[cat_id]] if thresholds else None
        image = _draw_pr(recall, np.clip(precision[:, k], 0, 1), name, best, size)
        path = out_dir / f"{label_of[cat_id]:03d}_{_safe(name)}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def _draw_pr(recall: np.ndarray, precision: np.ndarray, name: str, best: dict | None,
             size: tuple[int, int]) -> np.ndarray:
    width, height = size
    left, right, top, bottom = 50, 15, 44, 40
    image = np.full((height, width, 3), 255, np.uint8)
    plot_w, plot_h = width - left - right, height - top - bottom

    def to_px(r, p):  # data (0..1, 0..1) -> pixel columns/rows, y up
        return (np.round(left + np.asarray(r) * plot_w).astype(np.int32),
                np.round(top + (1 - np.asarray(p)) * plot_h).astype(np.int32))

    for tick in np.linspace(0, 1, 6):
        x, y = to_px(tick, tick)
        cv2.line(image, (int(x), top), (int(x), top + plot_h), (225, 225, 225), 1)
        cv2.line(image, (left, int(y)), (left + plot_w, int(y)), (225, 225, 225), 1)
        cv2.putText(image, f"{tick:.1f}", (int(x) - 10, top + plot_h + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
        cv2.putText(image, f"{tick:.1f}", (left - 28, int(y) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
    cv2.rectangle(image, (left, top), (left + plot_w, top + plot_h), (0, 0, 0), 1)
    xs, ys = to_px(recall, precision)
    cv2.polylines(image, [np.stack([xs, ys], axis=1).reshape(-1, 1, 2)], False, (200, 90, 20), 2, cv2.LINE_AA)
    ap50 = float(precision.mean())
    title = f"{name}  AP50 {ap50:.3f}"
    if best is not None and best["threshold"] is not None:
        # The best-F point: F = 2PR/(P+R) lies on the curve where the threshold was read.
        f = best["f_measure"]
        title += f"  best F {f:.3f} @ score {best['threshold']:.2f}"
        valid = precision > 0
        f_curve = np.where(valid, 2 * precision * recall / np.where(valid, precision + recall, 1), 0)
        i = int(f_curve.argmax())
        x, y = to_px(recall[i], precision[i])
        cv2.circle(image, (int(x), int(y)), 5, (30, 30, 220), -1, cv2.LINE_AA)
    cv2.putText(image, title, (8, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, "recall (IoU 0.5)", (left + plot_w // 2 - 50, height - 8), cv2.FONT_HERSHEY_SIMPLEX,
                0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, "precision", (4, top - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return image


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60] or "class"


# ---- drawing detections --------------------------------------------------------------------------
def class_colour(label: int) -> tuple[int, int, int]:
    """A fixed, well-separated BGR colour per class: hues spaced by the golden ratio."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(round(b * 255)), int(round(g * 255)), int(round(r * 255))


def draw_detections(image_bgr: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    class_names: list[str], thickness: int = 2) -> np.ndarray:
    """A copy of ``image_bgr`` with each box [D, 4] (xyxy pixels) drawn in its class's colour
    and labelled "name score" on a filled tab above it (inside the image)."""
    out = image_bgr.copy()
    height, width = out.shape[:2]
    corners = np.round(boxes).astype(np.int64).reshape(-1, 4)            # [D, 4]
    # Lowest score first, so the best boxes are drawn on top.
    for i in np.argsort(scores, kind="stable"):
        x1, y1, x2, y2 = corners[i].tolist()
        colour = class_colour(int(labels[i]))
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        text = f"{class_names[int(labels[i])]} {scores[i]:.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        tab_y = y1 - text_h - baseline - 2 if y1 - text_h - baseline - 2 >= 0 else min(y1 + thickness, height - 1)
        tab_x = min(max(x1, 0), max(width - text_w - 2, 0))
        cv2.rectangle(out, (tab_x, tab_y), (tab_x + text_w + 2, tab_y + text_h + baseline + 2), colour, -1)
        luminance = 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2]
        cv2.putText(out, text, (tab_x + 1, tab_y + text_h + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0) if luminance > 140 else (255, 255, 255), 1, cv2.LINE_AA)
    return out
