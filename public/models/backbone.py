"""Backbone + FPN: torchvision classification networks, torchvision's FeaturePyramidNetwork, P3-P7.

Families (torchvision's models, ImageNet weights from its weight enums or a local file):

- ResNet / ResNeXt: the body is the network up to ``layer4`` (C3-C5 = layer2..layer4).
- MobileNetV3 (large, small), EfficientNet (B0-B3), ConvNeXt (tiny, small): the body is the
  network's ``features`` (a Sequential).
- RegNet (X and Y, 400MF-1.6GF): the body is ``stem`` followed by ``trunk_output``'s stages.

In every family C3, C4 and C5 are the outputs of the body's last module at stride 8, 16 and 32,
found by a dummy forward of the built body (strides and channel counts are read from the model,
never from a table); the FPN turns them into P3-P5 and ``LastLevelP6P7`` adds P6 and P7.

Module names follow torchvision's detection models (``body.*``, ``fpn.*``) so that their
state dicts load without renaming.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
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

RESNETS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
)
BACKBONES = RESNETS + (
    "mobilenet_v3_large", "mobilenet_v3_small",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
    "regnet_x_400mf", "regnet_y_400mf", "regnet_x_800mf", "regnet_y_800mf", "regnet_x_1_6gf", "regnet_y_1_6gf",
    "convnext_tiny", "convnext_small",
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


# The classifier of each family (not part of a detection backbone; not loaded).
_CLASSIFIER_PREFIXES = ("fc.", "classifier.")


def imagenet_weights_name(name: str) -> str:
    """The torchvision weight enum member a backbone starts from with ``pretrained``: ResNets the
    papers' IMAGENET1K_V1 (also torchvision's detection models'), the other families torchvision's
    DEFAULT (its best: IMAGENET1K_V2 for MobileNetV3-Large and the RegNets)."""
    return "IMAGENET1K_V1" if name in RESNETS else "DEFAULT"


def _load_imagenet_weights(net: nn.Module, name: str, local_path: str) -> None:
    if local_path:
        path = Path(local_path)
        if not path.is_file():
            raise FileNotFoundError(f"backbone_weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        source = str(path)
    else:
        weights = torchvision.models.get_model_weights(name)[imagenet_weights_name(name)]
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
    state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    missing, unexpected = net.load_state_dict(state, strict=False)
    # Deformable convs' offset/mask branches are new (zero-initialised): not in ImageNet weights.
    missing = [k for k in missing if not k.startswith(_CLASSIFIER_PREFIXES) and not k.endswith("num_batches_tracked")
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


def _body(net: nn.Module, name: str) -> nn.Module:
    """The part of a classification network that maps an image to features: a module whose
    children, run in order, are its forward (what IntermediateLayerGetter needs)."""
    if name in RESNETS:
        return net  # conv1, bn1, relu, maxpool, layer1..layer4 (then avgpool, fc: cut off by the getter)
    if hasattr(net, "features"):  # MobileNetV3, EfficientNet, ConvNeXt
        return net.features
    if hasattr(net, "trunk_output"):  # RegNet: stem, block1..block4
        return nn.Sequential(OrderedDict([("stem", net.stem), *net.trunk_output.named_children()]))
    raise ValueError(f"backbone {name!r}: no known feature layout")


@torch.no_grad()
def body_strides(body: nn.Module) -> list[tuple[str, int, int]]:
    """(child name, output stride, output channels) of each child of ``body``, in forward order,
    read from a dummy forward of a 64 x 64 image (in eval mode: BatchNorm statistics untouched)."""
    was_training = body.training
    body.eval()
    size = 64
    x = torch.zeros(1, 3, size, size, device=next(body.parameters()).device)
    out = []
    for child_name, child in body.named_children():
        if isinstance(child, (nn.AdaptiveAvgPool2d, nn.Linear, nn.Flatten)):
            break
        x = child(x)
        out.append((child_name, size // x.shape[-1], x.shape[1]))
    body.train(was_training)
    return out


def feature_layers(body: nn.Module) -> tuple[dict[str, str], list[int], dict[str, int]]:
    """Where C3-C5 come from: ({child name: "c3" | "c4" | "c5"}, their channels [3], and the
    output stride of every child). C_k is the last child at stride 2**k."""
    strides = body_strides(body)
    return_layers, channels = {}, []
    for level in (3, 4, 5):
        at_stride = [(n, c) for n, s, c in strides if s == 2 ** level]
        if not at_stride:
            raise ValueError(f"the backbone has no feature map at stride {2 ** level} "
                             f"(children's strides: {[(n, s) for n, s, _ in strides]})")
        child_name, child_channels = at_stride[-1]
        return_layers[child_name] = f"c{level}"
        channels.append(child_channels)
    return return_layers, channels, {n: s for n, s, _ in strides}


def freeze_norm_layers(body: nn.Module) -> None:
    """Freeze the normalisation of a backbone, in place: every BatchNorm2d becomes a
    FrozenBatchNorm2d with its statistics, affine and eps (MobileNetV3's 0.001 stays 0.001);
    LayerNorms (ConvNeXt's), which hold no statistics, keep their affine fixed
    (requires_grad False), which is what freezing means for them."""
    for parent in body.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                frozen.weight.copy_(child.weight.detach())
                frozen.bias.copy_(child.bias.detach())
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
                setattr(parent, child_name, frozen)
            elif isinstance(child, nn.LayerNorm) or type(child).__name__ == "LayerNorm2d":
                child.requires_grad_(False)


def build_backbone(cfg) -> BackboneWithFPN:
    """A torchvision network's C3-C5 + FPN P3-P5 + P6/P7. Output: OrderedDict of 5 maps with
    ``cfg.fpn_channels`` channels at strides 8, 16, 32, 64, 128.

    ``cfg`` is a run spec (``cfg.resolve()``): ``frozen_stages`` and ``freeze_bn`` are plain values
    there (their "auto": the paper's fine-tuning recipe with trained weights, everything trained
    from scratch). ``frozen_stages`` k >= 1 freezes every child of the body whose output is at stride
    2**(k+1) or finer (the stem and the first k stages; ResNet: conv1, bn1, layer1..layer_k),
    0 none. ``freeze_bn``: see ``freeze_norm_layers``.
    """
    cfg.require_spec("building the backbone")
    frozen_stages, freeze_bn = cfg.frozen_stages, cfg.freeze_bn
    if cfg.backbone in RESNETS:
        norm_layer = FrozenBatchNorm2d if freeze_bn else nn.BatchNorm2d
        net = torchvision.models.get_model(cfg.backbone, weights=None, norm_layer=norm_layer)
        use_deformable_convs(net, cfg.dcn_stages)
    else:
        if any(cfg.dcn_stages):
            raise ValueError(f"dcn_stages={tuple(cfg.dcn_stages)!r} needs a ResNet backbone "
                             f"(backbone={cfg.backbone!r} has no layer1..layer4)")
        # The family's own BatchNorm (eps, momentum: MobileNetV3's 0.001 / 0.01) is kept.
        net = torchvision.models.get_model(cfg.backbone, weights=None)
    if cfg.pretrained or cfg.backbone_weights:
        _load_imagenet_weights(net, cfg.backbone, cfg.backbone_weights)
    body = _body(net, cfg.backbone)
    if freeze_bn and cfg.backbone not in RESNETS:
        freeze_norm_layers(body)

    return_layers, in_channels_list, strides = feature_layers(body)
    if frozen_stages:
        for child_name, child in body.named_children():
            if strides.get(child_name, 2 ** 30) <= 2 ** (frozen_stages + 1):
                child.requires_grad_(False)

    use_p5 = cfg.p6_from == "p5"
    extra = LastLevelP6P7(cfg.fpn_channels if use_p5 else in_channels_list[-1], cfg.fpn_channels, use_p5)
    return BackboneWithFPN(body, return_layers, in_channels_list, cfg.fpn_channels, extra_blocks=extra)
