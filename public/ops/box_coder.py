"""Anchor-relative box deltas (dx, dy, dw, dh) of R-CNN and RetinaNet, and ATSS's two
regression types on top of them.

Same maths as torchvision's ``BoxCoder`` (no "+1" in widths, as detectron2 and torchvision
since 2019), written for any leading dimensions so that a whole batch encodes in one call.
"""
from __future__ import annotations

import math

import torch

from public.ops.boxes import box_centers, decode_distances

# torchvision / detectron2: exp() of a width delta above log(1000 / 16) would overflow the
# image by far; clamping keeps early-training predictions finite.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)

# BOX regression: deltas scaled by (wx, wy, ww, wh) = (10, 10, 5, 5), the official ATSS box
# coder's weights (those of Faster R-CNN's second stage), so the head's outputs are O(1).
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def encode_deltas(anchors: torch.Tensor, boxes: torch.Tensor,
                  weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """Deltas that move each anchor onto its box.

    Args:
        anchors: [..., 4] xyxy reference boxes.
        boxes: [..., 4] xyxy target boxes (broadcast with anchors).
        weights: (wx, wy, ww, wh) multipliers of the deltas.
    Returns:
        [..., 4] (wx * dx / w_a, wy * dy / h_a, ww * log(w / w_a), wh * log(h / h_a)).
    """
    wx, wy, ww, wh = weights
    anchor_w = anchors[..., 2] - anchors[..., 0]
    anchor_h = anchors[..., 3] - anchors[..., 1]
    anchor_x = anchors[..., 0] + 0.5 * anchor_w
    anchor_y = anchors[..., 1] + 0.5 * anchor_h
    box_w = boxes[..., 2] - boxes[..., 0]
    box_h = boxes[..., 3] - boxes[..., 1]
    box_x = boxes[..., 0] + 0.5 * box_w
    box_y = boxes[..., 1] + 0.5 * box_h
    return torch.stack([wx * (box_x - anchor_x) / anchor_w,
                        wy * (box_y - anchor_y) / anchor_h,
                        ww * torch.log(box_w / anchor_w),
                        wh * torch.log(box_h / anchor_h)], dim=-1)


def decode_deltas(anchors: torch.Tensor, deltas: torch.Tensor,
                  weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                  clip: float = DEFAULT_SCALE_CLAMP) -> torch.Tensor:
    """Inverse of ``encode_deltas``: anchors [..., 4] + deltas [..., 4] (broadcast) -> xyxy [..., 4].

    dw and dh are clamped at ``clip`` before exp(), as torchvision's ``BoxCoder.decode_single``.
    The result has the dtype of ``deltas``.
    """
    anchors = anchors.to(deltas.dtype)
    wx, wy, ww, wh = weights
    anchor_w = anchors[..., 2] - anchors[..., 0]
    anchor_h = anchors[..., 3] - anchors[..., 1]
    anchor_x = anchors[..., 0] + 0.5 * anchor_w
    anchor_y = anchors[..., 1] + 0.5 * anchor_h
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = (deltas[..., 2] / ww).clamp(max=clip)
    dh = (deltas[..., 3] / wh).clamp(max=clip)
    center_x = dx * anchor_w + anchor_x
    center_y = dy * anchor_h + anchor_y
    half_w = 0.5 * (torch.exp(dw) * anchor_w)
    half_h = 0.5 * (torch.exp(dh) * anchor_h)
    return torch.stack([center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h], dim=-1)


def decode_boxes(anchors: torch.Tensor, box_reg: torch.Tensor, regression_type: str,
                 octave_base_scale: float) -> torch.Tensor:
    """ATSS regression outputs -> xyxy boxes; anchors [..., 4] and box_reg [..., 4] broadcast.

    BOX: (dx, dy, dw, dh) deltas with weights (10, 10, 5, 5), width/height clamped at
    log(1000/16) before exp (torchvision's BoxCoder maths, no "+1").
    POINT: (l, t, r, b) from the anchor centre in units of anchor side / octave_base_scale.
    The official coder divides by the anchor side ("+1" included) times
    ANCHOR_SIZES[0] / ANCHOR_STRIDES[0] = 8, i.e. one unit is one stride for the 8-stride
    anchors; the same here, without the "+1".
    """
    if regression_type == "BOX":
        return decode_deltas(anchors, box_reg, BOX_WEIGHTS)
    if regression_type == "POINT":
        unit = (anchors[..., 2:] - anchors[..., :2]) / octave_base_scale   # [..., 2] (w, h) units
        return decode_distances(box_centers(anchors), box_reg * torch.cat([unit, unit], dim=-1))
    raise ValueError(f"regression_type must be 'BOX' or 'POINT', got {regression_type!r}")
