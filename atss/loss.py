"""ATSS losses, vectorised over the whole batch.

Letters: B images, M ground-truth boxes per image (padded), N anchors over all levels (one
per location), P positives, C classes. Targets are ``[B, M, 5]`` (x1, y1, x2, y2, label) with
pad rows of -1. An assignment gives ``matched_gt: int64 [B, N]``, the index into M of each
anchor's box, -1 for background (and -2 for "ignore" with the IoU rule).

The paper's point (Sec. 3-4) is that the sample assignment, not anchors vs points, is what
separates RetinaNet from FCOS; ``positive_type`` swaps the rule (atss/assign.py) with
everything else fixed: "ATSS" (the paper), "SSC" (FCOS's spatial and scale constraints),
"IoU" (RetinaNet's max-IoU rule) and "TOPK" (the k highest-IoU anchors of each box), as the
official code's MODEL.ATSS.POSITIVE_TYPE.
"""
from __future__ import annotations

import torch
from torch import nn

from atss.assign import atss_assign, ssc_assign, topk_assign
from public.engine.distributed import all_reduce_mean
from public.ops.assign_max_iou import IGNORE, assign_by_iou
from public.ops.box_coder import decode_boxes
from public.ops.boxes import box_centers, centerness_target, encode_distances
from public.ops.losses import DenseLoss, box_iou_loss


class ATSSLoss(DenseLoss):
    """Raw ATSS outputs + targets [B, M, 5] -> {"loss_cls", "loss_box", "loss_centerness"}.

    As the official code:
    - classification: sigmoid focal loss (alpha 0.25, gamma 2) summed over every anchor and
      class except ignored anchors (IoU rule), / positives;
    - box: ``box_loss_weight`` (2) x GIoU loss of the decoded boxes at positives, weighted by
      their centerness targets and / the sum of those targets;
    - centerness: BCE with logits against the centerness target at positives, / positives.
    The centerness target is FCOS's, from the anchor centre's (l, t, r, b) to its box (0 for a
    centre outside the box, possible only with the IoU rule). "Positives" and the centerness
    sum are totals over all processes divided by the world size, at least 1 (1e-6 for the sum).
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        self.regression_type = cfg.regression_type
        self.octave_base_scale = cfg.octave_base_scale
        self.box_loss_weight = cfg.box_loss_weight
        # positive_type -> function(outputs, targets) -> matched_gt [B, N]
        assigners = {
            "ATSS": lambda out, t: atss_assign(out["anchors"], out["num_per_level"], t, cfg.topk),
            "SSC": lambda out, t: ssc_assign(box_centers(out["anchors"]), out["strides"], out["num_per_level"], t,
                                             cfg.scale_boundaries),
            "IoU": lambda out, t: assign_by_iou(out, t, cfg.fg_iou_thresh, cfg.bg_iou_thresh, True),
            "TOPK": lambda out, t: topk_assign(out["anchors"], t, cfg.topk),
        }
        self.assign = assigners[cfg.positive_type]

    def forward(self, outputs: dict, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        cls_logits = outputs["cls_logits"].float()                     # [B, N, C]
        box_reg = outputs["box_reg"].float()                           # [B, N, 4]
        centerness = outputs["centerness"].float()                     # [B, N]
        anchors = outputs["anchors"].float()                           # [N, 4]
        matched = self.assign(outputs, targets)                        # [B, N]

        positive, batch_idx, loc_idx, gt = self.positives(matched, targets)  # [B, N], [P], [P], [P, 5]
        num_pos = all_reduce_mean(positive.sum().float()).clamp(min=1.0)

        focal = self.focal_loss(cls_logits, batch_idx, loc_idx, gt)     # [B, N]
        counted = (matched != IGNORE).to(focal.dtype)                  # [B, N], 0 at ignored anchors
        loss_cls = (focal * counted).sum() / num_pos

        pos_anchors = anchors[loc_idx]                                 # [P, 4]
        pred_boxes = decode_boxes(pos_anchors, box_reg[batch_idx, loc_idx], self.regression_type,
                                  self.octave_base_scale)               # [P, 4]
        distances = encode_distances(box_centers(pos_anchors), gt[:, :4])  # [P, 4]
        inside = distances.min(dim=1).values > 0
        ctr_target = torch.where(inside, centerness_target(distances.clamp(min=0)),
                                 torch.zeros_like(distances[:, 0]))   # [P]
        ctr_sum = all_reduce_mean(ctr_target.sum()).clamp(min=1e-6)
        loss_box = self.box_loss_weight * (box_iou_loss(pred_boxes, gt[:, :4], "giou") * ctr_target).sum() / ctr_sum
        loss_ctr = nn.functional.binary_cross_entropy_with_logits(
            centerness[batch_idx, loc_idx], ctr_target, reduction="sum") / num_pos
        return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_centerness": loss_ctr}
