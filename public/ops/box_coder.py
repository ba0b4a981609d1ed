"""Anchor-relative box deltas (dx, dy, dw, dh) of R-CNN and RetinaNet.

Same maths as torchvision's ``BoxCoder`` (no "+1" in widths, as detectron2 and torchvision
since 2019), written for any leading dimensions so that a whole batch encodes in one call.
"""
from __future__ import annotations

import math

import torch

# torchvision / detectron2: exp() of a width delta above log(1000 / 16) would overflow the
# image by far; clamping keeps early-training predictions finite.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


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
