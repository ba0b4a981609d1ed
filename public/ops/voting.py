"""Merging detections of several test-time augmentations of one image: NMS, box voting,
soft box voting.

All three start from class-wise NMS of the pooled set; they differ in what a kept box
becomes. Letters: N = pooled detections of one image, K = detections kept by NMS.
"""
from __future__ import annotations

import torch
from torchvision.ops import batched_nms, box_iou

MERGE_METHODS = ("vote", "soft_vote", "nms")


def merge_detections(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, method: str = "vote",
                     nms_thresh: float = 0.6, vote_iou: float = 0.66, max_detections: int = 100,
                     soft_min_score: float = 0.05) -> dict[str, torch.Tensor]:
    """Pooled detections of one image -> merged detections, best first.

    Args:
        boxes: [N, 4] xyxy, scores: [N], labels: [N] int64 (all augmentations of one image,
            in one coordinate frame).
        method: "nms": class-wise NMS at ``nms_thresh``. "vote": NMS, then box voting
            (``box_vote``). "soft_vote": greedy clusters at ``vote_iou`` merged into one box
            each, plus soft-NMS-rescored copies of the cluster members (``soft_box_vote``).
        max_detections: at most this many are returned.
    Returns:
        {"boxes": [D, 4], "scores": [D], "labels": [D]} by decreasing score, D <= max_detections.
    """
    if method not in MERGE_METHODS:
        raise ValueError(f"tta_merge must be one of {MERGE_METHODS}, got {method!r}")
    if method == "soft_vote":
        boxes, scores, labels = soft_box_vote(boxes, scores, labels, vote_iou, soft_min_score)
        order = scores.argsort(descending=True)
    else:
        order = batched_nms(boxes, scores, labels, nms_thresh)          # [K] by decreasing score
        if method == "vote":
            boxes = box_vote(boxes[order], labels[order], boxes, scores, labels, vote_iou)
            scores, labels, order = scores[order], labels[order], torch.arange(order.numel(), device=order.device)
    order = order[:max_detections]
    return {"boxes": boxes[order], "scores": scores[order], "labels": labels[order]}


def box_vote(kept_boxes: torch.Tensor, kept_labels: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
             labels: torch.Tensor, vote_iou: float) -> torch.Tensor:
    """Box voting (Gidaris & Komodakis 2015; Detectron's ``box_voting``): each kept box
    becomes the score-weighted mean of all pooled boxes of its class that overlap it with
    IoU >= ``vote_iou`` (itself included, so the weights never sum to 0). Scores are kept.

    Args:
        kept_boxes: [K, 4], kept_labels: [K] (the survivors of NMS).
        boxes, scores, labels: [N, 4], [N], [N], the pooled set the votes come from.
    Returns:
        [K, 4] voted boxes.
    """
    if kept_boxes.numel() == 0:
        return kept_boxes
    voters = (box_iou(kept_boxes, boxes) >= vote_iou) & (kept_labels[:, None] == labels[None, :])  # [K, N]
    weights = voters * scores[None, :]                                  # [K, N]
    return (weights @ boxes) / weights.sum(dim=1, keepdim=True)          # [K, 4]


def soft_box_vote(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, vote_iou: float,
                  min_score: float = 0.05) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft box voting, the variant of the FCOS/ATSS test-time augmentation code.

    1. Greedy clusters, per class: the best remaining box takes every remaining box with
       IoU > ``vote_iou``; repeat. (These are exactly NMS's clusters: a box belongs to the
       first kept box, in score order, that overlaps it enough; computed here in one step.)
    2. Each cluster of two or more becomes one box: the score-weighted mean of its members,
       scored with the best member's score.
    3. Its members other than the leader also stay, rescored softly as score * (1 - IoU with
       the leader) (soft-NMS, linear), if that is still >= ``min_score``. A cluster of one
       stays as it is.

    Deviation: clusters take IoU > ``vote_iou`` (torchvision's NMS), the original code >=;
    the two differ only for IoUs exactly equal to ``vote_iou``.

    Returns:
        boxes [D, 4], scores [D], labels [D], unordered.
    """
    if boxes.shape[0] == 0:
        return boxes, scores, labels
    by_score = scores.argsort(descending=True)
    boxes, scores, labels = boxes[by_score], scores[by_score], labels[by_score]   # rank = index now
    leaders = batched_nms(boxes, scores, labels, vote_iou).sort().values           # [K] ranks, best first
    iou = box_iou(boxes[leaders], boxes)                                            # [K, N]
    # A member joins the first leader (in score order) of its class that overlaps it, ranked
    # at or above it: the one that would have suppressed it.
    ranks = torch.arange(len(boxes), device=boxes.device)                           # [N]
    joins = (iou > vote_iou) | (leaders[:, None] == ranks[None, :])                 # [K, N]
    joins &= (labels[leaders][:, None] == labels[None, :]) & (leaders[:, None] <= ranks[None, :])
    cluster = joins.int().argmax(dim=0)                                             # [N] first True
    iou_with_leader = iou[cluster, ranks]                                           # [N]

    size = torch.bincount(cluster, minlength=len(leaders))                          # [K]
    weighted = torch.zeros(len(leaders), 4, dtype=boxes.dtype, device=boxes.device)
    weighted.index_add_(0, cluster, boxes * scores[:, None])
    weight_sum = torch.zeros(len(leaders), dtype=scores.dtype, device=scores.device).index_add_(0, cluster, scores)
    merged_boxes = weighted / weight_sum[:, None]                                   # [K, 4]

    is_leader = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    is_leader[leaders] = True
    soft_scores = scores * (1 - iou_with_leader)                                    # [N]
    soft = ~is_leader & (size[cluster] > 1) & (soft_scores >= min_score)
    return (torch.cat([merged_boxes, boxes[soft]]), torch.cat([scores[leaders], soft_scores[soft]]),
            torch.cat([labels[leaders], labels[soft]]))
