"""torchvision ``fcos_resnet50_fpn`` state dicts -> densedet FCOS, with the settings that
reproduce torchvision's behaviour."""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger("densedet")

# Config values under which densedet's FCOS computes what torchvision's does.
TORCHVISION_SETTINGS = {
    "backbone": "resnet50", "fpn_channels": 256, "p6_from": "p5", "num_convs": 4, "head_norm": "GN",
    "norm_reg_targets": True, "centerness_on_reg": True, "location_offset": 0.0,
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


def from_torchvision(state_dict: dict, category_ids: list[int]):
    """Convert if ``state_dict`` is torchvision's FCOS; None otherwise.

    torchvision's classifier has one output per COCO category id (91 for COCO, index = id);
    densedet's has one per category of the dataset, label i <-> ``category_ids[i]``, so the
    rows are picked by id. If some id has no row (another dataset), the class layer is left
    out and the caller re-initialises it (fine-tuning) or reports it (evaluation).

    Returns (state dict, TORCHVISION_SETTINGS).
    """
    if not is_torchvision_fcos(state_dict):
        return None
    out = {}
    for key, value in state_dict.items():
        for old, new in _RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    num_outputs = out["head.cls_logits.weight"].shape[0]
    if max(category_ids) < num_outputs:
        rows = torch.as_tensor(category_ids)
        out["head.cls_logits.weight"] = out["head.cls_logits.weight"][rows]
        out["head.cls_logits.bias"] = out["head.cls_logits.bias"][rows]
    else:
        logger.warning("torchvision FCOS has %d class outputs; category ids up to %d have no row: "
                       "its class layer is not used", num_outputs, max(category_ids))
        del out["head.cls_logits.weight"], out["head.cls_logits.bias"]
    for level in range(5):  # torchvision's FCOS has no per-level Scale: the identity
        out[f"head.scales.{level}.scale"] = torch.tensor(1.0)
    return out, dict(TORCHVISION_SETTINGS)
