"""torchvision ``fcos_resnet50_fpn`` state dicts -> densedet FCOS, with the settings that
reproduce torchvision's behaviour."""
from __future__ import annotations

import torch

from public.models.torchvision_compat import TORCHVISION_PREPROCESSING, backbone_of, renamed, take_class_rows

# Config values under which densedet's FCOS computes what torchvision's does.
TORCHVISION_SETTINGS = {
    "backbone": "resnet50", "fpn_channels": 256, "p6_from": "p5", "num_convs": 4, "head_norm": "GN",
    "norm_reg_targets": True, "centerness_on_reg": True, "location_offset": 0.0,
    "location_steps": "torchvision",
    "center_sampling_radius": 1.5, "scale_boundaries": (64, 128, 256, 512),
    "box_loss": "giou", "box_loss_weighting": "none",
    "score_thresh": 0.2, "score_thresh_on": "combined", "topk_candidates": 1000,
    "nms_thresh": 0.6, "detections_per_img": 100,
}

_RENAMES = (
    ("head.classification_head.conv.", "head.cls_tower."),
    ("head.classification_head.cls_logits.", "head.cls_logits."),
    ("head.regression_head.conv.", "head.reg_tower."),
    ("head.regression_head.bbox_reg.", "head.bbox_pred."),
    ("head.regression_head.bbox_ctrness.", "head.centerness."),
)


def is_torchvision_fcos(state_dict: dict) -> bool:
    return "head.regression_head.bbox_ctrness.weight" in state_dict and "backbone.body.conv1.weight" in state_dict


def from_torchvision(state_dict: dict, category_ids: list[int], class_names: list[str] | None = None):
    """Convert if ``state_dict`` is torchvision's FCOS; None otherwise.

    torchvision's classifier has one output per category id (91 for COCO, index = id);
    densedet's has one per category of the dataset, label i <-> ``category_ids[i]``. The rows
    are picked by ``public.models.torchvision_compat.class_rows`` (COCO: by class name). For
    another class set the class layer is left out and the caller re-initialises it
    (fine-tuning) or refuses (evaluation). The backbone (ResNet-18 ... ResNeXt-101) is read
    from the weights.

    Returns (state dict, TORCHVISION_SETTINGS with the backbone found and torchvision's
    evaluation preprocessing, ``TORCHVISION_PREPROCESSING``).
    """
    if not is_torchvision_fcos(state_dict):
        return None
    out = {renamed(key, _RENAMES): value for key, value in state_dict.items()}
    take_class_rows(out, 1, category_ids, class_names, "torchvision FCOS")
    for level in range(5):  # torchvision's FCOS has no per-level Scale: the identity
        out[f"head.scales.{level}.scale"] = torch.tensor(1.0)
    return out, {**TORCHVISION_SETTINGS, **TORCHVISION_PREPROCESSING, "backbone": backbone_of(state_dict)}
