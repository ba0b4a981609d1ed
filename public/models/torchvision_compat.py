"""What a torchvision detection state dict does not say outright: which ResNet its backbone is,
and which of its class rows belong to a dataset's categories; and the renaming of its keys.

Used by the converters (``fcos/convert.py``, ``retinanet/convert.py``).
"""
from __future__ import annotations

import logging

import torch
from torchvision.models._meta import _COCO_CATEGORIES

logger = logging.getLogger("densedet")

# How torchvision's detection models see an image (its GeneralizedRCNNTransform), added to the
# settings of every converted torchvision checkpoint so that it is scored on the same pixels.
TORCHVISION_PREPROCESSING = {"test_resize": "torchvision"}

# Index = COCO category id; "__background__" at 0 and "N/A" for the 11 unused ids (91 rows).
COCO_CATEGORY_NAMES = tuple(_COCO_CATEGORIES)

# (blocks in layer1..layer4, bottleneck, layer1.0.conv2 weight's (out, in / groups)) -> name
_BACKBONE_SIGNATURES = {
    ((2, 2, 2, 2), False, (64, 64)): "resnet18",
    ((3, 4, 6, 3), False, (64, 64)): "resnet34",
    ((3, 4, 6, 3), True, (64, 64)): "resnet50",
    ((3, 4, 23, 3), True, (64, 64)): "resnet101",
    ((3, 8, 36, 3), True, (64, 64)): "resnet152",
    ((3, 4, 6, 3), True, (128, 4)): "resnext50_32x4d",
    ((3, 4, 23, 3), True, (256, 8)): "resnext101_32x8d",
    ((3, 4, 23, 3), True, (256, 4)): "resnext101_64x4d",
}


def backbone_of(state_dict: dict, prefix: str = "backbone.body.") -> str:
    """The torchvision ResNet / ResNeXt name whose layout ``state_dict`` holds under ``prefix``
    (block count per stage, basic or bottleneck blocks, group width), e.g. "resnet18".

    Raises ValueError naming the layout when it is none of densedet's backbones.
    """
    blocks = tuple(len({key[len(prefix):].split(".")[1] for key in state_dict
                        if key.startswith(f"{prefix}layer{stage}.")}) for stage in range(1, 5))
    bottleneck = f"{prefix}layer1.0.conv3.weight" in state_dict
    conv2 = state_dict.get(f"{prefix}layer1.0.conv2.weight")
    width = tuple(conv2.shape[:2]) if conv2 is not None else None
    name = _BACKBONE_SIGNATURES.get((blocks, bottleneck, width))
    if name is None:
        raise ValueError(f"the state dict's backbone ({blocks} blocks per stage, "
                         f"{'bottleneck' if bottleneck else 'basic'} blocks, layer1 conv2 {width}) is none of "
                         f"{', '.join(sorted(set(_BACKBONE_SIGNATURES.values())))}")
    return name


def _normal(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def class_rows(num_outputs: int, category_ids: list[int], class_names: list[str] | None,
               model: str = "torchvision model") -> torch.Tensor | None:
    """The row of a torchvision classifier with ``num_outputs`` classes for each dataset
    category (label i <-> ``category_ids[i]``, named ``class_names[i]``); None when the model's
    classes are another class set, so its class layer must not be used.

    - 91 outputs is torchvision's COCO layout (row = COCO category id): every category is
      matched by its COCO name (case, "_" and "-" ignored), whatever its id, so that a
      dataset with small ids but other classes does not silently get COCO's classes, and one
      with COCO's classes under other ids gets the right rows. One name that is not a COCO
      class makes it another class set.
    - any other count is a model trained on its own categories, whose names the state dict
      does not hold: rows are picked by category id, with a warning that names were not checked.
    """
    if num_outputs == len(COCO_CATEGORY_NAMES) and class_names is not None:
        coco_index = {_normal(name): i for i, name in enumerate(COCO_CATEGORY_NAMES) if name not in ("N/A", "__background__")}
        rows = [coco_index.get(_normal(name)) for name in class_names]
        unknown = [name for name, row in zip(class_names, rows) if row is None]
        if unknown:
            logger.warning("%s has COCO's 80 classes; %s %s not among them: another class set, so its class "
                           "layer is not used", model, ", ".join(repr(n) for n in unknown[:5]),
                           "is" if len(unknown) == 1 else "are")
            return None
        moved = [(name, cid, row) for name, cid, row in zip(class_names, category_ids, rows) if row != cid]
        if moved:
            logger.info("%s: classes matched to COCO's by name (%s)", model,
                        ", ".join(f"{name!r}: id {cid} -> COCO id {row}" for name, cid, row in moved[:5]))
        return torch.as_tensor(rows)
    if max(category_ids) >= num_outputs:
        logger.warning("%s has %d class outputs; category ids up to %d have no row: its class layer is not used",
                       model, num_outputs, max(category_ids))
        return None
    logger.warning("%s has %d class outputs and no class names: rows picked by category id, names not checked",
                   model, num_outputs)
    return torch.as_tensor(category_ids)


def renamed(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    """``key`` with the first of the ``renames`` (old prefix, new prefix) it starts with
    replaced; unchanged when none matches."""
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def take_class_rows(out: dict, num_anchors: int, category_ids: list[int], class_names: list[str] | None,
                    model: str) -> None:
    """In place on a converted state dict: keep, for every anchor, the rows of
    ``head.cls_logits`` that ``class_rows`` picks for the dataset's categories (rows are
    anchor-major, a * K + k for K outputs per anchor); drop the layer when they are another
    class set, so that the caller re-initialises it or refuses.
    """
    weight, bias = out["head.cls_logits.weight"], out["head.cls_logits.bias"]   # [A*K, ch, 3, 3], [A*K]
    num_outputs = weight.shape[0] // num_anchors
    rows = class_rows(num_outputs, category_ids, class_names, model)
    if rows is None:
        del out["head.cls_logits.weight"], out["head.cls_logits.bias"]
        return
    out["head.cls_logits.weight"] = weight.unflatten(0, (num_anchors, num_outputs))[:, rows].flatten(0, 1)
    out["head.cls_logits.bias"] = bias.view(num_anchors, num_outputs)[:, rows].flatten()
