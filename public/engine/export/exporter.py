"""ONNX export of a detector: normalisation, network and (by default) the decoder in one graph.

The graph, for any batch size and any height and width (multiples of the config's
``size_divisible``, as ``collate`` pads them):

    inputs   images       float32 [B, 3, H, W]  RGB pixels 0-255, each image at the top left,
                                                 padding at the bottom and right (any value)
             image_sizes  int64   [B, 2]        (h, w) of each image before padding
    outputs  boxes        float32 [B, D, 4]     xyxy in input pixels, D = detections_per_img
             scores       float32 [B, D]        by decreasing score; 0 in unused slots
             labels       int64   [B, D]        contiguous 0..C-1; -1 in unused slots
             num_detections int64 [B]           slots used per image

``raw=True`` stops after the network: ``cls_logits`` [B, N, C], ``box_reg`` [B, N, 4],
``centerness`` [B, N] (FCOS, ATSS) and the per-location ``points`` [N, 2] (FCOS) or
``anchors`` [N, 4] (ATSS, RetinaNet), for a user's own decoder.

The file's metadata (``densedet`` key, JSON) holds what a runtime needs besides the graph:
class names and COCO category ids, the decoder settings, the preprocessing (resize sizes,
``size_divisible``) and any per-class score thresholds of the checkpoint.

Exported with the TorchScript-based exporter (``dynamo=False``) at opset 17: it traces the
decoder's data-dependent steps (threshold masks, top-k with k = min(k, level size), NMS)
into TopK / NonZero / NonMaxSuppression with dynamic sizes, using torchvision's registered
ONNX NMS symbolic. The torch.export-based exporter (the default of ``torch.onnx.export``
since PyTorch 2.9) needs every data-dependent size declared, which the boolean-mask steps
of the decoder do not fit without rewriting it.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.ops import nms

from public.data.prefetcher import normalize
from public.engine.runs.stored import METADATA_KEY

logger = logging.getLogger("densedet")

OPSET = 17
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
SCORE_WEIGHT_PX = 1000.0   # match_detections: a score difference of 1e-3 counts as 1 px


def require_onnx() -> None:
    """Raise ImportError with the fix when onnx or onnxruntime is missing."""
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export and inference need {' and '.join(missing)}, which are not installed: "
                          f"pip install -r requirements-dev.txt (or pip install onnx onnxruntime)")


def padded_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
               num_classes: int, nms_thresh: float, max_per_image: int, class_agnostic: bool = False):
    """Class-wise NMS per image into fixed-size outputs; the traceable twin of ``nms_per_image``
    (the same kept boxes in the same order), without Python-side sizes.

    Args: boxes [B, K, 4], scores [B, K], labels int64 [B, K], valid bool [B, K].
    Returns: boxes [B, D, 4], scores [B, D], labels [B, D] (-1 unused), counts int64 [B];
        D = max_per_image, each image's detections first, by decreasing score.
    """
    B, K = scores.shape[0], scores.shape[1]
    image_idx = torch.arange(B, device=scores.device)[:, None].expand(B, K)    # [B, K]
    image_idx, boxes, scores, labels = image_idx[valid], boxes[valid], scores[valid], labels[valid]  # [V]
    groups = image_idx if class_agnostic else image_idx * num_classes + labels  # [V]
    # One NMS over all (image, class) groups, kept apart by offsets larger than any box (as
    # torchvision's batched_nms). The zero keeps the max defined when nothing is valid. With
    # many images x classes the offsets grow (8 x 80 groups of 1333 px: ~8.5e5 px, where float32
    # steps are 0.06 px), so a pair whose IoU is within ~1e-4 of nms_thresh may be decided
    # differently from PyTorch's per-group NMS; the parity tests measure small batches.
    max_coordinate = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = groups.to(boxes.dtype)[:, None] * (max_coordinate + 1)            # [V, 1]
    keep = nms(boxes + offsets, scores, nms_thresh)                             # [D'] by decreasing score
    kept_images = image_idx[keep]                                               # [D']
    one_hot = (kept_images[:, None] == torch.arange(B, device=scores.device)[None, :]).long()  # [D', B]
    rank = (one_hot.cumsum(0) - 1).gather(1, kept_images[:, None]).squeeze(1)  # [D'] rank within its image
    fits = rank < max_per_image
    keep, kept_images, rank = keep[fits], kept_images[fits], rank[fits]         # [D'']
    slot = kept_images * max_per_image + rank                                   # [D''] into B * D
    out_boxes = boxes.new_zeros(B * max_per_image, 4).index_put((slot,), boxes[keep])
    out_scores = scores.new_zeros(B * max_per_image).index_put((slot,), scores[keep])
    out_labels = torch.full_like(out_scores, -1, dtype=torch.int64).index_put((slot,), labels[keep])
    counts = one_hot.sum(0).clamp(max=max_per_image)                            # [B]
    return (out_boxes.reshape(B, max_per_image, 4), out_scores.reshape(B, max_per_image),
            out_labels.reshape(B, max_per_image), counts)


class ExportModule(nn.Module):
    """(images 0-255 [B, 3, H, W], image_sizes [B, 2]) -> the graph's outputs (module docstring)."""

    def __init__(self, model: nn.Module, decoder: nn.Module | None):
        super().__init__()
        self.model, self.decoder = model, decoder

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor):
        outputs = self.model(normalize(images, image_sizes))
        if self.decoder is None:
            return tuple(outputs[name] for name in raw_output_names(outputs))
        boxes, scores, labels, valid = self.decoder.candidates(outputs, image_sizes)
        return padded_nms(boxes, scores, labels, valid, outputs["cls_logits"].shape[-1], self.decoder.nms_thresh,
                          self.decoder.max_det, self.decoder.class_agnostic)


def raw_output_names(outputs: dict) -> list[str]:
    """The raw outputs a model's output dict has, in the graph's order."""
    return (["cls_logits", "box_reg"] + (["centerness"] if "centerness" in outputs else [])
            + ["anchors" if "anchors" in outputs else "points"])


def export_onnx(model: nn.Module, decoder: nn.Module, out: str | Path, metadata: dict, raw: bool = False,
                example_size: tuple[int, int] = (64, 96)) -> list[str]:
    """Trace ``model`` (+ ``decoder`` unless ``raw``) into ``out`` with dynamic batch, height
    and width; store ``metadata`` under the ``densedet`` key. Returns the output names.

    Args:
        model: in eval mode, on the CPU. decoder: the config's decoder (``candidates`` and its
            ``nms_thresh`` / ``max_det`` are what the graph runs).
        example_size: (H, W) of the tracing input, multiples of 32; any size runs afterwards.
    """
    require_onnx()
    import onnx

    from public.models.dcn import DeformConv
    deformable = [name for name, module in model.named_modules() if isinstance(module, DeformConv)]
    if deformable:
        raise ValueError(f"the model has deformable convolutions ({deformable[0]}, ...: head_dcn / dcn_stages), "
                         f"which the ONNX exporter cannot write (torchvision's deform_conv2d has no ONNX export "
                         f"at opset {OPSET}): export a model trained without them")
    model = model.eval()
    module = ExportModule(model, None if raw else decoder).eval()
    images = torch.randint(0, 256, (2, 3, *example_size)).float()
    image_sizes = torch.tensor([list(example_size), [example_size[0] - 16, example_size[1] - 32]])
    with torch.no_grad():
        names = raw_output_names(model(normalize(images[:1]))) if raw else list(OUTPUT_NAMES)
    dynamic = {"images": {0: "batch", 2: "height", 3: "width"}, "image_sizes": {0: "batch"}}
    if raw:
        dynamic.update({n: {0: "batch", 1: "locations"} for n in names[:-1]})
        dynamic[names[-1]] = {0: "locations"}
    else:
        dynamic.update({n: {0: "batch"} for n in names})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about every shape it reads; the ones that matter are dynamic by
        # construction (see _k_at_most), and the parity tests check other sizes.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (images, image_sizes), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=["images", "image_sizes"], output_names=names, dynamic_axes=dynamic,
                          do_constant_folding=True)
    graph = onnx.load(str(tmp))
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(graph, str(tmp))
    tmp.replace(out)
    return names


def export_metadata(cfg, model_name: str, class_names: list[str], category_ids: list[int], raw: bool,
                    score_thresholds: list | None, checkpoint: str, model_type: str | None = None) -> dict:
    """What a runtime needs besides the graph (stored in the file, read by ``OnnxModel``), and
    the run's whole config with its model type (``fcos.config``), from which test.py takes the
    evaluation data and sizes when it is given the file without --config."""
    return {"format": "densedet-onnx", "model": model_name, "model_type": model_type, "raw": raw,
            "checkpoint": str(checkpoint), "config": cfg.to_dict(),
            "classes": {"names": list(class_names), "category_ids": [int(i) for i in category_ids]},
            "score_thresholds": score_thresholds,
            "preprocess": {"test_min_size": cfg.test_min_size, "max_size": cfg.max_size,
                           "resize_mode": cfg.resize_mode, "size_divisible": cfg.size_divisible,
                           "input": "float32 RGB 0-255 [B, 3, H, W], padded at the bottom/right"},
            "decoder": {"score_thresh": cfg.score_thresh, "topk_candidates": cfg.topk_candidates,
                        "nms_thresh": cfg.nms_thresh, "detections_per_img": cfg.detections_per_img,
                        "class_agnostic_nms": cfg.class_agnostic_nms},
            "opset": OPSET}


@torch.no_grad()
def compare_with_pytorch(model: nn.Module, decoder: nn.Module, path: str | Path, images: torch.Tensor,
                         image_sizes: torch.Tensor, raw: bool = False) -> dict:
    """Run the file at ``path`` in ONNX Runtime and ``model`` (+ ``decoder``) in PyTorch on the
    same input; return the largest differences.

    Args: images float [B, 3, H, W] 0-255, image_sizes int64 [B, 2].
    Returns (decoded): {"candidates": before NMS, "detections": PyTorch's in all, "count_mismatch": images whose numbers
        of detections differ, "unmatched": PyTorch detections without their own ONNX partner
        of the same label, "box": max |box difference| px, "score": max |score difference|}
        over the pairs (``match_detections``).
        (raw): {name: max |difference|} per output.
    """
    require_onnx()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"images": images.float().numpy(), "image_sizes": image_sizes.numpy()})
    outputs = model(normalize(images.float(), image_sizes))
    if raw:
        names = raw_output_names(outputs)
        return {n: float(np.abs(outputs[n].numpy() - o).max()) for n, o in zip(names, onnx_out)}
    reference = decoder(outputs, image_sizes)
    boxes, scores, labels, counts = onnx_out
    candidates = int(decoder.candidates(outputs, image_sizes)[3].sum())
    report = {"candidates": candidates, "detections": 0, "count_mismatch": 0, "unmatched": 0, "box": 0.0,
              "score": 0.0}
    for i, ref in enumerate(reference):
        n = int(counts[i])
        report["count_mismatch"] += n != len(ref["scores"])
        report["detections"] += len(ref["scores"])
        box, score, unmatched = match_detections(ref["boxes"].numpy(), ref["scores"].numpy(), ref["labels"].numpy(),
                                                 boxes[i, :n], scores[i, :n], labels[i, :n])
        report["box"], report["score"] = max(report["box"], box), max(report["score"], score)
        report["unmatched"] += unmatched
    return report


def match_detections(ref_boxes, ref_scores, ref_labels, boxes, scores, labels) -> tuple[float, float, int]:
    """Pair each reference detection with the closest detection of the same label (largest
    of the box coordinates' differences and 1000 x the score difference).

    Detections with (nearly) equal scores may come out in either order from two runtimes, so
    they are compared by matching, not position. Args: numpy boxes [D, 4], scores [D],
    labels [D] for each side. Returns (max |box difference| px, max |score difference| over the
    pairs, reference detections without a partner of their own: no same-label detection, or
    one already taken).
    """
    if len(ref_scores) == 0 or len(scores) == 0:
        return 0.0, 0.0, len(ref_scores)
    box_distance = np.abs(ref_boxes[:, None, :] - boxes[None, :, :]).max(-1)       # [D_ref, D]
    score_distance = np.abs(ref_scores[:, None] - scores[None, :])                  # [D_ref, D]
    # Boxes alone can be equal (zero-area boxes clipped at the same image border survive NMS
    # side by side): the score tells those apart, 1e-3 in score weighing as 1 px.
    distance = np.maximum(box_distance, SCORE_WEIGHT_PX * score_distance)
    distance = np.where(ref_labels[:, None] == labels[None, :], distance, np.inf)
    nearest = distance.argmin(1)                                                   # [D_ref]
    found = np.isfinite(distance[np.arange(len(nearest)), nearest])
    _, first = np.unique(nearest[found], return_index=True)
    unmatched = int((~found).sum()) + int(found.sum() - len(first))
    if not found.any():
        return 0.0, 0.0, unmatched
    pairs = np.flatnonzero(found)
    box = float(box_distance[pairs, nearest[pairs]].max())
    score = float(score_distance[pairs, nearest[pairs]].max())
    return box, score, unmatched
