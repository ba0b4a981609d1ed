"""Slow, obviously-correct references for the losses and decoders, written from the papers and
the official code's semantics with a Python loop per image, per box or per candidate.

Nothing here imports densedet's losses, box coders, assignment or post-processing: these
functions are what the fast, vectorised code is checked against (tests/test_reference.py).
Arithmetic is float64 unless a rule compares IoUs for equality, where float32 in torchvision's
operation order keeps exact ties exact.
"""
from __future__ import annotations

import math

import torch

SCALE_CLAMP = math.log(1000.0 / 16)   # torchvision / detectron2 clamp of dw, dh before exp


# ---- boxes ----------------------------------------------------------------------------------
def iou_xyxy(a, b) -> float:
    """IoU of two boxes given as 4 floats each."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def giou_xyxy(a, b) -> float:
    """Generalized IoU (Rezatofighi et al. 2019): IoU - (enclosing - union) / enclosing."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    enclosing = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (enclosing - union) / enclosing


def iou_matrix_f32(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """[N, 4] x [M, 4] -> [N, M] float32 IoU, torchvision's ``box_iou`` arithmetic order."""
    a, b = anchors.float(), boxes.float()
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def encode_deltas(anchor, box, weights=(1.0, 1.0, 1.0, 1.0)):
    """R-CNN deltas of one anchor to one box (4 floats each)."""
    aw, ah = anchor[2] - anchor[0], anchor[3] - anchor[1]
    ax, ay = anchor[0] + aw / 2, anchor[1] + ah / 2
    bw, bh = box[2] - box[0], box[3] - box[1]
    bx, by = box[0] + bw / 2, box[1] + bh / 2
    return [weights[0] * (bx - ax) / aw, weights[1] * (by - ay) / ah,
            weights[2] * math.log(bw / aw), weights[3] * math.log(bh / ah)]


def decode_deltas(anchor, deltas, weights=(1.0, 1.0, 1.0, 1.0)):
    """Inverse of ``encode_deltas`` with torchvision's clamp of dw, dh."""
    aw, ah = anchor[2] - anchor[0], anchor[3] - anchor[1]
    ax, ay = anchor[0] + aw / 2, anchor[1] + ah / 2
    dx, dy = deltas[0] / weights[0], deltas[1] / weights[1]
    dw, dh = min(deltas[2] / weights[2], SCALE_CLAMP), min(deltas[3] / weights[3], SCALE_CLAMP)
    cx, cy, w, h = ax + dx * aw, ay + dy * ah, math.exp(dw) * aw, math.exp(dh) * ah
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def centerness(point, box) -> float:
    """FCOS paper Eq. 3 for a point inside the box."""
    l, t, r, b = point[0] - box[0], point[1] - box[1], box[2] - point[0], box[3] - point[1]
    return math.sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))


# ---- loss terms -----------------------------------------------------------------------------
def focal_sum(logits: torch.Tensor, positives: dict, alpha: float, gamma: float, counted=None) -> float:
    """Sigmoid focal loss (RetinaNet paper Eq. 5) summed over one image's locations and classes.

    logits [N, C]; positives {location: class}; counted: bool [N] (None = all) of locations
    that take part (ignored anchors do not).
    """
    x = logits.double()
    p = x.sigmoid()
    target = torch.zeros_like(p)
    for n, c in positives.items():
        target[n, c] = 1.0
    # log(p) = -softplus(-x), log(1 - p) = -softplus(x): stable for large |x|
    log_p, log_not_p = -torch.nn.functional.softplus(-x), -torch.nn.functional.softplus(x)
    loss = -(alpha * target * (1 - p) ** gamma * log_p + (1 - alpha) * (1 - target) * p ** gamma * log_not_p)
    if counted is not None:
        loss = loss[counted]
    return loss.sum().item()


def bce_with_logits(x: float, y: float) -> float:
    return max(x, 0.0) - x * y + math.log1p(math.exp(-abs(x)))


def smooth_l1(d: float, beta: float) -> float:
    """Fast R-CNN's smooth L1 with Detectron's beta: 0.5 d^2 / beta below beta, |d| - beta / 2 above."""
    d = abs(d)
    return 0.5 * d * d / beta if d < beta else d - 0.5 * beta


# ---- decoding -------------------------------------------------------------------------------
def greedy_nms(boxes, scores, labels, threshold: float, class_agnostic: bool = False) -> list[int]:
    """Indices kept by greedy NMS in decreasing score: a box is dropped when its IoU with a kept
    box of its class (any class if ``class_agnostic``) exceeds ``threshold``."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept: list[int] = []
    for i in order:
        if all(iou_xyxy(boxes[i], boxes[j]) <= threshold for j in kept
               if class_agnostic or labels[j] == labels[i]):
            kept.append(i)
    return kept


def decode_image(rank_scores: torch.Tensor, candidate: torch.Tensor, num_per_level, topk: int,
                 box_of, image_size, nms_thresh: float, max_det: int, class_agnostic: bool = False):
    """One image: candidate (location, class) pairs -> the ``topk`` best per level -> boxes
    clipped to the image -> NMS -> the ``max_det`` best.

    rank_scores, candidate: [N, C]; box_of(location) -> 4 floats; image_size (h, w).
    Returns (boxes [D][4], scores [D], labels [D]) by decreasing score.
    """
    h, w = image_size
    boxes, scores, labels, start = [], [], [], 0
    for count in num_per_level:
        pairs = [(rank_scores[start + n, c].item(), n, c) for n, c in candidate[start:start + count].nonzero().tolist()]
        for score, n, c in sorted(pairs, key=lambda s: -s[0])[:topk]:
            x1, y1, x2, y2 = box_of(start + n)
            boxes.append([min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h)])
            scores.append(score)
            labels.append(c)
        start += count
    kept = greedy_nms(boxes, scores, labels, nms_thresh, class_agnostic)[:max_det]
    return [boxes[i] for i in kept], [scores[i] for i in kept], [labels[i] for i in kept]
