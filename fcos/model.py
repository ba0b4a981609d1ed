"""FCOS network: backbone + FPN + shared head -> raw per-location outputs.

Shape walk-through for a 2 x 3 x 800 x 1216 input, C classes:
    backbone+FPN -> P3..P7: [2, 256, 100, 152], [2, 256, 50, 76], [2, 256, 25, 38],
                            [2, 256, 13, 19], [2, 256, 7, 10]
    N = 15200 + 3800 + 950 + 247 + 70 = 20267 locations
    cls_logits [2, N, C], box_reg [2, N, 4], centerness [2, N], points [N, 2], strides [N]
"""
from __future__ import annotations

import torch
from torch import nn

from public.models.backbone import build_backbone
from public.models.head import DenseHead
from public.ops.anchors import FPN_STRIDES, grid_points


class FCOSHead(DenseHead):
    """``DenseHead`` with one location per cell, a per-level Scale and a centerness logit:
    cls [B, N, C], box [B, N, 4] distances (l, t, r, b), centerness [B, N].

    Args:
        norm_reg_targets: regression is relu(Scale(x)) in units of the level's stride (FCOS
            "imprv", torchvision); otherwise exp(Scale(x)) in pixels (the paper).
        centerness_on_reg: centerness from the regression tower (imprv, torchvision) or the
            classification tower (the paper).
        reg_bias_init: initial bias of the 4 distances of relu regression, in strides. The
            official code and torchvision start at 0: every distance is then a small random
            value around 0, a distance that starts below 0 passes no gradient through the relu,
            and a box with one side at 0 has IoU 0 and a GIoU loss of exactly 1 with no gradient
            at all. From random init with SGD on the demo data (fcos/config.py, 256 channels)
            the box loss sat at exactly 1.000 for the first 3 epochs, and the model detected
            nothing until a few boxes came alive. A positive start (1: a 2x2-stride box) keeps
            every distance alive from the first step, as the official ATSS head does for its
            l,t,r,b regression (bias 4 anchor units).
    """

    def __init__(self, channels: int, num_classes: int, num_convs: int = 4, norm: str = "GN",
                 prior_prob: float = 0.01, norm_reg_targets: bool = True, centerness_on_reg: bool = True,
                 num_levels: int = len(FPN_STRIDES), reg_bias_init: float = 0.0):
        super().__init__(channels, num_classes, num_convs, norm, prior_prob,
                         box_bias=reg_bias_init if norm_reg_targets else 0.0,
                         box_activation="relu" if norm_reg_targets else "exp",
                         num_levels=num_levels, centerness_on="reg" if centerness_on_reg else "cls")
        self.norm_reg_targets = norm_reg_targets
        self.centerness_on_reg = centerness_on_reg


class FCOS(nn.Module):
    """images float [B, 3, H, W] (normalised) -> dict of raw outputs, concatenated over levels:

    ``cls_logits`` [B, N, C], ``box_reg`` [B, N, 4] (l, t, r, b; in strides if
    ``norm_reg_targets`` else pixels), ``centerness`` [B, N] logits, ``points`` [N, 2] (x, y)
    pixels, ``strides`` [N], ``num_per_level`` list of 5 ints, ``feature_sizes`` (H_l, W_l) per level.
    """

    def __init__(self, cfg, num_classes: int):
        super().__init__()
        self.backbone = build_backbone(cfg)
        self.head = FCOSHead(cfg.fpn_channels, num_classes, cfg.num_convs, cfg.head_norm, cfg.prior_prob,
                             cfg.norm_reg_targets, cfg.centerness_on_reg, reg_bias_init=cfg.reg_bias_init)
        self.location_offset = cfg.location_offset
        self.torchvision_steps = cfg.location_steps == "torchvision"
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> dict:
        features = list(self.backbone(images).values())   # P3..P7
        cls_logits, box_reg, centerness = self.head(features)
        points, strides, num_per_level = grid_points(
            [f.shape[-2:] for f in features], FPN_STRIDES, self.location_offset, images.device,
            image_size=tuple(images.shape[-2:]) if self.torchvision_steps else None)
        return {"cls_logits": cls_logits, "box_reg": box_reg, "centerness": centerness,
                "points": points, "strides": strides, "num_per_level": num_per_level,
                "feature_sizes": [tuple(f.shape[-2:]) for f in features]}
