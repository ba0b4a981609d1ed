"""Where a model's weights come from when a full checkpoint will be loaded into it: never
ImageNet (nothing to download), and a fine-tuning start whose classes are matched by name."""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger("densedet")

CLASS_LAYER = ("head.cls_logits.weight", "head.cls_logits.bias")


def without_imagenet(spec):
    """The run spec ``spec`` building its model without ImageNet weights (``pretrained=False``,
    no ``backbone_weights``), for a model whose every weight a checkpoint will overwrite:
    evaluation, resuming, fine-tuning from a full checkpoint. The settings resolved from
    ``pretrained`` (freezing, ``head_norm``) stay as they are in ``spec``."""
    spec.require_spec("building a model for a checkpoint")
    return spec.replace(pretrained=False, backbone_weights="")


def match_classes_by_name(state: dict, checkpoint_classes: dict, category_ids: list[int],
                          class_names: list[str], model: torch.nn.Module, path: str = "") -> dict:
    """The class layer of a densedet checkpoint laid out for the run's categories.

    Each of the run's classes takes the checkpoint's row(s) of the class of the same name
    (the same category id when the names are missing); classes it does not have keep the
    model's fresh initialisation. The layer is [A x C] rows anchor-major (A = 1 for
    FCOS/ATSS, 9 for RetinaNet). Logs which classes were mapped and which re-initialised.

    Args: state: the checkpoint's model state dict; checkpoint_classes: its {"names",
    "category_ids"}; category_ids, class_names: the run's; model: the freshly built model.
    Returns: ``state`` with the class layer replaced (untouched when classes are identical).
    """
    old_names = [str(n) for n in checkpoint_classes["names"]]
    old_ids = [int(i) for i in checkpoint_classes["category_ids"]]
    if old_names == list(class_names) and old_ids == list(category_ids):
        return state
    if any(key not in state for key in CLASS_LAYER):
        return state
    by_name = {name: i for i, name in enumerate(old_names)}
    sources = [by_name.get(name) for name in class_names]
    own = model.state_dict()
    old_c, new_c = len(old_names), len(class_names)
    anchors = state[CLASS_LAYER[1]].shape[0] // old_c
    if anchors * new_c != own[CLASS_LAYER[1]].shape[0]:
        return state  # not a layout this function knows: left to the shape check
    state = dict(state)
    for key in CLASS_LAYER:
        old = state[key].unflatten(0, (anchors, old_c))                  # [A, C_old, ...]
        new = own[key].clone().unflatten(0, (anchors, new_c))            # [A, C_new, ...] fresh init
        for label, source in enumerate(sources):
            if source is not None:
                new[:, label] = old[:, source]
        state[key] = new.flatten(0, 1)
    mapped = [f"{name!r} (label {s} -> {label})" for label, (name, s) in enumerate(zip(class_names, sources))
              if s is not None and s != label]
    fresh = [repr(name) for name, s in zip(class_names, sources) if s is None]
    logger.warning("init_from %s was trained on other classes (%s): class layer matched by name%s%s", path,
                   ", ".join(old_names[:8]), "; moved: " + ", ".join(mapped[:8]) if mapped else "",
                   "; re-initialised: " + ", ".join(fresh[:8]) if fresh else "")
    return state


def check_only_class_layer_differs(model: torch.nn.Module, state: dict, path: str) -> None:
    """``init_from`` may re-initialise the class layer only: any other tensor that is missing
    or of another shape means another architecture, which is an error naming the keys."""
    own = model.state_dict()
    bad = [k for k, v in own.items() if k not in CLASS_LAYER and not k.endswith("num_batches_tracked")
           and (k not in state or state[k].shape != v.shape)]
    if bad:
        raise RuntimeError(f"init_from {path} does not fit the model built from the config beyond its class "
                           f"layer (different backbone, fpn_channels, num_convs or head?): {bad[:6]}")
