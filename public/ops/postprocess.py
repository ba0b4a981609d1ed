"""Batched post-processing shared by the decoders: top-k per level, NMS, max detections.

No Python loop over images: candidates of all images are ranked with one ``topk`` per level
and suppressed with one ``batched_nms`` whose groups are (image, class) pairs.
"""
from __future__ import annotations

import torch
from torchvision.ops import batched_nms


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
        top_scores, top_idx = level.topk(min(k, level.shape[1]), dim=1)  # [B, k_l]
        out_scores.append(top_scores)
        out_locs.append(top_idx + start * C)                       # flat index into N * C
        start += count
    top_scores = torch.cat(out_scores, dim=1)                      # [B, K]
    flat = torch.cat(out_locs, dim=1)                              # [B, K]
    return top_scores, flat // C, flat % C, top_scores >= 0


def nms_per_image(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                  num_classes: int, nms_thresh: float, max_per_image: int) -> list[dict[str, torch.Tensor]]:
    """Class-wise NMS within each image, then the ``max_per_image`` best of each image.

    Args: boxes [B, K, 4], scores [B, K], labels [B, K] in 0..num_classes-1, valid bool [B, K].
    Returns: per image {"boxes": [D, 4], "scores": [D], "labels": [D]}, by decreasing score.
    """
    B, K = scores.shape
    image_idx = torch.arange(B, device=scores.device)[:, None].expand(B, K)
    image_idx, boxes, scores, labels = image_idx[valid], boxes[valid], scores[valid], labels[valid]
    keep = batched_nms(boxes, scores, image_idx * num_classes + labels, nms_thresh)  # by decreasing score
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
