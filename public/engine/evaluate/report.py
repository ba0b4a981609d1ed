"""What test.py reports beyond COCO's stats: per-class score thresholds that maximise the
F-measure, precision-recall curves, a confusion matrix and ground truth beside detections
(figures drawn with matplotlib, Agg backend), and detections drawn on images (OpenCV)."""
from __future__ import annotations

import colorsys
from pathlib import Path

import cv2
import numpy as np
# Figures are built without pyplot: matplotlib renders them with Agg, needs no display and
# leaves the user's backend alone.
from matplotlib.figure import Figure


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
                   thresholds: list[dict] | None = None) -> list[Path]:
    """Precision vs recall at IoU 0.5 (COCOeval's interpolated curve, area all, maxDets 100):
    one PNG per class with ground truth (the best-F point marked) and ``all_classes.png``
    with every class and their mean. Returns the paths, the all-classes figure last."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in pr_figures(coco_eval, class_names, category_ids, thresholds):
        fig.savefig(out_dir / name, dpi=100)
        paths.append(out_dir / name)
    return paths


def pr_figures(coco_eval, class_names: list[str], category_ids: list[int],
               thresholds: list[dict] | None = None) -> list[tuple[str, Figure]]:
    """(file name, figure) of each plot of ``plot_pr_curves``; a class's curve is
    ``fig.axes[0].lines[0]``, the mean over classes the last line of the all-classes figure."""
    if coco_eval is None:
        return []
    recall, precision, _ = _pr_at_iou50(coco_eval)                       # [R], [R, K]
    label_of = {cat_id: label for label, cat_id in enumerate(category_ids)}
    curves = {}                                                          # label -> precision [R]
    for k, cat_id in enumerate(coco_eval.params.catIds):
        if not (precision[:, k] < 0).all():  # no ground truth: no curve
            curves[label_of[cat_id]] = np.clip(precision[:, k], 0, 1)
    figures = []
    for label, curve in sorted(curves.items()):
        fig = Figure(figsize=(5, 4.5), layout="constrained")
        ax = fig.add_subplot()
        ax.plot(recall, curve, linewidth=2, label=f"{class_names[label]} (AP50 {curve.mean():.3f})")
        best = thresholds[label] if thresholds else None
        if best is not None and best["threshold"] is not None:
            i = int(_f_curve(recall, curve).argmax())
            ax.plot([recall[i]], [curve[i]], "o", color="tab:red", markersize=7,
                    label=f"best F {best['f_measure']:.3f} at score >= {best['threshold']:.3f}")
        _pr_axes(ax, f"{class_names[label]}: precision-recall at IoU 0.5")
        figures.append((f"{label:03d}_{_safe(class_names[label])}.png", fig))
    if curves:
        fig = Figure(figsize=(7, 6), layout="constrained")
        ax = fig.add_subplot()
        for label, curve in sorted(curves.items()):
            ax.plot(recall, curve, linewidth=1, alpha=0.8, label=f"{class_names[label]} {curve.mean():.3f}")
        mean = np.mean(list(curves.values()), axis=0)
        ax.plot(recall, mean, linewidth=3, color="tab:blue" if len(curves) > 10 else "black",
                label=f"all classes {mean.mean():.3f} AP50")
        _pr_axes(ax, "precision-recall at IoU 0.5, all classes (AP50 in the legend)")
        if len(curves) > 15:  # a legend of 80 classes hides the plot: name only the mean
            handles, labels = ax.get_legend_handles_labels()
            ax.legend(handles[-1:], labels[-1:], loc="lower left")
        figures.append(("all_classes.png", fig))
    return figures


def _f_curve(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    valid = precision > 0
    return np.where(valid, 2 * precision * recall / np.where(valid, precision + recall, 1), 0)


def _pr_axes(ax, title: str) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60] or "class"


# ---- confusion matrix ----------------------------------------------------------------------------
def confusion_matrix(coco_gt, results: list[dict], category_ids: list[int], thresholds: list[float],
                     iou_thresh: float = 0.5, image_ids: list[int] | None = None) -> np.ndarray:
    """Counts of (predicted class, true class) at ``iou_thresh``, with a background row and column.

    Per image, the detections scoring at least their class's threshold are matched to the
    non-crowd ground-truth boxes, whatever their classes: pairs with IoU >= ``iou_thresh``,
    highest IoU first, each box and detection used once. A matched pair counts at
    [its predicted label, its true label]; a ground-truth box left over at [C, true label]
    (missed); a detection left over at [predicted label, C] (false detection), unless it lies
    mostly (>= half its area) inside a crowd region, which COCO ignores.

    Args:
        coco_gt: pycocotools COCO of the ground truth. results: COCO result dicts (xywh).
        category_ids: the category id of each contiguous label (C of them).
        thresholds: score threshold per label [C].
    Returns:
        int64 [C + 1, C + 1]: rows predicted label (C = background), columns true label.
    """
    num_classes = len(category_ids)
    label_of = {cat_id: label for label, cat_id in enumerate(category_ids)}
    thresholds = np.asarray(thresholds, dtype=np.float64)
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    detections: dict[int, list[dict]] = {}
    for r in results:
        label = label_of[r["category_id"]]
        if r["score"] >= thresholds[label]:
            detections.setdefault(r["image_id"], []).append(r)
    for image_id in (coco_gt.getImgIds() if image_ids is None else image_ids):
        anns = coco_gt.imgToAnns.get(image_id, [])
        gt = [a for a in anns if not a.get("iscrowd", 0)]
        crowd = _xyxy([a["bbox"] for a in anns if a.get("iscrowd", 0)])              # [G', 4]
        gt_boxes, gt_labels = _xyxy([a["bbox"] for a in gt]), np.array([label_of[a["category_id"]] for a in gt], np.int64)
        dets = detections.get(image_id, [])
        det_boxes = _xyxy([d["bbox"] for d in dets])                                 # [D, 4]
        det_labels = np.array([label_of[d["category_id"]] for d in dets], np.int64)
        iou = _iou(gt_boxes, det_boxes)                                              # [G, D]
        gi, di = np.nonzero(iou >= iou_thresh)
        order = np.argsort(-iou[gi, di], kind="stable")
        gt_used, det_used = np.zeros(len(gt), bool), np.zeros(len(dets), bool)
        for g, d in zip(gi[order], di[order]):
            if not gt_used[g] and not det_used[d]:
                gt_used[g] = det_used[d] = True
                matrix[det_labels[d], gt_labels[g]] += 1
        np.add.at(matrix, (num_classes, gt_labels[~gt_used]), 1)
        false = ~det_used
        if len(crowd) and false.any():
            false &= _ioa(det_boxes, crowd).max(axis=1, initial=0) < 0.5
        np.add.at(matrix, (det_labels[false], num_classes), 1)
    return matrix


def _xyxy(boxes: list) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)                           # xywh
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    wh = (np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2])).clip(min=0)
    return wh[..., 0] * wh[..., 1]                                                   # [A, B]


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = _intersection(a, b)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _ioa(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over the area of each box of ``a`` [A, B]."""
    area = _area(a)[:, None]
    return np.where(area > 0, _intersection(a, b) / np.where(area > 0, area, 1), 0.0)


def normalize_columns(matrix: np.ndarray) -> np.ndarray:
    """Each column (true class) divided by its sum: where that class's boxes went."""
    sums = matrix.sum(axis=0, keepdims=True)
    return np.where(sums > 0, matrix / np.where(sums > 0, sums, 1), 0.0)


def plot_confusion_matrix(matrix: np.ndarray, class_names: list[str], path: str | Path,
                          title: str = "confusion matrix, IoU 0.5, per-class F-optimal thresholds") -> Figure:
    """The column-normalised ``matrix`` [C+1, C+1] as a heat map (rows predicted, columns
    true, last = background), each cell with its fraction and raw count when there is room."""
    names = [*class_names, "background"]
    n = len(names)
    normalized = normalize_columns(matrix)
    side = min(max(5.0, 0.45 * n + 2.5), 24.0)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="fraction of the true class's boxes")
    ticks = np.arange(n)
    ax.set_xticks(ticks, names, rotation=90 if n > 8 else 45, ha="right" if n <= 8 else "center",
                  fontsize=8 if n > 20 else 9)
    ax.set_yticks(ticks, names, fontsize=8 if n > 20 else 9)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title, fontsize=10)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, f"{normalized[i, j]:.2f}\n({matrix[i, j]})", ha="center", va="center",
                            fontsize=7 if n > 12 else 8, color="white" if normalized[i, j] > 0.5 else "black")
    fig.savefig(path, dpi=100)
    return fig


# ---- validation images: ground truth and detections -----------------------------------------------
def plot_samples(samples: list[dict], class_names: list[str], path: str | Path) -> Figure:
    """One row per sample: the image with its ground truth, and with its detections.

    Args:
        samples: {"image": uint8 [H, W, 3] RGB, "gt_boxes" [G, 4], "gt_labels" [G],
            "boxes" [D, 4], "scores" [D], "labels" [D], "title": str}; boxes xyxy in its pixels.
    """
    fig = Figure(figsize=(10, 4.2 * len(samples)), layout="constrained")
    axes = fig.subplots(len(samples), 2, squeeze=False)
    for row, sample in zip(axes, samples):
        bgr = np.ascontiguousarray(sample["image"][..., ::-1])
        gt = draw_detections(bgr, sample["gt_boxes"], None, sample["gt_labels"], class_names)
        det = draw_detections(bgr, sample["boxes"], sample["scores"], sample["labels"], class_names)
        for ax, drawn, what in ((row[0], gt, f"ground truth ({len(sample['gt_labels'])})"),
                                (row[1], det, f"detections ({len(sample['labels'])})")):
            ax.imshow(drawn[..., ::-1])
            ax.set_title(f"{sample.get('title', '')}: {what}", fontsize=10)
            ax.axis("off")
    fig.savefig(path, dpi=100)
    return fig


# ---- test.py's figures ------------------------------------------------------------------------------
def write_figures(result, dataset, thresholds: list[dict], out_dir: str | Path, default_threshold: float,
                  num_samples: int = 6) -> dict[str, Path | list[Path]]:
    """test.py's figures from an evaluation: ``pr_curves/`` (per class + all classes),
    ``confusion_matrix.png`` (IoU 0.5, each class at its F-optimal threshold, or
    ``default_threshold`` where it has none) and ``val_samples.png`` (``num_samples`` val
    images spread over the set, ground truth beside the detections above those thresholds).

    Args:
        result: EvalResult with ``coco_eval`` and ``results`` (main process).
        dataset: the evaluated CocoDetection. thresholds: ``f_measure_thresholds``' output.
    Returns:
        {"pr_curves": [paths], "confusion_matrix": path, "samples": path or None}.
    """
    out_dir = Path(out_dir)
    names, cat_ids = dataset.class_names, dataset.category_ids
    per_class = [default_threshold if t["threshold"] is None else t["threshold"] for t in thresholds]
    results = result.results or []
    paths: dict = {"pr_curves": plot_pr_curves(result.coco_eval, names, cat_ids, out_dir / "pr_curves", thresholds)}
    matrix = confusion_matrix(dataset.coco, results, cat_ids, per_class, 0.5, dataset.image_ids)
    paths["confusion_matrix"] = out_dir / "confusion_matrix.png"
    plot_confusion_matrix(matrix, names, paths["confusion_matrix"])
    paths["samples"] = None
    if len(dataset) and num_samples > 0:
        indices = np.unique(np.linspace(0, len(dataset) - 1, min(num_samples, len(dataset))).round().astype(int))
        by_image: dict[int, list[dict]] = {}
        for r in results:
            by_image.setdefault(r["image_id"], []).append(r)
        label_of = {cat_id: label for label, cat_id in enumerate(cat_ids)}
        transforms, dataset.transforms = dataset.transforms, None     # the images as stored
        try:
            samples = []
            for index in indices.tolist():
                sample = dataset[index]
                dets = [r for r in by_image.get(sample["image_id"], [])
                        if r["score"] >= per_class[label_of[r["category_id"]]]]
                samples.append({"image": sample["image"], "gt_boxes": sample["boxes"], "gt_labels": sample["labels"],
                                "boxes": _xyxy([d["bbox"] for d in dets]),
                                "scores": np.array([d["score"] for d in dets]),
                                "labels": np.array([label_of[d["category_id"]] for d in dets], np.int64),
                                "title": f"image {sample['image_id']}"})
        finally:
            dataset.transforms = transforms
        paths["samples"] = out_dir / "val_samples.png"
        plot_samples(samples, names, paths["samples"])
    return paths


# ---- drawing detections --------------------------------------------------------------------------
def class_colour(label: int) -> tuple[int, int, int]:
    """A fixed, well-separated BGR colour per class: hues spaced by the golden ratio."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(round(b * 255)), int(round(g * 255)), int(round(r * 255))


def line_width(height: int, width: int) -> int:
    """Box line width in pixels for an image of this size: 1 px at 250 px, 2 at 500, 8 at 2000."""
    return max(1, round(0.002 * (height + width)))


def draw_detections(image_bgr: np.ndarray, boxes: np.ndarray, scores: np.ndarray | None, labels: np.ndarray,
                    class_names: list[str], thickness: int | None = None) -> np.ndarray:
    """A copy of ``image_bgr`` with each box [D, 4] (xyxy pixels) drawn in its class's colour
    and labelled "name score" ("name" when ``scores`` is None, for ground truth) on a filled tab.

    Line width and text size follow the image's size (``line_width``), so labels stay
    readable on large images and do not swamp small ones. The tab sits above the box; if
    there is no room there, below it; only when neither fits, inside the box's top edge:
    a label never hides the object it names when it can be put elsewhere.
    """
    out = image_bgr.copy()
    height, width = out.shape[:2]
    thickness = thickness or line_width(height, width)
    font_scale = max(0.3, 0.33 * thickness)
    font_thickness = max(1, round(thickness * 0.6))
    corners = np.round(np.asarray(boxes, np.float64)).astype(np.int64).reshape(-1, 4)  # [D, 4]
    # Clipped to the last pixel row/column: a box that reaches the border keeps its edge visible.
    corners = corners.clip(0, [width - 1, height - 1, width - 1, height - 1])
    order = np.argsort(scores, kind="stable") if scores is not None else np.arange(len(corners))
    # Lowest score first, so the best boxes are drawn on top.
    for i in order:
        x1, y1, x2, y2 = corners[i].tolist()
        colour = class_colour(int(labels[i]))
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        text = class_names[int(labels[i])] + (f" {scores[i]:.2f}" if scores is not None else "")
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, font_thickness)
        tab_h, tab_w = text_h + baseline + 2 * font_thickness, text_w + 2 * font_thickness
        outer = (thickness + 1) // 2                                                   # the line's outer half
        if y1 - outer - tab_h >= 0:
            tab_y = y1 - outer - tab_h                     # above the box
        elif y2 + outer + tab_h <= height:
            tab_y = y2 + outer                             # below the box
        else:
            tab_y = max(y1, 0)                             # inside, along the top edge
        tab_x = min(max(x1 - outer, 0), max(width - tab_w, 0))
        cv2.rectangle(out, (tab_x, tab_y), (tab_x + tab_w - 1, tab_y + tab_h - 1), colour, -1)
        luminance = 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2]
        cv2.putText(out, text, (tab_x + font_thickness, tab_y + font_thickness + text_h), cv2.FONT_HERSHEY_SIMPLEX,
                    font_scale, (0, 0, 0) if luminance > 140 else (255, 255, 255), font_thickness, cv2.LINE_AA)
    return out
