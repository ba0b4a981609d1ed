"""Pieces every dense head shares: conv towers, the per-level Scale, the flatten helper."""
from __future__ import annotations

import math

import torch
from torch import nn


class Scale(nn.Module):
    """A learnable scalar multiplying one level's regression output (FCOS paper, Sec. 3.3:
    shared heads with exp(s_i x) so that each level can reach its own size range)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def head_norm_of(cfg) -> str:
    """``cfg.head_norm`` with "auto" resolved: GroupNorm towers when the model trains from
    random weights (no ``pretrained``, ``backbone_weights`` or ``init_from``), where plain towers
    (the RetinaNet paper's) do not learn to classify; the plain towers otherwise. A run that
    loads a checkpoint takes the checkpoint's value instead (``identity.take_auto_settings``)."""
    if cfg.head_norm != "auto":
        return cfg.head_norm
    return "none" if (cfg.pretrained or cfg.backbone_weights or cfg.init_from) else "GN"


def conv_tower(channels: int, num_convs: int, norm: str = "GN") -> nn.Sequential:
    """``num_convs`` x (3x3 conv, GroupNorm(32) or nothing, ReLU), as an ``nn.Sequential``.

    With GN the layout (conv, GN, ReLU, conv, GN, ReLU, ...) is the one of torchvision's FCOS
    head, so its ``conv.{i}`` parameters map index for index.
    """
    if norm not in ("GN", "none"):
        raise ValueError(f"head_norm must be 'GN' or 'none', got {norm!r}")
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.constant_(conv.bias, 0.0)
        layers.append(conv)
        if norm == "GN":
            layers.append(nn.GroupNorm(32, channels))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def prediction_conv(in_channels: int, out_channels: int, bias: float = 0.0) -> nn.Conv2d:
    """3x3 output conv, N(0, 0.01) weights and a constant bias."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.constant_(conv.bias, bias)
    return conv


def prior_bias(prior_prob: float) -> float:
    """Classifier bias so that every location starts at foreground probability ``prior_prob``
    (RetinaNet paper, Sec. 4.1: keeps the focal loss of the many negatives from swamping
    the first iterations)."""
    return -math.log((1 - prior_prob) / prior_prob)


def flatten_levels(per_level: list[torch.Tensor], channels_per_location: int) -> torch.Tensor:
    """[(B, A*K, H_l, W_l)] per level -> (B, sum_l H_l*W_l*A, K), levels concatenated.

    Location order within a level is row-major (y, x), then anchor a: the order of
    ``public.ops.anchors`` and of torchvision's heads.
    """
    out = []
    for x in per_level:
        b, _, h, w = x.shape
        x = x.view(b, -1, channels_per_location, h, w)   # [B, A, K, H, W]
        x = x.permute(0, 3, 4, 1, 2)                      # [B, H, W, A, K]
        out.append(x.reshape(b, -1, channels_per_location))  # [B, H*W*A, K]
    return torch.cat(out, dim=1)
