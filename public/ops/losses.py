"""Losses: torchvision's focal and GIoU losses, plus the IoU loss torchvision lacks, and the
``DenseLoss`` base of the detectors' losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss


__all__ = ["sigmoid_focal_loss", "box_iou_loss", "focal_loss_per_location", "official_fcos_iou_loss", "DenseLoss"]


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


def official_fcos_iou_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "giou") -> torch.Tensor:
    """The official FCOS code's IoU loss (fcos_core IOULoss) on distances from the same point.

    pred, target: [K, 4] (l, t, r, b) >= 0 in regression units (strides with
    ``norm_reg_targets``, pixels otherwise). IoU = (inter + 1) / (union + 1): the +1, in those
    units, softens the loss of small boxes; GIoU = IoU - (enclosing - union) / enclosing.
    kind "iou": -log(IoU); "giou": 1 - GIoU. Returns [K].
    """
    target_area = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    pred_area = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    low, high = torch.minimum(pred, target), torch.maximum(pred, target)   # [K, 4] each
    inter = (low[:, 0] + low[:, 2]) * (low[:, 1] + low[:, 3])
    enclosing = (high[:, 0] + high[:, 2]) * (high[:, 1] + high[:, 3]) + 1e-7
    union = target_area + pred_area - inter
    iou = (inter + 1.0) / (union + 1.0)
    if kind == "iou":
        return -torch.log(iou)
    if kind == "giou":
        return 1 - (iou - (enclosing - union) / enclosing)
    raise ValueError(f"official FCOS IoU loss kind must be 'giou' or 'iou', got {kind!r}")


def focal_loss_per_location(logits: torch.Tensor, batch_idx: torch.Tensor, loc_idx: torch.Tensor,
                            labels: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (RetinaNet paper, Eq. 5) summed over classes, per location.

    The same numbers as torchvision's ``sigmoid_focal_loss`` on a one-hot target, computed
    without building the [B, N, C] target: every (location, class) pair is first scored as a
    negative, alpha' * p^gamma * softplus(x) with alpha' = 1 - alpha, and the P positive pairs
    are then corrected to alpha * (1 - p)^gamma * softplus(-x). That is about half the passes
    over the largest tensor of the loss (RetinaNet: 9 anchors x C classes per location).

    Args:
        logits: [B, N, C] class logits.
        batch_idx, loc_idx, labels: [P] each, the positive (image, location, class) triples.
        alpha: weight of positives (negatives get 1 - alpha); < 0 disables the weighting.
    Returns:
        [B, N] loss per location (sum over its C classes).
    """
    alpha_pos, alpha_neg = (alpha, 1 - alpha) if alpha >= 0 else (1.0, 1.0)

    def as_negative(x):
        return torch.sigmoid(x).pow(gamma) * F.softplus(x) * alpha_neg

    per_location = as_negative(logits).sum(dim=2)                          # [B, N]
    x = logits[batch_idx, loc_idx, labels]                                 # [P]
    as_positive = (1 - torch.sigmoid(x)).pow(gamma) * F.softplus(-x) * alpha_pos
    return per_location.index_put((batch_idx, loc_idx), as_positive - as_negative(x), accumulate=True)


class DenseLoss(nn.Module):
    """Base of the dense detectors' losses: the focal loss settings (checked), and the
    positives of an assignment with their classification loss.

    A subclass reads its own settings and implements ``forward(outputs, targets)``.
    """

    def __init__(self, cfg):
        super().__init__()
        self.focal_alpha = cfg.focal_alpha
        self.focal_gamma = cfg.focal_gamma

    @staticmethod
    def positives(matched: torch.Tensor, targets: torch.Tensor):
        """An assignment's matched_gt int64 [B, N] (>= 0 for a box index) + targets [B, M, 5] ->
        positive bool [B, N]; and per positive: image index [P], location index [P], its
        matched box and label [P, 5] float32."""
        positive = matched >= 0                                         # [B, N]
        batch_idx, loc_idx = positive.nonzero(as_tuple=True)           # [P], [P]
        gt = targets[batch_idx, matched[batch_idx, loc_idx]].float()   # [P, 5]
        return positive, batch_idx, loc_idx, gt

    def focal_loss(self, cls_logits: torch.Tensor, batch_idx: torch.Tensor, loc_idx: torch.Tensor,
                   gt: torch.Tensor) -> torch.Tensor:
        """``focal_loss_per_location`` of cls_logits [B, N, C] with the positives of
        ``positives`` (labels in gt[:, 4]) -> [B, N]."""
        return focal_loss_per_location(cls_logits, batch_idx, loc_idx, gt[:, 4].long(),
                                       self.focal_alpha, self.focal_gamma)
