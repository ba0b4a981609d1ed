"""FCOS target assignment and losses, vectorised over the whole batch.

Letters: B images, M ground-truth boxes per image (padded), N locations over all levels,
C classes. Targets are ``[B, M, 5]`` (x1, y1, x2, y2, label) with pad rows of -1.
"""
from __future__ import annotations

import torch
from torch import nn

from public.engine.distributed import all_reduce_mean
from public.ops.boxes import box_area, centerness_target, decode_distances, encode_distances
from public.ops.losses import box_iou_loss, sigmoid_focal_loss

INF = 1e8

# Elements of one [B, chunk, M] comparison; bounds assignment memory for crowded images.
ASSIGN_CHUNK_ELEMENTS = 1 << 24


def level_size_bounds(num_per_level: list[int], boundaries: tuple, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-location (lower, upper) bound on max(l, t, r, b) from the level boundaries.

    boundaries (64, 128, 256, 512) give P3 (0, 64), P4 (64, 128), ..., P7 (512, inf) (paper Sec. 3.2).
    """
    edges = [0.0] + [float(b) for b in boundaries] + [INF]
    if len(edges) != len(num_per_level) + 1:
        raise ValueError(f"scale_boundaries {boundaries} needs {len(num_per_level) - 1} values for {len(num_per_level)} levels")
    counts = torch.tensor(num_per_level, device=device)
    lower = torch.tensor(edges[:-1], device=device).repeat_interleave(counts)
    upper = torch.tensor(edges[1:], device=device).repeat_interleave(counts)
    return lower, upper  # [N], [N]


@torch.no_grad()
def fcos_assign(points: torch.Tensor, strides: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                targets: torch.Tensor, center_sampling_radius: float = 1.5) -> torch.Tensor:
    """Match every location to at most one ground-truth box (FCOS paper Sec. 3.1-3.2).

    A location is positive for a box when
      1. it lies strictly inside the box;
      2. with center sampling (radius r > 0), it lies strictly within r * stride of the box
         centre along x and y (the "imprv" rule; the region is implicitly clipped to the box by 1);
      3. its largest distance to a side, max(l, t, r, b), is within its level's (lower, upper)
         range, exclusive at both ends as torchvision's FCOS;
    and when several boxes qualify, the one with the smallest area wins (first in M on ties).

    Args:
        points [N, 2], strides [N], lower [N], upper [N], targets [B, M, 5] (pad rows -1).
    Returns:
        matched_gt: int64 [B, N], the index into M of each location's box, -1 for background.
    """
    B, M = targets.shape[:2]
    N = points.shape[0]
    matched = torch.full((B, N), -1, dtype=torch.long, device=points.device)
    if M == 0:
        return matched
    boxes = targets[..., :4].float()                                   # [B, M, 4]
    valid = targets[..., 4] >= 0                                       # [B, M]
    # Invalid (pad) boxes get an infinite area so they never win the min-area tie-break.
    areas = torch.where(valid, box_area(boxes), torch.full_like(boxes[..., 0], float("inf")))  # [B, M]
    centers = (boxes[..., :2] + boxes[..., 2:]) / 2                    # [B, M, 2]

    chunk = max(1, ASSIGN_CHUNK_ELEMENTS // max(1, B * M))
    for start in range(0, N, chunk):                                   # one pass unless crowded
        sl = slice(start, start + chunk)
        x = points[sl, 0][None, :, None]                                # [1, n, 1]
        y = points[sl, 1][None, :, None]
        x1, y1, x2, y2 = (boxes[:, None, :, i] for i in range(4))      # [B, 1, M] each
        left, top, right, bottom = x - x1, y - y1, x2 - x, y2 - y       # [B, n, M] each
        # 1. strictly inside the box
        inside = torch.minimum(torch.minimum(left, top), torch.minimum(right, bottom)) > 0
        # 3. the level's size range
        max_dist = torch.maximum(torch.maximum(left, top), torch.maximum(right, bottom))
        in_range = (max_dist > lower[sl][None, :, None]) & (max_dist < upper[sl][None, :, None])
        ok = inside & in_range & valid[:, None, :]
        # 2. center sampling
        if center_sampling_radius > 0:
            radius = (center_sampling_radius * strides[sl])[None, :, None]  # [1, n, 1]
            ok &= ((x - centers[:, None, :, 0]).abs() < radius) & ((y - centers[:, None, :, 1]).abs() < radius)
        # smallest area among the qualifying boxes
        masked_area = torch.where(ok, areas[:, None, :], torch.full_like(left, float("inf")))  # [B, n, M]
        min_area, gt_index = masked_area.min(dim=2)                     # [B, n]
        matched[:, sl] = torch.where(torch.isfinite(min_area), gt_index, torch.full_like(gt_index, -1))
    return matched


class FCOSLoss(nn.Module):
    """Raw FCOS outputs + targets [B, M, 5] -> {"loss_cls", "loss_box", "loss_centerness"}.

    - classification: sigmoid focal loss (alpha 0.25, gamma 2) summed, / positives;
    - box: GIoU (or -log IoU) of decoded boxes at positives, either unweighted / positives
      (``box_loss_weighting="none"``, torchvision) or weighted by the centerness targets and
      / their sum (``"centerness"``, the FCOS imprv code);
    - centerness: BCE with logits against the centerness target at positives, / positives.
    "Positives" and the centerness sum are totals over all processes divided by the world size
    (official FCOS; multi-GPU accuracy depends on it), at least 1 (1e-6 for the sum).
    """

    def __init__(self, cfg):
        super().__init__()
        self.center_sampling_radius = cfg.center_sampling_radius
        self.scale_boundaries = cfg.scale_boundaries
        self.norm_reg_targets = cfg.norm_reg_targets
        self.box_loss_type = cfg.box_loss
        self.box_loss_weighting = cfg.box_loss_weighting
        self.focal_alpha = cfg.focal_alpha
        self.focal_gamma = cfg.focal_gamma
        if self.box_loss_weighting not in ("none", "centerness"):
            raise ValueError(f"box_loss_weighting must be 'none' or 'centerness', got {self.box_loss_weighting!r}")

    def forward(self, outputs: dict, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        cls_logits = outputs["cls_logits"].float()                     # [B, N, C]
        box_reg = outputs["box_reg"].float()                           # [B, N, 4]
        centerness = outputs["centerness"].float()                     # [B, N]
        points, strides = outputs["points"], outputs["strides"]        # [N, 2], [N]
        lower, upper = level_size_bounds(outputs["num_per_level"], self.scale_boundaries, points.device)
        matched = fcos_assign(points, strides, lower, upper, targets, self.center_sampling_radius)  # [B, N]

        positive = matched >= 0                                         # [B, N]
        batch_idx, loc_idx = positive.nonzero(as_tuple=True)           # [P], [P]
        gt = targets[batch_idx, matched[batch_idx, loc_idx]].float()   # [P, 5]
        num_pos = all_reduce_mean(positive.sum().float()).clamp(min=1.0)

        cls_target = torch.zeros_like(cls_logits)                      # [B, N, C]
        cls_target[batch_idx, loc_idx, gt[:, 4].long()] = 1.0
        loss_cls = sigmoid_focal_loss(cls_logits, cls_target, self.focal_alpha, self.focal_gamma, reduction="sum") / num_pos

        pos_points = points[loc_idx]                                   # [P, 2]
        scale = strides[loc_idx, None] if self.norm_reg_targets else 1.0
        pred_boxes = decode_distances(pos_points, box_reg[batch_idx, loc_idx] * scale)  # [P, 4]
        ctr_target = centerness_target(encode_distances(pos_points, gt[:, :4]))        # [P]
        box_losses = box_iou_loss(pred_boxes, gt[:, :4], self.box_loss_type)           # [P]
        if self.box_loss_weighting == "centerness":
            ctr_sum = all_reduce_mean(ctr_target.sum()).clamp(min=1e-6)
            loss_box = (box_losses * ctr_target).sum() / ctr_sum
        else:
            loss_box = box_losses.sum() / num_pos
        loss_ctr = nn.functional.binary_cross_entropy_with_logits(
            centerness[batch_idx, loc_idx], ctr_target, reduction="sum") / num_pos
        return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_centerness": loss_ctr}
