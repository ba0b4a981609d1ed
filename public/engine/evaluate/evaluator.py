"""COCO evaluation: run the model over a loader, map detections back to the original images
and COCO category ids, gather the shards of all processes and score with pycocotools' COCOeval
(or faster-coco-eval's, ``eval_backend="faster_coco_eval"``: the same numbers, faster)."""
from __future__ import annotations

import contextlib
import io
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval

from public.data.prefetcher import Prefetcher
from public.engine.distributed import all_gather_objects, broadcast_object, is_main_process
from public.engine.watch.logger import STAT_NAMES, periodic_extra, progress

logger = logging.getLogger("densedet")

# Names of COCOeval's 12 summary numbers, in its order; metrics.jsonl uses these keys.
STAT_LABELS = (
    "AP @[IoU=0.50:0.95 | area=   all | maxDets=100]", "AP @[IoU=0.50      | area=   all | maxDets=100]",
    "AP @[IoU=0.75      | area=   all | maxDets=100]", "AP @[IoU=0.50:0.95 | area= small | maxDets=100]",
    "AP @[IoU=0.50:0.95 | area=medium | maxDets=100]", "AP @[IoU=0.50:0.95 | area= large | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=   all | maxDets=  1]", "AR @[IoU=0.50:0.95 | area=   all | maxDets= 10]",
    "AR @[IoU=0.50:0.95 | area=   all | maxDets=100]", "AR @[IoU=0.50:0.95 | area= small | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=medium | maxDets=100]", "AR @[IoU=0.50:0.95 | area= large | maxDets=100]",
)


@dataclass
class EvalResult:
    stats: list[float]                      # COCOeval's 12 numbers (-1 where undefined)
    per_class: list[dict] = field(default_factory=list)  # {"name", "category_id", "AP", "AP50", "AP75", "num_gt"}
    num_detections: int = 0
    seconds_per_image: float = 0.0          # model + decoder, device synchronised, data loading excluded
    coco_eval: COCOeval | None = None       # for callers that want more (precision arrays); main process only
    results: list[dict] | None = None       # the COCO result dicts scored (all shards); main process only

    @property
    def metrics(self) -> dict[str, float]:
        return dict(zip(STAT_NAMES, self.stats))


def detections_to_coco(detections: list[dict], batch, label_to_cat_id: list[int]) -> list[dict]:
    """Per-image detections in input pixels -> COCO result dicts in original pixels (xywh)."""
    results = []
    cat_ids = np.asarray(label_to_cat_id)
    for det, image_id, scale in zip(detections, batch.image_ids.tolist(), batch.scales.tolist()):
        boxes = det["boxes"].float().cpu().numpy() / np.array([scale[0], scale[1], scale[0], scale[1]])
        boxes[:, 2:] -= boxes[:, :2]                          # xyxy -> xywh
        for box, score, label in zip(boxes.tolist(), det["scores"].tolist(), cat_ids[det["labels"].cpu().numpy()].tolist()):
            results.append({"image_id": image_id, "category_id": label, "bbox": [round(v, 3) for v in box],
                            "score": round(score, 5)})
    return results


@torch.no_grad()
def predict(model, decoder, loader, device, amp_dtype: torch.dtype | None = None, channels_last: bool = False,
            label_to_cat_id: list[int] | None = None, log_interval: int = 50, resize=None):
    """This process's shard -> (COCO result dicts, seconds per image of model + decoder).
    ``resize``: a device-side resize for loaders of original images (``prefetcher.eval_resize``)."""
    was_training = model.training
    model.eval()
    results, compute_time, num_images = [], 0.0, 0
    total = len(loader)
    bar = progress(Prefetcher(loader, device, channels_last, resize), total, "evaluating", leave=False)
    for i, batch in enumerate(bar):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(batch.images)
        detections = decoder(outputs, batch.image_sizes)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        compute_time += time.perf_counter() - start
        num_images += len(batch.image_ids)
        results.extend(detections_to_coco(detections, batch, label_to_cat_id))
        if (i + 1) % log_interval == 0:
            logger.info("evaluating [%d/%d]", i + 1, total, extra=periodic_extra(bar))
    model.train(was_training)
    return results, compute_time / max(num_images, 1)


@torch.no_grad()
def predict_onnx(model, loader, label_to_cat_id: list[int], log_interval: int = 50):
    """Evaluation loader (padded ``Batch``es) -> (COCO result dicts, seconds per image of the
    ONNX session), as ``evaluator.predict`` does for a PyTorch model and decoder."""
    results, seconds, count = [], 0.0, 0
    for i, batch in enumerate(loader):
        start = time.perf_counter()
        detections = model.detect(batch.images, batch.image_sizes)
        seconds += time.perf_counter() - start
        count += len(batch)
        results.extend(detections_to_coco(detections, batch, label_to_cat_id))
        if (i + 1) % log_interval == 0:
            logger.info("evaluating [%d/%d]", i + 1, len(loader))
    return results, seconds / max(count, 1)


EVAL_BACKENDS = ("pycocotools", "faster_coco_eval")


def check_eval_backend(backend: str) -> None:
    """A clear error before any work for an unknown or not installed ``eval_backend``."""
    if backend not in EVAL_BACKENDS:
        raise ValueError(f"eval_backend must be one of {EVAL_BACKENDS}, got {backend!r}")
    if backend == "faster_coco_eval":
        _faster_coco_eval()


def _faster_coco_eval():
    try:
        import faster_coco_eval
    except ImportError as error:
        raise ImportError(f"eval_backend='faster_coco_eval' needs the faster-coco-eval package ({error}): "
                          f"`pip install faster-coco-eval`, or set eval_backend=pycocotools") from None
    return faster_coco_eval


def make_coco_eval(coco_gt, results: list[dict], backend: str = "pycocotools"):
    """A bbox COCOeval of ``results`` against ``coco_gt`` (a pycocotools COCO), not yet run.

    "faster_coco_eval": its C++ COCOeval_faster on the same ground truth (a faster_coco_eval
    COCO built from ``coco_gt.dataset``); same interface and ``eval`` arrays, same 12 stats.
    """
    # loadRes adds keys to each result dict (id, area, segmentation): give it copies, not the caller's
    # dicts (one level deep is enough, and ~10x cheaper than copy.deepcopy on 100k results).
    results = [{**r, "bbox": list(r["bbox"])} for r in results]
    if backend == "pycocotools":
        return COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
    if backend == "faster_coco_eval":
        faster_coco_eval = _faster_coco_eval()
        fast_gt = faster_coco_eval.COCO(coco_gt.dataset)
        return faster_coco_eval.COCOeval_faster(fast_gt, fast_gt.loadRes(results), "bbox")
    raise ValueError(f"eval_backend must be one of {EVAL_BACKENDS}, got {backend!r}")


def coco_evaluate(coco_gt, results: list[dict], image_ids: list[int] | None = None,
                  backend: str = "pycocotools") -> EvalResult:
    """Score COCO result dicts against ``coco_gt`` (a pycocotools COCO) with ``backend``'s COCOeval."""
    image_ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted(image_ids)
    if not results:
        logger.warning("no detections: every AP and AR is 0")
        return EvalResult(stats=[0.0] * 12, per_class=[
            {"name": c["name"], "category_id": c["id"], "AP": 0.0, "AP50": 0.0, "AP75": 0.0,
             "num_gt": len(coco_gt.getAnnIds(catIds=[c["id"]], iscrowd=False))}
            for c in coco_gt.loadCats(sorted(coco_gt.getCatIds()))])
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = make_coco_eval(coco_gt, results, backend)
        coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    precision = coco_eval.eval["precision"]                    # [T=10 IoUs, R=101 recalls, K classes, A=4 areas, M=3 maxDets]
    num_gt = Counter(a["category_id"] for i in image_ids for a in coco_gt.imgToAnns.get(i, []) if not a.get("iscrowd", 0))
    per_class = []
    for k, cat_id in enumerate(coco_eval.params.catIds):
        def ap(p):
            p = p[p > -1]
            return float(p.mean()) if p.size else -1.0
        per_class.append({
            "name": coco_gt.cats[cat_id].get("name", str(cat_id)), "category_id": cat_id,
            "AP": ap(precision[:, :, k, 0, -1]), "AP50": ap(precision[0, :, k, 0, -1]),
            "AP75": ap(precision[5, :, k, 0, -1]),
            "num_gt": num_gt[cat_id],
        })
    return EvalResult(stats=[float(s) for s in coco_eval.stats], per_class=per_class,
                      num_detections=len(results), coco_eval=coco_eval)


def evaluate(model, decoder, loader, dataset, device, amp_dtype=None, channels_last=False,
             backend: str = "pycocotools", resize=None) -> EvalResult:
    """Predict this process's shard, gather all shards on the main process, score there, and
    return the same metrics on every process (per-class details on the main one only).
    ``resize``: as for ``predict``."""
    results, seconds = predict(model, decoder, loader, device, amp_dtype, channels_last, dataset.label_to_cat_id,
                               resize=resize)
    return score_shards(results, seconds, dataset, backend)


def score_shards(results: list[dict], seconds_per_image: float, dataset, backend: str = "pycocotools") -> EvalResult:
    """This process's COCO result dicts and timing -> gathered and scored on the main process;
    the 12 stats on every process (everything else on the main one only)."""
    shards = all_gather_objects((results, seconds_per_image))
    result = None
    if is_main_process():
        merged = [r for shard, _ in shards for r in shard]
        result = coco_evaluate(dataset.coco, merged, dataset.image_ids, backend)
        result.seconds_per_image = float(np.mean([s for _, s in shards]))
        result.results = merged
    stats = broadcast_object(result.stats if result is not None else None)
    return result if result is not None else EvalResult(stats=stats)


def format_stats(stats: list[float]) -> str:
    return "\n".join(f" {label} = {value:.3f}" for label, value in zip(STAT_LABELS, stats))


def format_per_class(per_class: list[dict]) -> str:
    """A table sorted by AP, weakest class first."""
    width = max([len(c["name"]) for c in per_class] + [5])
    lines = [f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}  {'AP75':>6}  {'#gt':>6}"]
    for c in sorted(per_class, key=lambda c: c["AP"]):
        lines.append(f"{c['name']:<{width}}  {c['AP']:6.3f}  {c['AP50']:6.3f}  {c['AP75']:6.3f}  {c['num_gt']:6d}")
    return "\n".join(lines)


def log_evaluation(result: EvalResult, epoch: int | None = None) -> None:
    m = result.metrics
    prefix = f"epoch {epoch}: " if epoch is not None else ""
    logger.info("%smAP %.4f  mAR %.4f  | %s", prefix, m["mAP"], m["mAR"],
                "  ".join(f"{k} {v:.4f}" for k, v in m.items() if k not in ("mAP", "mAR")))
