"""Checkpoints: written atomically, loaded with ``weights_only=True``.

A densedet checkpoint is a dict::

    {"format": "densedet", "model": state_dict, "config": resolved config dict,
     "model_type": "fcos.config",                        # the module of the config class that builds it
     "classes": {"names": [...], "category_ids": [...]}, "epoch": int, "best_map": float,
     "optimizer": ..., "scheduler": ..., "scaler": ...,   # these four only in latest.pth:
     "rng": [random states of each process],             #   see public/engine/runs/state.py
     "eval_pending": bool, "epoch_losses": {...},        #   written before the epoch's evaluation
     "best_epoch": int | None,                           #   the epoch of best_map (latest.pth only)
     "score_thresholds": [float | None per label]}         # only after test.py --save-thresholds

A bare state dict (or ``{"model": state_dict}``, torchvision's reference scripts) of a model
the config can convert (torchvision's FCOS or RetinaNet) is accepted wherever a checkpoint is.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from public.engine.command import os_error_of
from public.engine.runs.weights import without_imagenet
from public.engine.runs.identity import check_checkpoint, eval_input_differences
from public.keys import RunFacts

logger = logging.getLogger("densedet")


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash mid-write never
    leaves a truncated checkpoint behind."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    except OSError as error:  # a read-only or missing folder: its errno, naming the checkpoint
        raise OSError(error.errno, f"cannot write checkpoint {path}: {error.strerror}") from error
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        cause = os_error_of(error)
        if cause is not None:  # e.g. a full disk, which torch.save reports as "unexpected pos"
            raise OSError(cause.errno, f"cannot write checkpoint {path} (the previous one is intact): "
                                       f"{cause.strerror or os.strerror(cause.errno)}") from error
        raise



def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save: a zip, or a legacy pickle
        raise ValueError(f"{path} is not a PyTorch checkpoint (it starts with {head!r}); pass a .pth file "
                         f"written by train.py or torch.save")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise RuntimeError(f"could not read checkpoint {path}: {error}") from error


def is_densedet(checkpoint: dict) -> bool:
    return isinstance(checkpoint, dict) and checkpoint.get("format") == "densedet"


def model_state_from_checkpoint(checkpoint: dict, cfg, category_ids: list[int], path: str = "",
                                class_names: list[str] | None = None) -> tuple[dict, dict]:
    """The model state dict in ``checkpoint`` and the config overrides it implies.

    Ours: (state, {}). A foreign state dict the config recognises: (converted state, the
    settings that reproduce the foreign model). Anything else is an error naming the file.
    """
    if is_densedet(checkpoint):
        return checkpoint["model"], {}
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    converted = cfg.convert_state_dict(state, category_ids, class_names) if isinstance(state, dict) else None
    if converted is None:
        raise ValueError(f"{path or 'checkpoint'} is neither a densedet checkpoint nor a state dict that "
                         f"{type(cfg).__module__} can convert (e.g. torchvision's)")
    return converted


def load_model_weights(model: nn.Module, state: dict, path: str = "", reinit_mismatched: bool = False) -> None:
    """Load ``state`` into ``model``; every key must fit, except, with ``reinit_mismatched``,
    tensors whose shape differs or that are absent (a class layer for another class count),
    which keep their fresh initialisation and are named in the log."""
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in mismatched}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    skipped = []
    if reinit_mismatched:
        skipped, missing, mismatched = mismatched + missing, [], []
    if missing or unexpected or mismatched:
        shapes = ", ".join(f"{k}: {tuple(own[k].shape)} in the model" for k in mismatched[:4])
        raise RuntimeError(
            f"checkpoint {path} does not fit the model built from the config "
            f"(different backbone, classes or head?): missing {missing[:6]}, unexpected {unexpected[:6]}, "
            f"shape differs for {mismatched[:6]} ({shapes})")
    if skipped:
        logger.info("initialised from %s except %s (re-initialised)", path, ", ".join(skipped))


@dataclass
class LoadedModel:
    """A model ready for inference and what the checkpoint says about it."""
    model: nn.Module                          # in eval mode, on the CPU
    cfg: object                               # the run spec: the config resolved against the checkpoint
    class_names: list[str]
    category_ids: list[int]                   # label i <-> category_ids[i]
    score_thresholds: list | None = None      # per label, float or None (undetermined); None if absent
    overrides: dict = field(default_factory=dict)  # settings a foreign checkpoint imposed on the spec
    densedet: bool = True                     # False: a converted foreign state dict


def load_for_inference(cfg, path: str, category_ids: list[int] | None = None,
                       class_names: list[str] | None = None, checkpoint: dict | None = None) -> LoadedModel:
    """Build ``cfg``'s model and load the checkpoint at ``path`` (ours or a foreign state dict).

    Args:
        category_ids: the categories of the data the model will be scored on. A densedet
            checkpoint must have been trained on exactly these (else ValueError); a foreign
            state dict needs them to pick its class rows (else ValueError). None: take the
            checkpoint's own (detection on images, where there is no dataset).
        class_names: names of ``category_ids`` (for a foreign checkpoint, which has none).
        checkpoint: the contents of ``path`` if the caller has already loaded them.
    A densedet checkpoint must also be of ``cfg``'s model with its decisive settings
    (``identity.check_checkpoint``; ``allow_mismatch=True`` warns instead). The model is built
    without ImageNet weights: the checkpoint holds them all.

    Raises:
        ValueError for a model, settings or classes that do not match, RuntimeError (``load_model_weights``'s
        message) for a model that does not fit the config, FileNotFoundError / RuntimeError
        for a missing or unreadable file.

    Returns the model and the run spec (``LoadedModel.cfg``, what the rest of the job reads):
    ``cfg`` resolved against the checkpoint (a structure key left "auto" takes the checkpoint's
    value; a converted foreign checkpoint's settings, also in ``overrides``, win). ``cfg`` itself
    is not changed.
    """
    checkpoint = load_checkpoint(path) if checkpoint is None else checkpoint
    thresholds, stored = None, {}
    if is_densedet(checkpoint):
        trained_ids = [int(i) for i in checkpoint["classes"]["category_ids"]]
        check_checkpoint(checkpoint, cfg, path, class_names, category_ids, what="load")
        stored = checkpoint.get("config") or {}
        differ = eval_input_differences(cfg, checkpoint.get("config") or {})
        if differ:
            logger.warning("%s was trained and evaluated with %s; this config resizes with %s: add %s to the "
                           "command to see it as its run did", path, differ[0], differ[1], differ[0])
        category_ids, class_names = trained_ids, list(checkpoint["classes"]["names"])
        thresholds = checkpoint.get("score_thresholds")
    elif category_ids is None:
        raise ValueError(f"{path} is not a densedet checkpoint, so it names no classes: point the config's "
                         f"val_annotations at a json whose categories it was trained on")
    state, overrides = model_state_from_checkpoint(checkpoint, cfg, list(category_ids), path, class_names)
    if overrides:
        if "head.cls_logits.weight" not in state:
            raise ValueError(f"{path}'s classes are not the categories of {cfg.val_annotations} "
                             f"({', '.join(map(str, (class_names or category_ids)[:8]))}): it cannot score them; "
                             f"fine-tune it on them with init_from={path}")
        logger.info("%s is a converted foreign checkpoint; using its settings: %s", path, overrides)
    spec = spec_for_checkpoint(cfg, path, stored, overrides)
    model = build_model_for_checkpoint(spec, len(category_ids))
    load_model_weights(model, state, path)
    model.eval()
    names = list(class_names) if class_names is not None else [str(i) for i in category_ids]
    return LoadedModel(model, spec, names, list(category_ids), thresholds, overrides, is_densedet(checkpoint))


def spec_for_checkpoint(cfg, path: str, stored: dict, overrides: dict):
    """The run spec that uses the checkpoint at ``path``: ``cfg`` resolved with ``stored`` (the
    checkpoint's config) for its "auto" structure keys and ``overrides`` (a converted foreign
    checkpoint's settings) set. A spec already resolved takes only ``overrides``."""
    if cfg.frozen:
        return cfg.replace(**overrides) if overrides else cfg
    return cfg.resolve(RunFacts(stored=stored, stored_source=f"checkpoint {path}"), overrides,
                       {key: f"checkpoint {path} (converted)" for key in overrides})


def build_model_for_checkpoint(spec, num_classes: int) -> nn.Module:
    """The run spec's model without ImageNet weights (no download, no backbone file read): every
    weight will come from a full checkpoint."""
    return without_imagenet(spec).build_model(num_classes)
