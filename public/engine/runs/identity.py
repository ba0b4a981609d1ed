"""Checkpoints and run folders checked against the run that uses them.

A densedet checkpoint stores what it is: the model (``model_type``, the module of the config
class that builds it, e.g. ``fcos.config``), its config and its classes. FCOS and ATSS have
the same tensor names and shapes, so loading one as the other raises nothing and scores
garbage; so do two runs on data whose classes are named in another order. Resume, --evaluate
and test.py compare:

- the model type;
- the decisive settings: the config keys in ``_decisive_keys`` (backbone, FPN and head
  structure, and each model's keys that change what its outputs mean);
- the classes: names and category ids, in label order.

Every difference goes into one message; ``allow_mismatch=True`` turns it into a warning.
A ``work_dir`` that holds another run is refused unless the run resumes it (``resume``) or
replaces it (``overwrite=True``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from public.keys import is_auto

logger = logging.getLogger("densedet")

# What a run writes into its work_dir; overwrite=True deletes these before a new run starts.
RUN_FILES = ["latest.pth", "best.pth", "metrics.jsonl", "train.log", "config.json"]
# Files that mean a work_dir holds a run that got somewhere.
RUN_OUTPUTS = ["latest.pth", "best.pth", "metrics.jsonl"]


def model_type(cfg) -> str:
    """The module of the config class that defines ``build_model`` (``fcos.config`` for
    fcos/config.py, fcos/config_demo.py and any user config that subclasses them)."""
    for klass in type(cfg).__mro__:
        if "build_model" in vars(klass):
            return klass.__module__
    return type(cfg).__module__


def decisive_keys(cfg) -> tuple[str, ...]:
    return tuple(getattr(cfg, "_decisive_keys", ()))


def _model_keys(config: dict, base_keys: set) -> set:
    """The keys only one model's config has (FCOS's norm_reg_targets, ATSS's regression_type ...)."""
    return set(config) - base_keys


def _base_class(cfg):
    """The config class that declares the fields every model shares (BaseConfig)."""
    return next(k for k in reversed(type(cfg).__mro__) if "fields" in vars(k))


# Settings that change what a model is shown at evaluation but not the model: a checkpoint
# scored with other values loads, but its numbers are not those its run reported.
EVAL_INPUT_KEYS = ("test_min_size", "max_size", "resize_mode", "test_resize")


def eval_input_differences(cfg, stored_config: dict) -> tuple[str, str] | None:
    """(the checkpoint's values, ``cfg``'s) of ``EVAL_INPUT_KEYS`` as key=value overrides, for
    the keys where they differ; None when none does."""
    keys = [k for k in EVAL_INPUT_KEYS if k in stored_config and hasattr(cfg, k)
            and not _same(stored_config[k], getattr(cfg, k))]
    if not keys:
        return None
    return (" ".join(f"{k}={_literal(stored_config[k])}" for k in keys),
            " ".join(f"{k}={_literal(getattr(cfg, k))}" for k in keys))


def _is_auto(cfg, key: str) -> bool:
    return is_auto(getattr(cfg, key, None))


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _show(value) -> str:
    return repr(tuple(value) if isinstance(value, list) else value)


def differences(cfg, stored_config: dict, stored_type: str | None = None,
                stored_classes: dict | None = None, class_names: list | None = None,
                category_ids: list | None = None) -> list[str]:
    """What differs between a stored run (its config dict, model type, classes) and ``cfg``
    with the given classes; [] when they match. Each entry reads "<what> <stored> vs <this run>"."""
    out = []
    own_type = model_type(cfg)
    if stored_type is not None:
        if stored_type != own_type:
            out.append(f"model {stored_type} vs {own_type}")
    else:  # a checkpoint without a stored model type: tell the models by their own keys
        base = set(_base_class(cfg).fields())
        stored_keys, own_keys = _model_keys(stored_config, base), _model_keys(cfg.to_dict(), base)
        if stored_keys - own_keys and own_keys - stored_keys:  # each has keys of its own: two models
            out.append(f"model with keys {sorted(stored_keys - own_keys)[:3]} vs {own_type}")
    if not out:  # the same model: compare its decisive settings ("auto" takes the stored value)
        for key in decisive_keys(cfg):
            if _is_auto(cfg, key):
                continue
            if key in stored_config and not _same(stored_config[key], getattr(cfg, key)):
                out.append(f"{key} {_show(stored_config[key])} vs {_show(getattr(cfg, key))}")
    if stored_classes is not None:
        stored_ids = [int(i) for i in stored_classes.get("category_ids", [])]
        stored_names = [str(n) for n in stored_classes.get("names", [])]
        if category_ids is not None and stored_ids != [int(i) for i in category_ids]:
            out.append(f"category ids {stored_ids} vs {[int(i) for i in category_ids]}")
        elif class_names is not None and stored_names != [str(n) for n in class_names]:
            out.append(f"class names {stored_names} vs {[str(n) for n in class_names]}")
    return out


def check_checkpoint(checkpoint: dict, cfg, path: str, class_names: list | None = None,
                     category_ids: list | None = None, what: str = "load") -> None:
    """Raise ValueError naming every difference between a densedet ``checkpoint`` and ``cfg``
    (with the classes of the data it will be used on, when given); a warning instead with
    ``cfg.allow_mismatch``."""
    found = differences(cfg, checkpoint.get("config") or {}, checkpoint.get("model_type"),
                        checkpoint.get("classes"), class_names, category_ids)
    if not found:
        return
    summary = "; ".join(found)
    if getattr(cfg, "allow_mismatch", False):
        logger.warning("warning: %s was made by another run than this config (checkpoint vs this run: %s); "
                       "loading it anyway (allow_mismatch=True)", path, summary)
        return
    hint = _settings_hint(checkpoint.get("config") or {}, cfg)
    stored_type = checkpoint.get("model_type")
    if stored_type and stored_type != model_type(cfg):  # fcos.config -> --config fcos/config.py
        hint = f" (--config {stored_type.replace('.', '/')}.py or a config derived from it)"
    raise ValueError(f"cannot {what} {path}: it does not match this config (checkpoint vs this run): {summary}. "
                     f"Use the config and data it was trained with{hint}, or pass allow_mismatch=True to {what} "
                     f"it anyway")


def _settings_hint(stored_config: dict, cfg) -> str:
    pairs = [f"{k}={_literal(stored_config[k])}" for k in decisive_keys(cfg)
             if k in stored_config and not _same(stored_config[k], getattr(cfg, k))]
    return f" (e.g. {' '.join(pairs)})" if pairs else ""


def _literal(value) -> str:
    """How to write ``value`` as a key=value override (bare words for names, as in backbone=resnet18)."""
    if isinstance(value, str) and value.isidentifier():
        return value
    return repr(tuple(value) if isinstance(value, list) else value).replace(" ", "")


def check_work_dir(work_dir: str | Path, cfg) -> list[str]:
    """Refuse (ValueError) a ``work_dir`` that holds another run, unless the run continues it
    (``resume`` names a checkpoint, or is "auto" and ``work_dir/latest.pth`` exists) or
    ``cfg.overwrite`` (its run files are deleted: returned).

    Another run: any of ``RUN_OUTPUTS`` exists, or ``config.json`` differs from ``cfg`` in the
    model or a decisive setting. ``resume=auto`` where ``latest.pth`` is gone (deleted to save
    disk) is refused too: starting afresh there would replace the finished run's best.pth.
    """
    work_dir = Path(work_dir)
    auto_without_latest = cfg.resume == "auto" and not (work_dir / "latest.pth").is_file()
    if (cfg.resume and not auto_without_latest) or not work_dir.is_dir():
        return []
    found = [name for name in RUN_OUTPUTS if (work_dir / name).exists()]
    config_json = work_dir / "config.json"
    if config_json.is_file():
        try:
            stored = json.loads(config_json.read_text())
        except (OSError, json.JSONDecodeError):
            stored = None
        if not isinstance(stored, dict):
            found.append("config.json (unreadable)")
        else:
            differ = differences(cfg, stored)
            if differ:
                found.append(f"config.json of another config ({'; '.join(differ)})")
    if not found:
        return []
    if not getattr(cfg, "overwrite", False) and auto_without_latest:
        raise ValueError(f"resume=auto: work_dir {work_dir} holds a run ({', '.join(found)}) but no latest.pth to "
                         f"continue it from; to train on from its weights use init_from={work_dir / 'best.pth'} "
                         f"with another work_dir=, or start afresh there with overwrite=True (deletes its files)")
    if not getattr(cfg, "overwrite", False):
        raise ValueError(f"work_dir {work_dir} already holds a run ({', '.join(found)}): continue it with "
                         f"resume=auto, replace it with overwrite=True, or choose another work_dir=")
    deleted = [name for name in RUN_FILES if (work_dir / name).is_file()]
    for name in deleted:
        (work_dir / name).unlink()
    return deleted
