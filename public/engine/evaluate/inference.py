"""Inference on original images: the evaluation preprocessing, or test-time augmentation
(several scales, horizontal flips, per-scale size ranges, merged by box voting).

``Predictor`` takes RGB images as read from disk and returns detections in their pixels;
``predict_tta`` runs it over an evaluation loader and returns COCO result dicts, as
``evaluator.predict`` does for the plain path.
"""
from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import numpy as np
import torch

from public.data.collate import Batch, collate
from public.data.prefetcher import eval_resize, normalize
from public.data.transforms import Compose, RandomHorizontalFlip, Resize, build_transforms
from public.engine.evaluate.evaluator import detections_to_coco
from public.engine.export.runtime import is_onnx, load_onnx
from public.engine.runs.checkpoint import LoadedModel, load_for_inference
from public.engine.watch.logger import periodic_extra, progress
from public.ops.voting import MERGE_METHODS, merge_detections

logger = logging.getLogger("densedet")


def load_model(cfg, path: str, category_ids: list[int] | None = None, class_names: list[str] | None = None,
               checkpoint: dict | None = None) -> LoadedModel:
    """``load_for_inference``, or ``load_onnx`` for an exported ``.onnx`` file (run with ONNX Runtime)."""
    if is_onnx(path):
        return load_onnx(cfg, path, category_ids, class_names)
    return load_for_inference(cfg, path, category_ids, class_names, checkpoint)


def tta_passes(cfg) -> list[tuple[Compose, bool, tuple[float, float]]]:
    """One (transforms, flipped, (min, max) box size in original pixels) per augmented pass."""
    scales, ranges = tuple(cfg.tta_scales), tuple(cfg.tta_scale_ranges)
    if not scales:
        raise ValueError("tta_scales is empty")
    if not ranges:  # no ranges: every scale keeps every box
        ranges = ((0, float("inf")),) * len(scales)
    if len(ranges) != len(scales) or any(len(r) != 2 for r in ranges):
        raise ValueError(f"tta_scale_ranges must hold one (min, max) pair per scale of tta_scales: "
                         f"{len(scales)} scales {scales}, got {ranges}")
    if cfg.tta_merge not in MERGE_METHODS:
        raise ValueError(f"tta_merge must be one of {MERGE_METHODS}, got {cfg.tta_merge!r}")
    square = cfg.resize_mode == "square"
    passes = []
    for scale, size_range in zip(scales, ranges):
        for flip in (False, True) if cfg.tta_flip else (False,):
            # prob 1.0 always flips: RandomHorizontalFlip flips when random() < prob.
            steps = [Resize((int(scale),), cfg.tta_max_size, "choice", square)]
            steps += [RandomHorizontalFlip(1.0)] if flip else []
            passes.append((Compose(steps), flip, (float(size_range[0]), float(size_range[1]))))
    return passes


def to_original(detections: list[dict], batch: Batch, flipped: bool = False) -> list[dict]:
    """Per-image detections in input pixels -> original pixels (undo resize, then flip)."""
    out = []
    scales = batch.scales.to(batch.images.device)                  # [B, 2] (sx, sy)
    widths = batch.orig_sizes[:, 1].to(batch.images.device).float()  # [B]
    for det, scale, width in zip(detections, scales, widths):
        boxes = det["boxes"].float() / scale.repeat(2)             # [D, 4]
        if flipped:  # mirrored image: x' = W - x, so x1 = W - x2' and x2 = W - x1'
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        out.append({"boxes": boxes, "scores": det["scores"].float(), "labels": det["labels"]})
    return out


class Predictor:
    """model + decoder + preprocessing: RGB images as read -> detections in their pixels.

    Plain: ``build_transforms(cfg, train=False)`` (the evaluation resize), collate, normalise,
    model, decoder, boxes / scale. TTA (``tta=True``): the same at each pass of ``tta_passes``,
    per-pass boxes outside the pass's size range dropped, the rest pooled per image and
    merged (``merge_detections``), then the best ``detections_per_img``. Each pass keeps the
    decoder's own output (NMS'd, at most detections_per_img), so the pool is bounded by
    passes x detections_per_img per image.

    ``seconds`` / ``num_images`` accumulate the time of model + decoder (+ merging), device
    synchronised; reading and resizing images on the CPU are excluded, as data loading is.

    Args:
        model: in eval mode, on ``device``. decoder: ``cfg.build_decoder()``.
        device: where the model is. amp_dtype / channels_last: as for training.
    """

    def __init__(self, model, decoder, cfg, device, amp_dtype: torch.dtype | None = None,
                 channels_last: bool = False):
        self.model, self.decoder, self.cfg = model, decoder, cfg
        self.device = torch.device(device)
        self.amp_dtype, self.channels_last = amp_dtype, channels_last
        self.transforms = build_transforms(cfg, train=False)
        self.resize = eval_resize(cfg)  # test_resize="torchvision": resized on the device, after transforms
        self.seconds, self.num_images = 0.0, 0

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(self.num_images, 1)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _batch(self, samples: list[dict], transforms) -> Batch:
        return collate([transforms(sample) for sample in samples], self.cfg.size_divisible)

    def _forward(self, batch: Batch) -> list[dict]:
        """``batch`` on the device -> the decoder's detections in input pixels."""
        if getattr(self.model, "runs_decoder", False):  # an exported graph (OnnxModel): pixels in, detections out
            return self.model.detect(batch.images, batch.image_sizes)
        if batch.images.is_floating_point():                          # normalised by ``self.resize``
            images = batch.images
        else:
            images = normalize(batch.images, batch.image_sizes)       # [B, 3, H, W] float32
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            outputs = self.model(images)
        return self.decoder(outputs, batch.image_sizes)

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray] | list[dict], tta: bool = False) -> list[dict]:
        """images: uint8 [H, W, 3] RGB arrays, or samples as ``CocoDetection`` returns them
        without transforms. Returns per image {"boxes" [D, 4] xyxy original pixels,
        "scores" [D], "labels" [D]} on the device, by decreasing score."""
        samples = [image if isinstance(image, dict) else _sample(image) for image in images]
        if not tta:
            batch = self._batch(samples, self.transforms).to(self.device)
            if self.resize is not None and not getattr(self.model, "runs_decoder", False):
                batch = self.resize(batch)
            self._sync()
            start = time.perf_counter()
            detections = to_original(self._forward(batch), batch)
        else:
            passes = tta_passes(self.cfg)
            batches = [self._batch(samples, transforms) for transforms, _, _ in passes]  # CPU resizing, untimed
            self._sync()
            start = time.perf_counter()
            pooled: list[list[dict]] = [[] for _ in samples]
            for batch, (_, flipped, (min_size, max_size)) in zip(batches, passes):
                batch = batch.to(self.device)
                for i, det in enumerate(to_original(self._forward(batch), batch, flipped)):
                    sides = (det["boxes"][:, 2:] - det["boxes"][:, :2]).clamp(min=0)   # [D, 2]
                    size = (sides[:, 0] * sides[:, 1]).sqrt()                         # [D]
                    keep = (size > min_size) & (size <= max_size)                   # (min, max]
                    pooled[i].append({k: v[keep] for k, v in det.items()})
            detections = [merge_detections(
                torch.cat([d["boxes"] for d in dets]), torch.cat([d["scores"] for d in dets]),
                torch.cat([d["labels"] for d in dets]), self.cfg.tta_merge, self.cfg.nms_thresh,
                self.cfg.tta_vote_iou, self.cfg.detections_per_img, self.cfg.score_thresh) for dets in pooled]
        self._sync()
        self.seconds += time.perf_counter() - start
        self.num_images += len(samples)
        return detections


def _sample(image: np.ndarray) -> dict:
    """An image as read -> the sample dict the transforms expect (no boxes)."""
    return {"image": image, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
            "image_id": -1, "orig_size": image.shape[:2], "scale": (1.0, 1.0)}


def predict_tta(predictor: Predictor, loader, label_to_cat_id: list[int], log_interval: int = 50):
    """This process's shard with test-time augmentation -> (COCO result dicts, seconds per image).

    ``loader`` yields lists of untransformed samples (``build_loader(..., collate_fn=list)``
    over a dataset whose ``transforms`` is None).
    """
    was_training = predictor.model.training
    predictor.model.eval()
    results = []
    bar = progress(loader, len(loader), "evaluating with TTA", leave=False)
    for i, samples in enumerate(bar):
        detections = predictor(samples, tta=True)
        # Boxes are already in original pixels: a scale of 1 leaves them as they are.
        ids = SimpleNamespace(image_ids=torch.tensor([s["image_id"] for s in samples]),
                              scales=torch.ones(len(samples), 2))
        results.extend(detections_to_coco(detections, ids, label_to_cat_id))
        if (i + 1) % log_interval == 0:
            logger.info("evaluating with TTA [%d/%d]", i + 1, len(loader), extra=periodic_extra(bar))
    predictor.model.train(was_training)
    return results, predictor.seconds_per_image


def filter_by_thresholds(detections: dict, thresholds: torch.Tensor) -> dict:
    """Keep the detections whose score reaches their class's threshold (``thresholds`` [C])."""
    keep = detections["scores"] >= thresholds.to(detections["scores"].device)[detections["labels"]]
    return {k: v[keep] for k, v in detections.items()}
