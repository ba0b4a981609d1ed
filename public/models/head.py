"""The dense head every detector here shares (``DenseHead``) and its pieces: conv towers, the
per-level Scale, the flatten helper."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from public.models.dcn import DeformConv


class Scale(nn.Module):
    """A learnable scalar multiplying one level's regression output (FCOS paper, Sec. 3.3:
    shared heads with exp(s_i x) so that each level can reach its own size range)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def conv_tower(channels: int, num_convs: int, norm: str = "GN") -> nn.Sequential:
    """``num_convs`` x (3x3 conv, GroupNorm(32) or nothing, ReLU), as an ``nn.Sequential``.

    With GN the layout (conv, GN, ReLU, conv, GN, ReLU, ...) is the one of torchvision's FCOS
    head, so its ``conv.{i}`` parameters map index for index. ``norm``: the spec's ``head_norm``,
    "GN" or "none" (its declaration allows nothing else).
    """
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


def deformable_last_conv(tower: nn.Sequential) -> nn.Sequential:
    """Replace the last 3x3 conv of a tower by a modulated deformable conv with the same weights
    (official ATSS USE_DCN_IN_TOWER: DFConv2d, DCNv2, as the last tower conv); in place."""
    index = max(i for i, layer in enumerate(tower) if isinstance(layer, nn.Conv2d))
    tower[index] = DeformConv.from_conv(tower[index], modulated=True)
    return tower


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


# What the box regression passes through after the (scaled) conv, by name.
BOX_ACTIVATIONS = {"relu": F.relu, "exp": torch.exp, "none": lambda x: x}


class DenseHead(nn.Module):
    """Shared over levels: a classification tower and a regression tower of ``num_convs`` 3x3
    convs, then A*C class logits and A*4 box values per location; optionally a per-level
    Scale on the box values and one centerness logit per location (FCOS, ATSS).

    Modules are created in a fixed order (towers, deformable convs, ``cls_logits``,
    ``bbox_pred``, ``centerness``, ``scales``), so that a seed gives the same initial weights
    to every head with the same parts, and their names are the state-dict keys of checkpoints
    and of the torchvision converters.

    Args:
        channels: FPN channels, in and through the towers.
        num_classes: C. ``num_anchors``: A per location (class rows anchor-major, row a*C + k).
        norm: "GN" or "none" in the towers. ``prior_prob``: initial foreground probability.
        box_bias: initial bias of the box values.
        box_activation: "relu", "exp" or "none", applied after the Scale.
        num_levels: one learnable Scale per level; 0 for none.
        centerness_on: "reg" or "cls", the tower the centerness conv reads; None for no centerness.
        dcn: the last conv of each tower is a modulated deformable conv.
    """

    def __init__(self, channels: int, num_classes: int, num_convs: int = 4, norm: str = "GN",
                 prior_prob: float = 0.01, *, num_anchors: int = 1, box_bias: float = 0.0,
                 box_activation: str = "none", num_levels: int = 0, centerness_on: str | None = None,
                 dcn: bool = False):
        super().__init__()
        if box_activation not in BOX_ACTIVATIONS:
            raise ValueError(f"box_activation must be one of {', '.join(BOX_ACTIVATIONS)}, got {box_activation!r}")
        if centerness_on not in ("reg", "cls", None):
            raise ValueError(f"centerness_on must be 'reg', 'cls' or None, got {centerness_on!r}")
        self.cls_tower = conv_tower(channels, num_convs, norm)
        self.reg_tower = conv_tower(channels, num_convs, norm)
        if dcn:
            deformable_last_conv(self.cls_tower)
            deformable_last_conv(self.reg_tower)
        self.cls_logits = prediction_conv(channels, num_anchors * num_classes, prior_bias(prior_prob))
        self.bbox_pred = prediction_conv(channels, num_anchors * 4, box_bias)
        self.centerness = prediction_conv(channels, 1) if centerness_on else None
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        self.num_classes = num_classes
        self.box_activation = box_activation
        self.centerness_on = centerness_on

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """features: [B, ch, H_l, W_l] per level -> cls [B, N, C], box [B, N, 4] and, with a
        centerness conv, centerness [B, N]; N = sum over levels of H_l * W_l * A."""
        activation = BOX_ACTIVATIONS[self.box_activation]
        cls_out, box_out, ctr_out = [], [], []
        for level, x in enumerate(features):
            cls_feat = self.cls_tower(x)
            reg_feat = self.reg_tower(x)
            box = self.bbox_pred(reg_feat)                             # [B, A*4, H, W]
            if len(self.scales):
                box = self.scales[level](box)
            cls_out.append(self.cls_logits(cls_feat))                  # [B, A*C, H, W]
            box_out.append(activation(box))
            if self.centerness is not None:
                ctr_out.append(self.centerness(reg_feat if self.centerness_on == "reg" else cls_feat))  # [B, 1, H, W]
        outputs = (flatten_levels(cls_out, self.num_classes),         # [B, N, C]
                   flatten_levels(box_out, 4))                         # [B, N, 4]
        if self.centerness is None:
            return outputs
        return outputs + (flatten_levels(ctr_out, 1).squeeze(-1),)   # [B, N]
