"""RetinaNet network: backbone + FPN + shared head -> raw per-anchor outputs.

Shape walk-through for a 2 x 3 x 800 x 1216 input, C classes, A = 9 anchors per location:
    backbone+FPN -> P3..P7: [2, 256, 100, 152], [2, 256, 50, 76], [2, 256, 25, 38],
                            [2, 256, 13, 19], [2, 256, 7, 10]
    head per level -> cls [2, A*C, H, W], box [2, A*4, H, W]
    N = (15200 + 3800 + 950 + 247 + 70) * 9 = 182403 anchors
    cls_logits [2, N, C], box_reg [2, N, 4], anchors [N, 4], num_per_level [136800, 34200, 8550, 2223, 630],
    feature_sizes [(100, 152), ..., (7, 10)], level_strides (8, 16, 32, 64, 128)
"""
from __future__ import annotations

import torch
from torch import nn

from public.models.backbone import build_backbone
from public.models.head import DenseHead
from public.ops.anchors import FPN_STRIDES, grid_anchors, retinanet_anchor_sizes


class RetinaNetHead(DenseHead):
    """``DenseHead`` with A anchors per location, no Scale, no centerness (paper Sec. 4,
    Fig. 3): cls [B, N, C] and box deltas [B, N, 4] for N = A * locations.

    The classifier's rows are anchor-major: row a*C + k is class k of anchor a (torchvision's
    layout, which ``flatten_levels`` reads).
    """

    def __init__(self, channels: int, num_anchors: int, num_classes: int, num_convs: int = 4,
                 norm: str = "none", prior_prob: float = 0.01):
        super().__init__(channels, num_classes, num_convs, norm, prior_prob, num_anchors=num_anchors)


class RetinaNet(nn.Module):
    """images float [B, 3, H, W] (normalised) -> dict of raw outputs, concatenated over levels:

    ``cls_logits`` [B, N, C], ``box_reg`` [B, N, 4] deltas (dx, dy, dw, dh) relative to
    ``anchors`` [N, 4] xyxy pixels, ``num_per_level`` anchors per level (5 ints),
    ``feature_sizes`` (H_l, W_l) and ``level_strides`` of each level (the anchors' grids).
    Order of N: level, row-major location, anchor (ratio major, size minor).
    """

    def __init__(self, cfg, num_classes: int):
        super().__init__()
        self.backbone = build_backbone(cfg)
        self.anchor_sizes = retinanet_anchor_sizes(cfg.anchor_octave_base, cfg.anchor_scales_per_octave,
                                                   FPN_STRIDES, integer=cfg.anchor_int_sizes)
        self.aspect_ratios = tuple(float(r) for r in cfg.aspect_ratios)
        self.anchor_offset = cfg.anchor_offset
        self.anchor_round_corners = cfg.anchor_round_corners
        self.torchvision_steps = cfg.location_steps == "torchvision"
        num_anchors = cfg.anchor_scales_per_octave * len(self.aspect_ratios)
        self.head = RetinaNetHead(cfg.fpn_channels, num_anchors, num_classes, cfg.num_convs, cfg.head_norm,
                                  cfg.prior_prob)
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> dict:
        features = list(self.backbone(images).values())   # P3..P7
        cls_logits, box_reg = self.head(features)
        anchors, num_per_level = grid_anchors(
            [f.shape[-2:] for f in features], FPN_STRIDES, self.anchor_sizes, self.aspect_ratios,
            self.anchor_offset, images.device, round_corners=self.anchor_round_corners,
            image_size=tuple(images.shape[-2:]) if self.torchvision_steps else None)
        return {"cls_logits": cls_logits, "box_reg": box_reg, "anchors": anchors, "num_per_level": num_per_level,
                "feature_sizes": [tuple(f.shape[-2:]) for f in features], "level_strides": FPN_STRIDES}
