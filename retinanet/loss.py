"""RetinaNet target assignment and losses, vectorised over the whole batch.

Letters: B images, M ground-truth boxes per image (padded), N anchors over all levels,
C classes. Targets are ``[B, M, 5]`` (x1, y1, x2, y2, label) with pad rows of -1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from public.engine.distributed import all_reduce_mean
from public.ops.assign_max_iou import IGNORE, assign_by_iou
from public.ops.box_coder import decode_deltas, encode_deltas
from public.ops.losses import DenseLoss, box_iou_loss



class RetinaNetLoss(DenseLoss):
    """Raw RetinaNet outputs + targets [B, M, 5] -> {"loss_cls", "loss_box"}.

    Anchors are matched by IoU (``public.ops.assign_max_iou.assign_by_iou``: on the model's grids only
    the anchors near each box are looked at, with the dense rule's answer).
    - classification: sigmoid focal loss summed over all classes of the foreground and
      background anchors; anchors between the IoU thresholds are ignored (paper Sec. 4);
    - box: at foreground anchors, smooth L1 (Detectron, beta 0.11) or L1 (torchvision v1) on the
      anchor deltas summed over the 4 coordinates, or 1 - GIoU of the decoded box
      (torchvision v2).
    Normaliser (``loss_normalizer``): "batch" divides both sums by the foreground anchors of
    the batch, a total over processes divided by the world size, at least 1 (paper: "normalized
    by the number of anchors assigned to a ground-truth box"); "per_image" divides each
    image's sums by its own foreground count (at least 1) and averages over the images, as
    torchvision's ``RetinaNetHead.compute_loss``.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        self.fg_iou_thresh = cfg.fg_iou_thresh
        self.bg_iou_thresh = cfg.bg_iou_thresh
        self.allow_low_quality_matches = cfg.allow_low_quality_matches
        self.smooth_l1_beta = cfg.smooth_l1_beta
        self.box_loss_type = cfg.box_loss
        self.box_coder_weights = tuple(float(w) for w in cfg.box_coder_weights)
        self.normalizer = cfg.loss_normalizer

    def box_losses(self, anchors: torch.Tensor, deltas: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
        """anchors, predicted deltas, matched boxes: [P, 4] each -> loss per foreground anchor [P]."""
        if self.box_loss_type == "giou":
            return box_iou_loss(decode_deltas(anchors, deltas, self.box_coder_weights), gt_boxes, "giou")
        target = encode_deltas(anchors, gt_boxes, self.box_coder_weights)       # [P, 4]
        if self.box_loss_type == "l1":
            return F.l1_loss(deltas, target, reduction="none").sum(-1)
        return F.smooth_l1_loss(deltas, target, reduction="none", beta=self.smooth_l1_beta).sum(-1)

    def forward(self, outputs: dict, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        cls_logits = outputs["cls_logits"].float()                     # [B, N, C]
        box_reg = outputs["box_reg"].float()                           # [B, N, 4]
        anchors = outputs["anchors"]                                   # [N, 4]
        B = cls_logits.shape[0]
        matched = assign_by_iou(outputs, targets, self.fg_iou_thresh, self.bg_iou_thresh,
                                self.allow_low_quality_matches)         # [B, N]

        positive, batch_idx, anchor_idx, gt = self.positives(matched, targets)  # [B, N], [P], [P], [P, 5]

        focal = self.focal_loss(cls_logits, batch_idx, anchor_idx, gt)  # [B, N]
        not_ignored = (matched != IGNORE).to(focal.dtype)               # [B, N]
        cls_per_image = (focal * not_ignored).sum(dim=1)               # [B]

        box_per_anchor = self.box_losses(anchors[anchor_idx], box_reg[batch_idx, anchor_idx], gt[:, :4])  # [P]
        if self.normalizer == "batch":
            num_pos = all_reduce_mean(positive.sum().float()).clamp(min=1.0)
            return {"loss_cls": cls_per_image.sum() / num_pos, "loss_box": box_per_anchor.sum() / num_pos}
        # per_image: under DDP each process averages its images and gradients are averaged over
        # processes, which is the mean over all images.
        pos_per_image = positive.sum(dim=1).clamp(min=1).float()       # [B]
        box_per_image = box_per_anchor.new_zeros(B).index_add(0, batch_idx, box_per_anchor)  # [B]
        return {"loss_cls": (cls_per_image / pos_per_image).mean(),
                "loss_box": (box_per_image / pos_per_image).mean()}
