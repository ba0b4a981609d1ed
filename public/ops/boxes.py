"""Box encodings shared by the detectors."""
from __future__ import annotations

import torch


def encode_distances(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Distances (left, top, right, bottom) from points to box sides.

    points [..., 2] (x, y) and boxes [..., 4] (x1, y1, x2, y2) broadcast -> [..., 4].
    All four are positive exactly when the point lies strictly inside the box.
    """
    x, y = points[..., 0], points[..., 1]
    return torch.stack([x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y], dim=-1)


def decode_distances(points: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Inverse of ``encode_distances``: points [..., 2] + ltrb [..., 4] -> xyxy [..., 4]."""
    x, y = points[..., 0], points[..., 1]
    return torch.stack([x - distances[..., 0], y - distances[..., 1], x + distances[..., 2], y + distances[..., 3]], dim=-1)


def centerness_target(distances: torch.Tensor) -> torch.Tensor:
    """FCOS centerness (paper Eq. 3): sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)); [..., 4] -> [...]."""
    left_right = distances[..., 0::2]
    top_bottom = distances[..., 1::2]
    ratio = (left_right.min(-1).values / left_right.max(-1).values) * (top_bottom.min(-1).values / top_bottom.max(-1).values)
    return ratio.clamp(min=0).sqrt()


def clip_boxes(boxes: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
    """Clip boxes [B, K, 4] to their image; image_sizes [B, 2] (h, w)."""
    h = image_sizes[:, 0].to(boxes.dtype)[:, None]
    w = image_sizes[:, 1].to(boxes.dtype)[:, None]
    x1 = torch.minimum(boxes[..., 0].clamp(min=0), w)
    y1 = torch.minimum(boxes[..., 1].clamp(min=0), h)
    x2 = torch.minimum(boxes[..., 2].clamp(min=0), w)
    y2 = torch.minimum(boxes[..., 3].clamp(min=0), h)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] -> [...]."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_centers(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] xyxy -> [..., 2] (x, y)."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2


def paired_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of corresponding boxes: [..., 4] and [..., 4] (broadcast) -> [...].

    torchvision's ``box_iou`` arithmetic (the same operations in the same order, so the same
    float values for a pair however it is laid out), in place on the result-sized buffers.
    """
    width = torch.minimum(boxes1[..., 2], boxes2[..., 2]).sub_(torch.maximum(boxes1[..., 0], boxes2[..., 0])).clamp_(min=0)
    height = torch.minimum(boxes1[..., 3], boxes2[..., 3]).sub_(torch.maximum(boxes1[..., 1], boxes2[..., 1])).clamp_(min=0)
    inter = width.mul_(height)                                   # [...]
    union = (box_area(boxes1) + box_area(boxes2)).sub_(inter)   # [...]
    return inter.div_(union.clamp_(min=torch.finfo(union.dtype).tiny))


def pairwise_iou(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of every anchor with every box of every image.

    anchors [N, 4] (shared by the batch) or [B, N, 4]; boxes [B, M, 4] -> [B, N, M].
    torchvision's ``box_iou`` is the 2-D case; ``paired_iou`` broadcasts it over the batch
    in place on the [B, N, M] buffers: this is the largest tensor of max-IoU matching, so each
    extra pass over it shows in the step time.
    """
    if anchors.dim() == 2:
        anchors = anchors[None]
    return paired_iou(anchors[:, :, None, :], boxes[:, None, :, :])   # [B, N, M]
