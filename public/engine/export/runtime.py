"""An exported ONNX detector run with ONNX Runtime, where test.py runs a checkpoint.

``load_onnx`` returns the same ``LoadedModel`` as ``load_for_inference``, with an
``OnnxModel`` in place of the network: the ``Predictor`` (detection, TTA) hands it the padded
uint8 batch and gets the decoded detections from the graph, and
``evaluate.evaluator.predict_onnx`` does the same over an evaluation loader. Preprocessing
(resize, padding) stays the config's, as for a checkpoint; the graph normalises, runs the
network and decodes (exporter.py).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from public.engine.runs.checkpoint import LoadedModel
from public.engine.export.exporter import METADATA_KEY, OUTPUT_NAMES, require_onnx
from public.engine.runs.stored import read_metadata  # noqa: F401  (re-exported: an exported file's run)

logger = logging.getLogger("densedet")


def is_onnx(path) -> bool:
    return str(path).lower().endswith(".onnx")


class OnnxModel(nn.Module):
    """An exported file (decoder in the graph) in an ONNX Runtime session.

    ``detect(images uint8/float [B, 3, H, W] 0-255 padded, image_sizes int64 [B, 2])`` ->
    per image {"boxes" [D, 4] xyxy input pixels, "scores" [D], "labels" [D]} as CPU tensors,
    by decreasing score. An ``nn.Module`` without parameters, so that code written for a
    model (``.eval()``, ``.to()``) runs unchanged; calling it as a network is an error.
    """

    runs_decoder = True   # Predictor: call detect() on the padded pixels, skip the decoder

    def __init__(self, path: str | Path, threads: int = 0):
        super().__init__()
        require_onnx()
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ORT raises its own exception types for a damaged file
            raise ValueError(f"onnxruntime cannot load {path}: {error}") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in metadata:
            raise ValueError(f"{path} was not written by export.py (no '{METADATA_KEY}' metadata): "
                             f"export the checkpoint with python export.py --checkpoint CKPT --out FILE")
        self.metadata = json.loads(metadata[METADATA_KEY])
        if self.metadata.get("raw"):
            raise ValueError(f"{path} was exported with --raw (head outputs only), so it has no decoder: "
                             f"export it again without --raw to run it with test.py")
        self.path = path
        self.output_names = list(OUTPUT_NAMES)

    def forward(self, images):
        raise RuntimeError(f"{self.path} holds model + decoder: call detect(images 0-255, image_sizes)")

    def detect(self, images: torch.Tensor, image_sizes: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        feed = {"images": images.detach().cpu().float().numpy(),
                "image_sizes": image_sizes.detach().cpu().to(torch.int64).numpy()}
        boxes, scores, labels, counts = self.session.run(self.output_names, feed)
        return [{"boxes": torch.from_numpy(boxes[i, :n]), "scores": torch.from_numpy(scores[i, :n]),
                 "labels": torch.from_numpy(labels[i, :n])} for i, n in enumerate(counts.tolist())]


def load_onnx(cfg, path: str, category_ids: list[int] | None = None,
              class_names: list[str] | None = None) -> LoadedModel:
    """``load_for_inference`` for an exported file: the classes and thresholds come from its
    metadata; ``category_ids`` (the data it is scored on), when given, must be the same."""
    model = OnnxModel(path)
    meta = model.metadata
    trained_ids = [int(i) for i in meta["classes"]["category_ids"]]
    if category_ids is not None and trained_ids != list(category_ids):
        raise ValueError(f"{path} was exported from a model trained on category ids {trained_ids} but the "
                         f"config's data ({cfg.val_annotations}) has {list(category_ids)}")
    _warn_differences(cfg, meta, path)
    return LoadedModel(model, cfg.resolve(), list(meta["classes"]["names"]), trained_ids, meta.get("score_thresholds"))


def _warn_differences(cfg, meta: dict, path) -> None:
    """Settings baked into the graph win over the config's; say so when they differ."""
    baked = {k: v for k, v in meta.get("decoder", {}).items() if getattr(cfg, k, v) != v}
    if baked:
        logger.warning("%s decodes with the settings it was exported with, not the config's: %s", path,
                       ", ".join(f"{k}={v} (config {getattr(cfg, k)})" for k, v in baked.items()))
    pre = meta.get("preprocess", {})
    differ = {k: pre[k] for k in ("test_min_size", "max_size", "resize_mode", "size_divisible")
              if k in pre and _plain(getattr(cfg, k, pre[k])) != _plain(pre[k])}
    if differ:
        logger.warning("%s was exported with preprocessing %s; the config resizes with %s", path, differ,
                       {k: getattr(cfg, k) for k in differ})


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value
