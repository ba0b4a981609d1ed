"""ATSS network: backbone + FPN + shared head -> raw per-anchor outputs.

The head is FCOS's (two 4-conv GN towers, per-level Scale, centerness on the regression
tower) on one square anchor per location; only what the regression means and how samples
are assigned differ (atss/loss.py).

Shape walk-through for a 2 x 3 x 800 x 1216 input, C classes:
    backbone+FPN -> P3..P7: [2, 256, 100, 152], [2, 256, 50, 76], [2, 256, 25, 38],
                            [2, 256, 13, 19], [2, 256, 7, 10]
    N = 15200 + 3800 + 950 + 247 + 70 = 20267 anchors (one per location)
    cls_logits [2, N, C], box_reg [2, N, 4], centerness [2, N],
    anchors [N, 4], points [N, 2], strides [N]
"""
from __future__ import annotations

import torch
from torch import nn

from public.models.backbone import build_backbone
from public.models.head import DenseHead
from public.ops.anchors import FPN_STRIDES, grid_points


# POINT regression starts at l = t = r = b = 4 anchor units (half the 8-stride anchor), as
# the official head's bias init for REGRESSION_TYPE 'POINT'.
POINT_BIAS_INIT = 4.0


def square_anchors(points: torch.Tensor, strides: torch.Tensor, octave_base_scale: float) -> torch.Tensor:
    """One square anchor of side ``octave_base_scale * stride`` centred on each point.

    points [N, 2] (x, y), strides [N] -> anchors [N, 4] xyxy.
    """
    half = (strides * (octave_base_scale / 2))[:, None]                   # [N, 1]
    return torch.cat([points - half, points + half], dim=1)               # [N, 4]


class ATSSHead(DenseHead):
    """``DenseHead`` with one anchor per location, a per-level Scale and a centerness logit on
    the regression tower: cls [B, N, C], box [B, N, 4], centerness [B, N].

    Args:
        regression_type: "BOX": Scale(x) are (dx, dy, dw, dh) deltas; "POINT": relu(Scale(x))
            are (l, t, r, b) in anchor units (official ATSS head).
        dcn: the last conv of each tower is a deformable conv.
    """

    def __init__(self, channels: int, num_classes: int, num_convs: int = 4, norm: str = "GN",
                 prior_prob: float = 0.01, regression_type: str = "BOX", dcn: bool = False,
                 num_levels: int = len(FPN_STRIDES)):
        point = regression_type == "POINT"
        super().__init__(channels, num_classes, num_convs, norm, prior_prob,
                         box_bias=POINT_BIAS_INIT if point else 0.0, box_activation="relu" if point else "none",
                         num_levels=num_levels, centerness_on="reg", dcn=dcn)
        self.regression_type = regression_type


class ATSS(nn.Module):
    """images float [B, 3, H, W] (normalised) -> dict of raw outputs, concatenated over levels:

    ``cls_logits`` [B, N, C], ``box_reg`` [B, N, 4] (deltas for BOX, l,t,r,b in anchor units
    for POINT), ``centerness`` [B, N] logits, ``anchors`` [N, 4] xyxy pixels, ``points``
    [N, 2] their centres, ``strides`` [N], ``num_per_level`` list of 5 ints, ``feature_sizes``
    (H_l, W_l) and ``level_strides`` of each level (the anchors' grids).
    """

    def __init__(self, cfg, num_classes: int):
        super().__init__()
        self.backbone = build_backbone(cfg)
        self.head = ATSSHead(cfg.fpn_channels, num_classes, cfg.num_convs, cfg.head_norm, cfg.prior_prob,
                             cfg.regression_type, cfg.head_dcn)
        self.anchor_offset = cfg.anchor_offset
        self.octave_base_scale = cfg.octave_base_scale
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> dict:
        features = list(self.backbone(images).values())   # P3..P7
        cls_logits, box_reg, centerness = self.head(features)
        points, strides, num_per_level = grid_points(
            [f.shape[-2:] for f in features], FPN_STRIDES, self.anchor_offset, images.device)
        anchors = square_anchors(points, strides, self.octave_base_scale)   # [N, 4]
        return {"cls_logits": cls_logits, "box_reg": box_reg, "centerness": centerness, "anchors": anchors,
                "points": points, "strides": strides, "num_per_level": num_per_level,
                "feature_sizes": [tuple(f.shape[-2:]) for f in features], "level_strides": FPN_STRIDES}
