"""Losses: torchvision's focal and GIoU losses, plus the IoU loss torchvision lacks."""
from __future__ import annotations

import torch
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

__all__ = ["sigmoid_focal_loss", "box_iou_loss"]


def box_iou_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "giou", eps: float = 1e-7) -> torch.Tensor:
    """Per-pair IoU-family loss of matching boxes [K, 4] xyxy -> [K].

    kind "giou": 1 - GIoU (torchvision's ``generalized_box_iou_loss``);
    kind "iou": -log(IoU), the UnitBox loss the FCOS paper's code uses for "iou".
    """
    if kind == "giou":
        return generalized_box_iou_loss(pred, target, reduction="none", eps=eps)
    if kind == "iou":
        lt = torch.maximum(pred[:, :2], target[:, :2])
        rb = torch.minimum(pred[:, 2:], target[:, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=1)
        area_pred = (pred[:, 2:] - pred[:, :2]).clamp(min=0).prod(dim=1)
        area_target = (target[:, 2:] - target[:, :2]).clamp(min=0).prod(dim=1)
        iou = inter / (area_pred + area_target - inter + eps)
        return -torch.log(iou.clamp(min=eps))
    raise ValueError(f"box loss must be 'giou' or 'iou', got {kind!r}")
