"""COCO evaluation backends: pycocotools' COCOeval against faster-coco-eval's COCOeval_faster
on the same synthetic set like COCO val (5000 images, 80 classes, about 7 boxes per image,
crowded images, crowd regions, images without boxes, 100 detections per image), in one run.

    python bench/eval_backends.py                    # 5000 images
    python bench/eval_backends.py --images 500 --repeat 3

Each backend is timed over what ``coco_evaluate`` runs: loadRes, evaluate, accumulate,
summarize, from the same pycocotools ground truth. Both must give the same 12 stats.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from public.engine.evaluate.evaluator import STAT_NAMES, coco_evaluate  # noqa: E402


def synthetic_gt(num_images: int, num_classes: int = 80, seed: int = 0, crowded_fraction: float = 0.05,
                 empty_fraction: float = 0.01, crowd_region_fraction: float = 0.01) -> dict:
    """A COCO ground-truth dict: images of 480-640 x 360-640 px; per image a Poisson(7) number
    of boxes (``crowded_fraction`` of images: 40-80 boxes; ``empty_fraction``: none), sizes
    log-uniform from 4 px to the image side (so small, medium and large areas all occur);
    ``crowd_region_fraction`` of the boxes are ``iscrowd`` regions. Category ids 1, 3, 5, ..."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        width, height = int(rng.integers(480, 641)), int(rng.integers(360, 641))
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "width": width, "height": height})
        kind = rng.random()
        count = 0 if kind < empty_fraction else (int(rng.integers(40, 81)) if kind < empty_fraction + crowded_fraction
                                                   else int(rng.poisson(7)))
        side = np.exp(rng.uniform(np.log(4), np.log(min(width, height)), (count, 2)))            # [n, 2]
        x = rng.uniform(0, width - side[:, 0])
        y = rng.uniform(0, height - side[:, 1])
        labels = rng.integers(0, num_classes, count)
        crowd = rng.random(count) < crowd_region_fraction
        for k in range(count):
            box = [round(float(x[k]), 2), round(float(y[k]), 2), round(float(side[k, 0]), 2), round(float(side[k, 1]), 2)]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 2 * int(labels[k]) + 1,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": int(crowd[k])})
    categories = [{"id": 2 * k + 1, "name": f"class{k}"} for k in range(num_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def perturbed_detections(gt: dict, seed: int = 0, max_per_image: int = 100) -> list[dict]:
    """Realistic detections of ``gt``: each box found with probability 0.85 with its corners
    jittered (score higher for the better ones), 30% of them also a duplicate, 5% with the
    wrong class, plus random false positives with low scores; at most ``max_per_image``
    per image, best first, as a detector's output after NMS."""
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in gt["categories"]]
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in gt["images"]}
    for ann in gt["annotations"]:
        by_image[ann["image_id"]].append(ann)
    results = []
    for image in gt["images"]:
        width, height = image["width"], image["height"]
        dets = []
        for ann in by_image[image["id"]]:
            if rng.random() > 0.85:
                continue
            x, y, w, h = ann["bbox"]
            for copy in range(1 + (rng.random() < 0.3)):
                noise = rng.normal(0, 0.08 * (1 + 2 * copy), 4)                     # relative to the side
                box = [x + noise[0] * w, y + noise[1] * h, w * np.exp(noise[2]), h * np.exp(noise[3])]
                score = float(np.clip(0.95 - 2.5 * np.abs(noise).mean() + rng.normal(0, 0.05), 0.05, 1.0))
                category = ann["category_id"] if rng.random() > 0.05 else int(rng.choice(cat_ids))
                dets.append((score, category, box))
        for _ in range(int(rng.poisson(8))):                                          # false positives
            w, h = np.exp(rng.uniform(np.log(4), np.log(min(width, height)), 2))
            box = [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]
            dets.append((float(rng.uniform(0.05, 0.6)), int(rng.choice(cat_ids)), box))
        dets.sort(key=lambda d: -d[0])
        for score, category, box in dets[:max_per_image]:
            results.append({"image_id": image["id"], "category_id": category,
                            "bbox": [round(float(v), 2) for v in box], "score": round(score, 5)})
    return results


def coco_of(dataset: dict):
    import contextlib
    import io

    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per backend (the median is reported)")
    args = parser.parse_args()
    gt = synthetic_gt(args.images)
    results = perturbed_detections(gt)
    coco_gt = coco_of(gt)
    crowded = sum(1 for n in np.bincount([a["image_id"] for a in gt["annotations"]]) if n >= 40)
    print(f"{args.images} images, {len(gt['annotations'])} boxes ({crowded} images with >= 40), "
          f"{args.images - len({a['image_id'] for a in gt['annotations']})} without boxes, {len(results)} detections")
    times, stats = {}, {}
    for _ in range(args.repeat):
        for backend in ("pycocotools", "faster_coco_eval"):
            start = time.perf_counter()
            stats[backend] = coco_evaluate(coco_gt, results, backend=backend).stats
            times.setdefault(backend, []).append(time.perf_counter() - start)
    diff = np.abs(np.asarray(stats["pycocotools"]) - np.asarray(stats["faster_coco_eval"])).max()
    for backend in times:
        print(f"{backend:<17} {np.median(times[backend]):7.2f} s   "
              + "  ".join(f"{n} {v:.4f}" for n, v in zip(STAT_NAMES[:3], stats[backend])))
    ratio = np.median(times["pycocotools"]) / np.median(times["faster_coco_eval"])
    print(f"faster_coco_eval is {ratio:.1f}x faster; largest difference in the 12 stats: {diff:.1e}")


if __name__ == "__main__":
    main()
