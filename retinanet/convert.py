"""torchvision ``retinanet_resnet50_fpn`` (v1) and ``retinanet_resnet50_fpn_v2`` state dicts ->
densedet RetinaNet, with the settings that reproduce torchvision's behaviour."""
from __future__ import annotations

import logging
import re

import torch

from public.models.torchvision_compat import TORCHVISION_PREPROCESSING, backbone_of, renamed, take_class_rows

logger = logging.getLogger("densedet")

# Config values under which densedet's RetinaNet computes what torchvision's v1 does.
TORCHVISION_SETTINGS = {
    "backbone": "resnet50", "fpn_channels": 256, "p6_from": "p5", "num_convs": 4, "head_norm": "none",
    # _default_anchorgen: sizes int(x * 2 ** (k / 3)) for x in 32..512, corners rounded, centres at
    # x * (padded size // cells), which is x * stride where the padded size is a multiple of it
    "anchor_octave_base": 4.0, "anchor_scales_per_octave": 3, "aspect_ratios": (0.5, 1.0, 2.0),
    "anchor_offset": 0.0, "location_steps": "torchvision", "anchor_int_sizes": True,
    "anchor_round_corners": True,
    "fg_iou_thresh": 0.5, "bg_iou_thresh": 0.4, "allow_low_quality_matches": True,
    "focal_alpha": 0.25, "focal_gamma": 2.0, "box_loss": "l1", "box_coder_weights": (1.0, 1.0, 1.0, 1.0),
    "loss_normalizer": "per_image",
    # RetinaNet(...) defaults: note 300 detections per image, not the paper's 100
    "score_thresh": 0.05, "topk_candidates": 1000, "nms_thresh": 0.5, "detections_per_img": 300,
}
# v2 (torchvision 0.13, "FCOS-style" recipe): P6 from C5, GroupNorm towers, GIoU box loss.
TORCHVISION_V2_SETTINGS = {**TORCHVISION_SETTINGS, "p6_from": "c5", "head_norm": "GN", "box_loss": "giou"}

_TOWERS = (("head.classification_head.conv.", "head.cls_tower."),
           ("head.regression_head.conv.", "head.reg_tower."))
_RENAMES = (("head.classification_head.cls_logits.", "head.cls_logits."),
            ("head.regression_head.bbox_reg.", "head.bbox_pred."))
_CURRENT = re.compile(r"(\d+)\.(\d+)\.(weight|bias)$")   # conv.{i}.{0 conv | 1 GN}.param
_LEGACY = re.compile(r"(\d+)\.(weight|bias)$")           # conv.{2i}.param (before torchvision 0.13)
NUM_ANCHORS = 9                                          # 3 sizes x 3 aspect ratios
FROZEN_BN_EPS = 1e-5


def is_torchvision_retinanet(state_dict: dict) -> bool:
    return ("head.regression_head.bbox_reg.weight" in state_dict and "head.classification_head.cls_logits.weight" in state_dict
            and "head.regression_head.bbox_ctrness.weight" not in state_dict and "backbone.body.conv1.weight" in state_dict)


def _tower_key(rest: str, has_norm: bool) -> str | None:
    """'1.0.weight' -> our Sequential index: (conv, [GN], ReLU) per conv; None for unknown keys."""
    step = 3 if has_norm else 2
    match = _CURRENT.fullmatch(rest)
    if match:
        block, layer, param = int(match[1]), int(match[2]), match[3]
        return f"{block * step + layer}.{param}"
    match = _LEGACY.fullmatch(rest)
    if match:  # (conv, ReLU) pairs: already our no-norm layout
        return f"{match[1]}.{match[2]}"
    return None


def from_torchvision(state_dict: dict, category_ids: list[int], class_names: list[str] | None = None):
    """Convert if ``state_dict`` is torchvision's RetinaNet (v1 or v2); None otherwise.

    - towers: torchvision's ``conv.{i}.0`` (conv) / ``conv.{i}.1`` (GN) blocks, and the flat
      ``conv.{2i}`` of files saved before torchvision 0.13 (the published v1 COCO weights),
      map onto our flat (conv, [GN], ReLU) Sequential. v2's convs have no bias (GN follows);
      ours get a zero bias, which computes the same.
    - v1 vs v2 is read from the weights: GroupNorm parameters in the towers, and P6's input
      channels (2048 = C5, 256 = P5).
    - classes: torchvision's classifier has A x 91 rows, anchor-major (row a * 91 + id); rows
      are picked per anchor as fcos/convert.py does (COCO: by class name). For another class
      set the class layer is left out and the caller re-initialises it or refuses.
    - the backbone (ResNet-18 ... ResNeXt-101) is read from the weights.
    - the published v1 COCO weights run with FrozenBatchNorm eps 0 in torchvision
      (``overwrite_eps(model, 0.0)``); for files in the pre-0.13 layout the running variances
      are lowered by our eps (1e-5) so that our frozen BN computes the same.

    Returns (state dict, TORCHVISION_SETTINGS or TORCHVISION_V2_SETTINGS, with the backbone found
    and torchvision's evaluation preprocessing, ``TORCHVISION_PREPROCESSING``).
    """
    if not is_torchvision_retinanet(state_dict):
        return None
    num_anchors = state_dict["head.regression_head.bbox_reg.weight"].shape[0] // 4
    if num_anchors != NUM_ANCHORS:
        logger.warning("torchvision RetinaNet with %d anchors per location: only the default anchor "
                       "generator (%d) can be reproduced", num_anchors, NUM_ANCHORS)
        return None
    has_norm = "head.classification_head.conv.0.1.weight" in state_dict   # GroupNorm after the first conv
    legacy = "head.classification_head.conv.0.weight" in state_dict
    out = {}
    for key, value in state_dict.items():
        new_key = key
        for old, new in _TOWERS:
            if key.startswith(old):
                rest = _tower_key(key[len(old):], has_norm)
                if rest is None:
                    raise KeyError(f"unexpected torchvision RetinaNet key {key}")
                new_key = new + rest
                break
        else:
            new_key = renamed(key, _RENAMES)
        out[new_key] = value
    if has_norm:  # bias-free convs before GN
        for tower in ("head.cls_tower.", "head.reg_tower."):
            for key in [k for k in out if k.startswith(tower) and k.endswith(".weight") and out[k].dim() == 4]:
                out[key[:-len("weight")] + "bias"] = torch.zeros(out[key].shape[0], dtype=out[key].dtype)
    if legacy:
        for key in [k for k in out if k.startswith("backbone.body.") and k.endswith("running_var")]:
            out[key] = (out[key] - FROZEN_BN_EPS).clamp(min=0)
        logger.info("torchvision RetinaNet weights in the pre-0.13 layout (published COCO v1): "
                    "BN variances shifted for torchvision's FrozenBatchNorm eps=0")

    take_class_rows(out, num_anchors, category_ids, class_names, "torchvision RetinaNet")

    p6_in = out["backbone.fpn.extra_blocks.p6.weight"].shape[1]
    fpn_channels = out["backbone.fpn.extra_blocks.p6.weight"].shape[0]
    settings = dict(TORCHVISION_V2_SETTINGS if has_norm else TORCHVISION_SETTINGS)
    settings["p6_from"] = "p5" if p6_in == fpn_channels else "c5"
    settings["backbone"] = backbone_of(state_dict)
    return out, {**settings, **TORCHVISION_PREPROCESSING}
