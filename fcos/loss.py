"""FCOS target assignment and losses, vectorised over the whole batch.

Letters: B images, M ground-truth boxes per image (padded), N locations over all levels,
C classes. Targets are ``[B, M, 5]`` (x1, y1, x2, y2, label) with pad rows of -1.
"""
from __future__ import annotations

import torch
from torch import nn

from public.engine.distributed import all_reduce_mean
from public.ops.assign_fcos import fcos_assign, fcos_assign_sparse, level_size_bounds
from public.ops.boxes import centerness_target, decode_distances, encode_distances
from public.ops.losses import DenseLoss, box_iou_loss, official_fcos_iou_loss

__all__ = ["FCOSLoss", "fcos_assign", "level_size_bounds"]  # the assignment lives in public/ops/assign_fcos.py

# "giou" / "iou": (G)IoU of the decoded boxes (torchvision); "*_official": the official code's
# (inter + 1) / (union + 1) on the distances in regression units.


class FCOSLoss(DenseLoss):
    """Raw FCOS outputs + targets [B, M, 5] -> {"loss_cls", "loss_box", "loss_centerness"}.

    - classification: sigmoid focal loss (alpha 0.25, gamma 2) summed, / positives;
    - box: GIoU (or -log IoU) of decoded boxes at positives (``box_loss``; "*_official": the
      official code's smoothed IoU on the distances), either unweighted / positives
      (``box_loss_weighting="none"``, torchvision) or weighted by the centerness targets and
      / their sum (``"centerness"``, the FCOS imprv code);
    - centerness: BCE with logits against the centerness target at positives, / positives.
    "Positives" and the centerness sum are totals over all processes divided by the world size
    (official FCOS; multi-GPU accuracy depends on it), at least 1 (1e-6 for the sum).
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        # the assignment rule: scale ranges and center sampling
        self.scale_boundaries, self.center_sampling_radius = cfg.scale_boundaries, cfg.center_sampling_radius
        # the box loss on l, t, r, b (in strides with norm_reg_targets)
        self.norm_reg_targets, self.box_loss_type = cfg.norm_reg_targets, cfg.box_loss
        self.box_loss_weighting = cfg.box_loss_weighting

    def forward(self, outputs: dict, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        cls_logits = outputs["cls_logits"].float()                     # [B, N, C]
        box_reg = outputs["box_reg"].float()                           # [B, N, 4]
        centerness = outputs["centerness"].float()                     # [B, N]
        points, strides = outputs["points"], outputs["strides"]        # [N, 2], [N]
        lower, upper = level_size_bounds(outputs["num_per_level"], self.scale_boundaries, points.device)
        if self.center_sampling_radius > 0:  # only patches around box centres can match: gather them
            matched = fcos_assign_sparse(points, strides, lower, upper, targets, self.center_sampling_radius,
                                         outputs["feature_sizes"])     # [B, N]
        else:
            matched = fcos_assign(points, strides, lower, upper, targets, 0.0)  # [B, N]

        positive, batch_idx, loc_idx, gt = self.positives(matched, targets)  # [B, N], [P], [P], [P, 5]
        num_pos = all_reduce_mean(positive.sum().float()).clamp(min=1.0)

        loss_cls = self.focal_loss(cls_logits, batch_idx, loc_idx, gt).sum() / num_pos

        pos_points = points[loc_idx]                                   # [P, 2]
        scale = strides[loc_idx, None] if self.norm_reg_targets else 1.0
        pred_boxes = decode_distances(pos_points, box_reg[batch_idx, loc_idx] * scale)  # [P, 4]
        ctr_target = centerness_target(encode_distances(pos_points, gt[:, :4]))        # [P]
        if self.box_loss_type.endswith("_official"):   # on distances, in strides with norm_reg_targets
            target = encode_distances(pos_points, gt[:, :4]) / scale                  # [P, 4]
            box_losses = official_fcos_iou_loss(box_reg[batch_idx, loc_idx], target,
                                                self.box_loss_type[:-len("_official")])  # [P]
        else:
            box_losses = box_iou_loss(pred_boxes, gt[:, :4], self.box_loss_type)       # [P]
        if self.box_loss_weighting == "centerness":
            ctr_sum = all_reduce_mean(ctr_target.sum()).clamp(min=1e-6)
            loss_box = (box_losses * ctr_target).sum() / ctr_sum
        else:
            loss_box = box_losses.sum() / num_pos
        loss_ctr = nn.functional.binary_cross_entropy_with_logits(
            centerness[batch_idx, loc_idx], ctr_target, reduction="sum") / num_pos
        return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_centerness": loss_ctr}
