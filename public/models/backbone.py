"""Backbone + FPN: torchvision ResNet/ResNeXt, torchvision's FeaturePyramidNetwork, P3-P7.

Module names follow torchvision's detection models (``body.*``, ``fpn.*``) so that their
state dicts load without renaming.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock
from torchvision.ops.misc import FrozenBatchNorm2d

from public.models.dcn import DeformConv

logger = logging.getLogger("densedet")

BACKBONES = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
)


class LastLevelP6P7(ExtraFPNBlock):
    """P6 = 3x3/2 conv of P5 (or C5), P7 = 3x3/2 conv of relu(P6).

    torchvision's block picks P5 or C5 from whether the channel counts happen to match;
    here it is an explicit choice (``p6_from``), with the same parameter names.
    """

    def __init__(self, in_channels: int, out_channels: int, use_p5: bool):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            nn.init.kaiming_uniform_(module.weight, a=1)
            nn.init.constant_(module.bias, 0)
        self.use_p5 = use_p5

    def forward(self, p: list[torch.Tensor], c: list[torch.Tensor], names: list[str]):
        p6 = self.p6(p[-1] if self.use_p5 else c[-1])
        p7 = self.p7(F.relu(p6))
        return p + [p6, p7], names + ["p6", "p7"]


def _load_imagenet_weights(net: nn.Module, name: str, local_path: str) -> None:
    if local_path:
        path = Path(local_path)
        if not path.is_file():
            raise FileNotFoundError(f"backbone_weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        source = str(path)
    else:
        weights = torchvision.models.get_model_weights(name)["IMAGENET1K_V1"]
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as error:  # no network, proxy, ...
            file_name = Path(weights.url).name
            cache = Path(torch.hub.get_dir()) / "checkpoints" / file_name
            raise RuntimeError(
                f"could not download ImageNet weights for {name} from {weights.url} ({error}).\n"
                f"Put the file at {cache} (torch hub cache), or pass backbone_weights=/path/to/{file_name}, "
                f"or train from scratch with pretrained=False."
            ) from error
        source = weights.url
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    # Deformable convs' offset/mask branches are new (zero-initialised): not in ImageNet weights.
    missing = [k for k in missing if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
               and ".conv_offset." not in k]
    if missing or unexpected:
        raise RuntimeError(f"backbone weights {source} do not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    logger.info("loaded ImageNet weights for %s from %s", name, source)


def use_deformable_convs(net: nn.Module, dcn_stages: tuple) -> None:
    """Swap the 3x3 conv (``conv2``) of every block of the chosen stages for a modulated
    deformable conv (DCNv2) with the same geometry and weights, in place.

    ``dcn_stages`` holds one bool per stage layer1..layer4; the DCNv2 paper and the ATSS
    DCN models use (False, True, True, True), i.e. the stages of C3-C5. In a Bottleneck ``conv2`` is the only 3x3 conv (it carries the stride and the
    ResNeXt groups); in a BasicBlock (ResNet-18/34) it is the second, stride-1 3x3 conv.
    Call before loading ImageNet weights: ``conv2.weight`` keeps its name and shape.
    """
    if len(dcn_stages) != 4:
        raise ValueError(f"dcn_stages needs 4 booleans (layer1..layer4), got {dcn_stages!r}")
    for index, enabled in enumerate(dcn_stages, start=1):
        if not enabled:
            continue
        for block in getattr(net, f"layer{index}"):
            block.conv2 = DeformConv.from_conv(block.conv2, modulated=True)


def build_backbone(cfg) -> BackboneWithFPN:
    """ResNet/ResNeXt C3-C5 + FPN P3-P5 + P6/P7. Output: OrderedDict of 5 maps with
    ``cfg.fpn_channels`` channels at strides 8, 16, 32, 64, 128.

    ``cfg`` is a run spec (``cfg.resolve()``): ``frozen_stages`` and ``freeze_bn`` are plain values
    there (their "auto": the paper's fine-tuning recipe with trained weights, everything trained
    from scratch).
    """
    cfg.require_spec("building the backbone")
    frozen_stages, freeze_bn = cfg.frozen_stages, cfg.freeze_bn
    norm_layer = FrozenBatchNorm2d if freeze_bn else nn.BatchNorm2d
    net = torchvision.models.get_model(cfg.backbone, weights=None, norm_layer=norm_layer)
    use_deformable_convs(net, cfg.dcn_stages)
    if cfg.pretrained or cfg.backbone_weights:
        _load_imagenet_weights(net, cfg.backbone, cfg.backbone_weights)

    # frozen_stages=1 freezes the stem and layer1, 2 also layer2, ...
    frozen = ["conv1", "bn1"] + [f"layer{i}" for i in range(1, frozen_stages + 1)] if frozen_stages else []
    for name, param in net.named_parameters():
        if any(name.startswith(prefix + ".") for prefix in frozen):
            param.requires_grad_(False)

    c3_channels = net.inplanes // 4  # inplanes is C5's channel count after construction
    in_channels_list = [c3_channels, c3_channels * 2, c3_channels * 4]
    use_p5 = cfg.p6_from == "p5"
    extra = LastLevelP6P7(cfg.fpn_channels if use_p5 else in_channels_list[-1], cfg.fpn_channels, use_p5)
    return BackboneWithFPN(net, {"layer2": "c3", "layer3": "c4", "layer4": "c5"},
                           in_channels_list, cfg.fpn_channels, extra_blocks=extra)

