"""Checkpoints: written atomically, loaded with ``weights_only=True``.

A densedet checkpoint is a dict::

    {"format": "densedet", "model": state_dict, "config": resolved config dict,
     "classes": {"names": [...], "category_ids": [...]}, "epoch": int, "best_map": float,
     "optimizer": ..., "scheduler": ..., "scaler": ...}   # the last three only in latest.pth

A bare state dict (or ``{"model": state_dict}``, torchvision's reference scripts) of a model
the config can convert (torchvision's FCOS or RetinaNet) is accepted wherever a checkpoint is.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger("densedet")


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash mid-write never
    leaves a truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise RuntimeError(f"could not read checkpoint {path}: {error}") from error


def is_densedet(checkpoint: dict) -> bool:
    return isinstance(checkpoint, dict) and checkpoint.get("format") == "densedet"


def model_state_from_checkpoint(checkpoint: dict, cfg, category_ids: list[int], path: str = "") -> tuple[dict, dict]:
    """The model state dict in ``checkpoint`` and the config overrides it implies.

    Ours: (state, {}). A foreign state dict the config recognises: (converted state, the
    settings that reproduce the foreign model). Anything else is an error naming the file.
    """
    if is_densedet(checkpoint):
        return checkpoint["model"], {}
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    converted = cfg.convert_state_dict(state, category_ids) if isinstance(state, dict) else None
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
