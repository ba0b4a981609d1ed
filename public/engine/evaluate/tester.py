"""What test.py runs: the evaluation report of a checkpoint, and detection on images or a video."""
from __future__ import annotations

import glob
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from public.data.loaders import build_dataset, build_loader, prepare_builtin_data
from public.data.prefetcher import eval_resize
from public.engine import distributed as dist_utils
from public.engine.distributed import amp_dtype_of
from public.engine.evaluate.evaluator import (EvalResult, evaluate, format_per_class, format_stats, log_evaluation,
                                              predict_onnx, score_shards)
from public.engine.evaluate.inference import Predictor, filter_by_thresholds, load_model, predict_tta, tta_passes
from public.engine.evaluate.report import (draw_detections, f_measure_thresholds, format_thresholds, thresholds_json,
                                           write_figures)
from public.engine.export.runtime import is_onnx
from public.engine.runs.checkpoint import is_densedet, load_checkpoint, save_checkpoint
from public.engine.watch.logger import setup_logging

logger = logging.getLogger("densedet")

DEFAULT_SCORE_THRESH = 0.3     # detection's threshold when the checkpoint carries none
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


# ---- evaluation -------------------------------------------------------------------------------
@dataclass
class Scored:
    """One evaluation of a checkpoint: the result and what it was computed with."""
    result: EvalResult
    val_set: object
    device: torch.device
    timed: str          # what the per-image time covers
    wall: float         # seconds in all


def score_checkpoint(cfg, path: str, tta: bool = False, save_thresholds: bool = False) -> Scored:
    """Score the checkpoint (ours, a torchvision state dict or an exported .onnx) at ``path`` on
    the config's validation set, sharded over the ranks."""
    device = dist_utils.init_distributed(cfg.device)
    setup_logging(None, dist_utils.is_main_process())
    prepare_builtin_data(cfg)
    check_val_data(cfg)
    val_set = build_dataset(cfg, train=False)
    loaded = load_model(cfg, path, val_set.category_ids, val_set.class_names)
    cfg = loaded.cfg   # the run spec
    if save_thresholds and is_onnx(path):
        raise ValueError(f"--save-thresholds stores thresholds in a .pth checkpoint, not in {path}: run it on the "
                         f"checkpoint, then export again (the thresholds go into the ONNX file's metadata)")
    if save_thresholds and not loaded.densedet:
        raise ValueError(f"--save-thresholds needs a densedet checkpoint; {path} is a foreign state dict")
    if loaded.overrides:  # a foreign checkpoint's settings may change the eval transforms
        val_set = build_dataset(cfg, train=False)
    model = loaded.model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    decoder, amp_dtype = cfg.build_decoder(), amp_dtype_of(cfg, device.type)
    rank, world = dist_utils.get_rank(), dist_utils.get_world_size()

    start = time.perf_counter()
    if tta:
        passes = tta_passes(cfg)  # checks the tta_* fields before any work
        logger.info("test-time augmentation: scales %s (max size %d)%s, ranges %s, merge %s", cfg.tta_scales,
                    cfg.tta_max_size, " + flips" if cfg.tta_flip else "", cfg.tta_scale_ranges, cfg.tta_merge)
        val_set.transforms = None  # the predictor resizes each pass itself
        loader = build_loader(cfg, val_set, False, device, rank, world, collate_fn=list)
        predictor = Predictor(model, decoder, cfg, device, amp_dtype, cfg.channels_last)
        result = score_shards(*predict_tta(predictor, loader, val_set.label_to_cat_id), val_set, cfg.eval_backend)
        timed = f"model + decoder over {len(passes)} passes + merging"
    elif is_onnx(path):
        loader = build_loader(cfg, val_set, False, device, rank, world)
        result = score_shards(*predict_onnx(model, loader, val_set.label_to_cat_id), val_set)
        timed = "ONNX Runtime session: model + decoder"
    else:
        loader = build_loader(cfg, val_set, False, device, rank, world)
        result = evaluate(model, decoder, loader, val_set, device, amp_dtype, cfg.channels_last, cfg.eval_backend,
                          eval_resize(cfg))
        timed = "model + decoder"
    return Scored(result, val_set, device, timed, time.perf_counter() - start)


def check_val_data(cfg) -> None:
    """FileNotFoundError, one line naming the missing validation path and the keys that fix it
    (a checkpoint's run may have moved its data)."""
    for key in ("val_annotations", "val_images"):
        value = getattr(cfg, key)
        if not Path(value).exists():
            raise FileNotFoundError(f"validation data not found: {key} {value} does not exist; pass where it is "
                                    f"now as val_images=DIR val_annotations=FILE")


def free_output_dir(folder: str | Path, name: str) -> Path:
    """``folder/name``, or ``name_2``, ``name_3``... when it already holds a report
    (detections.json): earlier results are never overwritten."""
    folder, number = Path(folder), 1
    while True:
        out = folder / (name if number == 1 else f"{name}_{number}")
        if not (out / "detections.json").exists():
            return out
        number += 1


def evaluate_checkpoint(cfg, path: str) -> EvalResult:
    """``train.py --evaluate``: score a checkpoint on the config's validation set; print the 12
    COCO stats and a per-class AP table."""
    scored = score_checkpoint(cfg, path)
    result = scored.result
    if dist_utils.is_main_process():
        logger.info("evaluated %s on %s (%d images) in %.1fs, %.1f ms/image (model+decoder)", path,
                    cfg.val_annotations, len(scored.val_set), scored.wall, 1000 * result.seconds_per_image)
        logger.info("COCO stats:\n%s", format_stats(result.stats))
        logger.info("per-class AP (weakest first):\n%s", format_per_class(result.per_class))
        log_evaluation(result)
    return result


def evaluate_report(cfg, path: str, tta: bool = False, save_thresholds: bool = False,
                    out_dir: str | Path | None = None) -> EvalResult:
    """``test.py``: score the checkpoint at ``path`` as ``score_checkpoint`` and, on the main
    process, print and write the report into ``out_dir`` (default ``cfg.work_dir``): COCO stats, per-class AP,
    F-measure thresholds (thresholds.json; into the checkpoint with ``save_thresholds``), timing,
    detections.json and pr_curves/*.png."""
    scored = score_checkpoint(cfg, path, tta, save_thresholds)
    result, val_set, device, timed, wall = scored.result, scored.val_set, scored.device, scored.timed, scored.wall
    if not dist_utils.is_main_process():
        return result

    work_dir = Path(out_dir if out_dir is not None else cfg.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    logger.info("evaluated %s on %s (%d images)%s", path, cfg.val_annotations, len(val_set), " with TTA" if tta else "")
    logger.info("COCO stats:\n%s", format_stats(result.stats))
    logger.info("per-class AP (weakest first):\n%s", format_per_class(result.per_class))
    log_evaluation(result)  # the stats to 4 decimals, as the run's log and metrics.jsonl
    thresholds = f_measure_thresholds(result.coco_eval, val_set.class_names, val_set.category_ids)
    logger.info("per-class score thresholds maximising F at IoU 0.5:\n%s", format_thresholds(thresholds))
    seconds = result.seconds_per_image
    logger.info("inference: %.1f ms/image, %.1f images/s (%s, device synchronised, data loading excluded); "
                "%.1fs in all for %d images on %s", 1000 * seconds, 1 / max(seconds, 1e-9), timed, wall,
                len(val_set), device)

    (work_dir / "thresholds.json").write_text(json.dumps(thresholds_json(thresholds), indent=2) + "\n")
    (work_dir / "detections.json").write_text(json.dumps(result.results or []))
    figures = write_figures(result, val_set, thresholds, work_dir, DEFAULT_SCORE_THRESH)
    logger.info("wrote %s, %s, %d precision-recall plots in %s, %s and %s", work_dir / "thresholds.json",
                work_dir / "detections.json", len(figures["pr_curves"]), work_dir / "pr_curves",
                figures["confusion_matrix"], figures["samples"])
    logger.info("report written to %s", work_dir)
    if save_thresholds:
        checkpoint = load_checkpoint(path)
        checkpoint["score_thresholds"] = [t["threshold"] for t in thresholds]
        save_checkpoint(checkpoint, path)
        logger.info("saved the per-class thresholds into %s (detection uses them by default)", path)
    return result


# ---- detection ----------------------------------------------------------------------------------
def list_images(pattern: str) -> list[Path]:
    """An image file, a folder (its images, sorted) or a glob -> image paths."""
    path = Path(pattern)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if path.is_file():
        return [path]
    matches = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_file())
    if not matches:
        raise FileNotFoundError(f"no image file, folder or glob matches {pattern!r}")
    return matches


class Detector:
    """A checkpoint ready to detect: RGB image -> thresholded detections in its pixels.

    Thresholds per class: ``score_thresh`` if given; else the checkpoint's per-class ones
    (test.py --save-thresholds), with DEFAULT_SCORE_THRESH for classes it has none for; else
    DEFAULT_SCORE_THRESH.
    """

    def __init__(self, cfg, path: str, score_thresh: float | None = None, tta: bool = False):
        self.device = dist_utils.init_distributed(cfg.device)
        checkpoint = None if is_onnx(path) else load_checkpoint(path)
        # Ours (and an export) names its classes; a foreign state dict takes them from the config's val json.
        category_ids, class_names = ((None, None) if checkpoint is None or is_densedet(checkpoint)
                                     else dataset_categories(cfg))
        loaded = load_model(cfg, path, category_ids, class_names, checkpoint)
        cfg = loaded.cfg   # the run spec
        self.class_names, self.category_ids = loaded.class_names, loaded.category_ids
        if score_thresh is not None:
            values, source = [score_thresh] * len(self.class_names), f"--score-thresh {score_thresh}"
        elif loaded.score_thresholds is not None:
            values = [DEFAULT_SCORE_THRESH if t is None else t for t in loaded.score_thresholds]
            source = "per class, from the checkpoint"
        else:
            values, source = [DEFAULT_SCORE_THRESH] * len(self.class_names), f"default {DEFAULT_SCORE_THRESH}"
        self.thresholds = torch.tensor(values, dtype=torch.float32)          # [C]
        logger.info("score thresholds (%s): %s", source,
                    ", ".join(f"{n} {t:.3f}" for n, t in zip(self.class_names, values)))
        if tta:
            tta_passes(cfg)
        self.tta = tta
        self.predictor = Predictor(loaded.model.to(self.device), cfg.build_decoder(), cfg, self.device,
                                   amp_dtype_of(cfg, self.device.type), cfg.channels_last)

    def __call__(self, image_rgb: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 [H, W, 3] RGB -> {"boxes" [D, 4] xyxy, "scores" [D], "labels" [D]} as numpy."""
        detections = filter_by_thresholds(self.predictor([image_rgb], tta=self.tta)[0], self.thresholds)
        return {k: v.cpu().numpy() for k, v in detections.items()}

    def record(self, detections: dict, **where) -> dict:
        """One entry of the detections json: where it was found, boxes, scores, class names."""
        return {**where, "boxes": np.round(detections["boxes"].astype(np.float64), 2).tolist(),
                "scores": np.round(detections["scores"].astype(np.float64), 4).tolist(),
                "classes": [self.class_names[i] for i in detections["labels"].tolist()],
                "category_ids": [self.category_ids[i] for i in detections["labels"].tolist()]}


def dataset_categories(cfg) -> tuple[list[int] | None, list[str] | None]:
    """Category ids and names of the config's val json, if it exists (for foreign checkpoints)."""
    path = Path(cfg.val_annotations)
    if not path.is_file():
        return None, None
    try:
        categories = sorted(json.loads(path.read_text()).get("categories", []), key=lambda c: c["id"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, None
    return [int(c["id"]) for c in categories] or None, [str(c.get("name", c["id"])) for c in categories] or None


def detect_images(cfg, path: str, pattern: str, out_dir: str, score_thresh: float | None = None,
                  tta: bool = False, save_txt: bool = False) -> list[dict]:
    """Detect in each image of ``pattern``; write annotated copies and detections.json to
    ``out_dir`` (``save_txt``: also ``labels/<image name>.txt`` per image, see ``write_txt``).
    Unreadable files are skipped with a warning. Returns the json entries."""
    setup_logging(None, True)
    files = list_images(pattern)
    detector = Detector(cfg, path, score_thresh, tta)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, start = [], time.perf_counter()
    for file in files:
        # stored pixel order, EXIF orientation ignored: the rule of training and evaluation (COCO's)
        image = cv2.imread(str(file), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)  # [H, W, 3] BGR, or None
        if image is None:
            logger.warning("cannot read image %s: skipped", file)
            continue
        before = detector.predictor.seconds
        detections = detector(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        drawn = draw_detections(image, detections["boxes"], detections["scores"], detections["labels"],
                                detector.class_names)
        cv2.imwrite(str(out / file.name), drawn)
        records.append(detector.record(detections, file_name=file.name, width=image.shape[1],
                                       height=image.shape[0]))
        if save_txt:
            write_txt(out / "labels" / f"{file.stem}.txt", detections, image.shape[1], image.shape[0])
        logger.info("%s: %d detections, %.1f ms", file, len(detections["scores"]),
                    1000 * (detector.predictor.seconds - before))
    _finish(out, records, detector, time.perf_counter() - start, "image")
    return records


def detect_video(cfg, path: str, video: str, out_dir: str, score_thresh: float | None = None,
                 tta: bool = False) -> list[dict]:
    """Detect in every frame of ``video``; write ``out_dir/<name>.mp4`` (mp4v) with the
    detections drawn and detections.json (one entry per frame)."""
    setup_logging(None, True)
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise FileNotFoundError(f"cannot open video {video}")
    detector = Detector(cfg, path, score_thresh, tta)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    target = out / (Path(video).stem + ".mp4")
    writer, records, start = None, [], time.perf_counter()
    try:
        while True:
            ok, frame = capture.read()                                    # [H, W, 3] BGR
            if not ok:
                break
            if writer is None:
                writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                         (frame.shape[1], frame.shape[0]))
            detections = detector(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            writer.write(draw_detections(frame, detections["boxes"], detections["scores"], detections["labels"],
                                         detector.class_names))
            records.append(detector.record(detections, file_name=Path(video).name, frame=len(records)))
            if len(records) % 100 == 0:
                logger.info("%s: %d frames", video, len(records))
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if not records:
        logger.warning("no frame could be read from %s", video)
    else:
        logger.info("wrote %s (%d frames at %.1f fps)", target, len(records), fps)
    _finish(out, records, detector, time.perf_counter() - start, "frame")
    return records


def write_txt(path: Path, detections: dict, width: int, height: int) -> None:
    """One line per detection, as Ultralytics' ``save_txt``: ``label cx cy w h score`` with the
    contiguous label (the class's index in the checkpoint's class list) and the box centre and
    size as fractions of the image's width and height; an empty file where nothing was found."""
    boxes = detections["boxes"].astype(np.float64).reshape(-1, 4)                 # [D, 4] xyxy pixels
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 / [width, height]                   # [D, 2]
    size = (boxes[:, 2:] - boxes[:, :2]) / [width, height]                         # [D, 2]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{label} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f} {score:.4f}\n" for label, (cx, cy), (w, h), score
                            in zip(detections["labels"].tolist(), centre, size, detections["scores"].tolist())))


def _finish(out: Path, records: list[dict], detector: Detector, wall: float, unit: str) -> None:
    (out / "detections.json").write_text(json.dumps(records) + "\n")
    count = max(len(records), 1)
    logger.info("%ss: %d; %.1f ms/%s model + decoder (device synchronised), %.1f ms/%s in all "
                "(read, preprocess, draw, write); detections in %s", unit, len(records),
                1000 * detector.predictor.seconds_per_image, unit, 1000 * wall / count, unit, out / "detections.json")
