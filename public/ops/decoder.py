"""Batched post-processing shared by the decoders: the ``DenseDecoder`` base, top-k per level,
NMS, max detections.

No Python loop over images: candidates of all images are ranked with one ``topk`` per level
and suppressed with ``grouped_nms`` (``batched_nms`` whose groups are (image, class) pairs).
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import batched_nms



# Most boxes for which torchvision's ``batched_nms`` runs one NMS with the groups kept apart by
# coordinate offsets; above it, it runs one NMS per group, a Python loop with a host sync each
# (torchvision's thresholds, from its benchmarks: 1000 boxes on a CPU, 25000 on a GPU).
ONE_CALL_BOXES_GPU = 25_000


def grouped_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float,
                max_boxes_per_call: int | None = None) -> torch.Tensor:
    """``batched_nms`` over many groups, in calls of whole groups of at most about
    ``max_boxes_per_call`` boxes each (default: none on a CPU, where torchvision's per-group
    loop is its faster choice; ``ONE_CALL_BOXES_GPU`` elsewhere, so that a batch of images
    with many candidates costs a few offset NMS calls instead of one per (image, class)).
    Within a call the groups are renumbered from 0, which keeps the offsets small.

    Args: boxes [K, 4], scores [K], groups int [K].
    Returns: indices of the kept boxes [D], by decreasing score (as ``batched_nms``).
    """
    if max_boxes_per_call is None:
        max_boxes_per_call = 0 if boxes.device.type == "cpu" else ONE_CALL_BOXES_GPU
    if max_boxes_per_call <= 0 or boxes.shape[0] <= max_boxes_per_call:
        return batched_nms(boxes, scores, groups, iou_threshold)
    order = torch.argsort(groups, stable=True)                          # [K] group by group
    sorted_groups = groups[order]
    first = torch.ones_like(sorted_groups, dtype=torch.bool)
    first[1:] = sorted_groups[1:] != sorted_groups[:-1]                  # each group's first box
    position = torch.arange(order.numel(), device=order.device)
    group_start = torch.where(first, position, torch.zeros_like(position)).cummax(0).values
    call = group_start // max_boxes_per_call                             # [K] whole groups per call
    number = first.cumsum(0) - 1                                         # groups numbered 0, 1, ...
    local = number - number.new_full((int(call[-1]) + 1,), order.numel()).scatter_reduce(
        0, call, number, "amin")[call]                                   # renumbered from 0 per call
    sizes = torch.bincount(call).tolist()                                # one host sync
    keep = torch.cat([part[batched_nms(boxes[part], scores[part], ids, iou_threshold)]
                      for part, ids in zip(order.split(sizes), local.split(sizes))])
    return keep[scores[keep].sort(descending=True, stable=True).indices]


def topk_per_level(scores: torch.Tensor, candidates: torch.Tensor, num_per_level: list[int], k: int):
    """The k best candidate (location, class) pairs of each level of each image.

    Args:
        scores: [B, N, C] ranking scores (>= 0).
        candidates: bool [B, N, C], pairs that passed the score threshold.
        num_per_level: locations per level, summing to N.
        k: at most this many per level and image.
    Returns:
        scores [B, K], location index [B, K] into N, label [B, K], valid bool [B, K]
        (K = sum over levels of min(k, N_l * C); invalid slots are pairs that failed the threshold).
    """
    B, _, C = scores.shape
    masked = torch.where(candidates, scores, torch.full_like(scores, -1.0))
    out_scores, out_locs = [], []
    start = 0
    for count in num_per_level:
        level = masked[:, start:start + count].reshape(B, -1)      # [B, N_l * C]
        top_scores, top_idx = level.topk(_k_at_most(level, k), dim=1)  # [B, k_l]
        out_scores.append(top_scores)
        out_locs.append(top_idx + start * C)                       # flat index into N * C
        start += count
    top_scores = torch.cat(out_scores, dim=1)                      # [B, K]
    flat = torch.cat(out_locs, dim=1)                              # [B, K]
    return top_scores, flat // C, flat % C, top_scores >= 0


def _k_at_most(level: torch.Tensor, k: int):
    """min(k, level.shape[1]). Under ONNX tracing the level's size is a traced tensor, and a
    Python ``min`` would freeze the traced input's size into the graph; a tensor minimum keeps
    it dynamic (ONNX TopK takes k as a tensor)."""
    if not torch.jit.is_tracing():
        return min(k, level.shape[1])
    return torch.clamp(torch._shape_as_tensor(level)[1], max=k)


def nms_per_image(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                  num_classes: int, nms_thresh: float, max_per_image: int,
                  class_agnostic: bool = False) -> list[dict[str, torch.Tensor]]:
    """Class-wise NMS within each image (``class_agnostic``: across classes, so one object
    claimed by two classes keeps its best box), then the ``max_per_image`` best of each image.

    Args: boxes [B, K, 4], scores [B, K], labels [B, K] in 0..num_classes-1, valid bool [B, K].
    Returns: per image {"boxes": [D, 4], "scores": [D], "labels": [D]}, by decreasing score.
    """
    B, K = scores.shape
    image_idx = torch.arange(B, device=scores.device)[:, None].expand(B, K)
    image_idx, boxes, scores, labels = image_idx[valid], boxes[valid], scores[valid], labels[valid]
    groups = image_idx if class_agnostic else image_idx * num_classes + labels  # [V]
    keep = grouped_nms(boxes, scores, groups, nms_thresh)            # by decreasing score
    # Stable sort by image keeps each image's detections in decreasing score order.
    keep = keep[torch.sort(image_idx[keep], stable=True).indices]
    kept_images = image_idx[keep]
    counts = torch.bincount(kept_images, minlength=B)               # [B]
    first = torch.cumsum(counts, 0) - counts                         # [B] start of each image's run
    rank = torch.arange(keep.numel(), device=keep.device) - first[kept_images]
    keep = keep[rank < max_per_image]
    counts = counts.clamp(max=max_per_image).tolist()
    return [{"boxes": b, "scores": s, "labels": l}
            for b, s, l in zip(boxes[keep].split(counts), scores[keep].split(counts), labels[keep].split(counts))]


def centerness_scores(outputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """FCOS / ATSS ranking: outputs with ``cls_logits`` [B, N, C] and ``centerness`` [B, N] ->
    score sqrt(sigmoid(cls) * sigmoid(centerness)) [B, N, C] and class probability [B, N, C]."""
    cls_prob = outputs["cls_logits"].float().sigmoid()                  # [B, N, C]
    ctr_prob = outputs["centerness"].float().sigmoid()                  # [B, N]
    return torch.sqrt(cls_prob * ctr_prob[..., None]), cls_prob


class DenseDecoder(nn.Module):
    """Raw outputs of a dense detector + image_sizes [B, 2] (h, w before padding) -> per image
    {"boxes" [D, 4] xyxy input pixels, "scores" [D], "labels" [D] contiguous}.

    A subclass implements ``candidates``: the top-k candidates before NMS, which the ONNX
    export also decodes in its graph. This base ranks them (``top_candidates``), runs
    class-wise NMS at ``nms_thresh`` and keeps ``max_det`` per image. The attribute names are
    read by the export (``nms_thresh``, ``max_det``).
    """

    def __init__(self, cfg):
        super().__init__()
        self.score_thresh = cfg.score_thresh
        self.topk = cfg.topk_candidates
        self.nms_thresh = cfg.nms_thresh
        self.max_det = cfg.detections_per_img
        self.class_agnostic = cfg.class_agnostic_nms

    @torch.no_grad()
    def forward(self, outputs: dict, image_sizes: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        boxes, scores, labels, valid = self.candidates(outputs, image_sizes)
        return nms_per_image(boxes, scores, labels, valid, outputs["cls_logits"].shape[-1], self.nms_thresh,
                             self.max_det, self.class_agnostic)

    def candidates(self, outputs: dict, image_sizes: torch.Tensor):
        """boxes [B, K, 4] clipped xyxy, scores [B, K], labels [B, K], valid bool [B, K]."""
        raise NotImplementedError

    def top_candidates(self, outputs: dict, scores: torch.Tensor, passed: torch.Tensor):
        """The ``topk`` best pairs of each level (``topk_per_level``) and their regression.

        Args: scores [B, N, C] ranking scores; passed bool [B, N, C], pairs over the threshold.
        Returns: scores [B, K], location index [B, K] into N, labels [B, K], valid bool [B, K],
        ``box_reg`` of those locations [B, K, 4] float32.
        """
        top_scores, locs, labels, valid = topk_per_level(scores, passed, outputs["num_per_level"], self.topk)
        box_reg = outputs["box_reg"].float().gather(1, locs[..., None].expand(-1, -1, 4))  # [B, K, 4]
        return top_scores, locs, labels, valid, box_reg
