"""A run read back from its checkpoint or exported ONNX file: "the checkpoint carries its run".

``stored_run`` reads what a ``.pth`` or ``.onnx`` says about the run that made it (config,
model type); ``load_run_config`` turns that into the config to evaluate, detect with or export
it, with the user's ``--config`` and ``key=value`` overrides. The result is a config, not yet a
spec: the step that loads the weights resolves it (``load_for_inference``), against the
checkpoint.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from public.engine.command import DEFAULT_CONFIG
from public.engine.runs.checkpoint import is_densedet, load_checkpoint
from public.keys import REPO_ROOT, KeyedConfig, load_config, model_config

# What a run's checkpoint decides even under an explicit --config (unless given as key=value):
# the data it was evaluated on and how evaluation resizes its images.
RUN_EVAL_KEYS = ("val_images", "val_annotations", "test_min_size", "max_size", "resize_mode", "test_resize",
                 "size_divisible")
# Stored values that describe where and how the run ran, not the model: never taken from it.
_RUN_PLACE_KEYS = ("device", "work_dir", "resume", "overwrite")


def _announce(line: str) -> None:
    """Print on the main process only (RANK 0, or no torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        print(line, flush=True)


METADATA_KEY = "densedet"   # the ONNX metadata entry export.py writes the run into


def read_metadata(path: str | Path) -> dict:
    """The ``densedet`` metadata of an exported file (read with onnx, without a runtime session);
    ValueError for a file export.py did not write."""
    try:
        import onnx
    except ImportError as error:
        raise ImportError("reading an exported .onnx file needs onnx: pip install -r requirements-dev.txt "
                          "(or pip install onnx onnxruntime)") from error
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises its own types for a damaged file
        raise ValueError(f"onnx cannot read {path}: {error}") from error
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(f"{path} was not written by export.py (no '{METADATA_KEY}' metadata)")
    return json.loads(props[METADATA_KEY])


def stored_run(checkpoint_path: str | Path) -> dict | None:
    """What ``checkpoint_path`` says about its run: {"config": dict, "model_type": str | None,
    "source": "checkpoint" | "onnx"}; None for a foreign state dict, an older ``.onnx`` without a
    config, or a file that cannot be read (its loader reports that when the job runs)."""
    path = Path(checkpoint_path)
    if path.suffix.lower() == ".onnx":
        try:
            meta = read_metadata(path)
        except (ImportError, OSError, ValueError, RuntimeError):
            return None
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
            return None
        return {"config": meta["config"], "model_type": meta.get("model_type"), "source": "onnx"}
    try:
        checkpoint = load_checkpoint(path)
    except (OSError, ValueError, RuntimeError):
        return None
    if not is_densedet(checkpoint) or not isinstance(checkpoint.get("config"), dict):
        return None
    return {"config": checkpoint["config"], "model_type": checkpoint.get("model_type"), "source": "checkpoint"}


def _stored_path(value: Any) -> Any:
    """A relative data path of a stored config: from the current folder if it is there, else from
    the repository root if it is there, else as stored."""
    if not isinstance(value, str) or not value or Path(value).is_absolute() or Path(value).exists():
        return value
    return str(REPO_ROOT / value) if (REPO_ROOT / value).exists() else value


def _stored_config(checkpoint_path, run: dict, stored: dict, given: set, overrides, notes: list):
    """The Config of the checkpoint's model with its stored keys (those this code declares; the
    others go into ``notes``) and the ``overrides``; returns it and the model's name."""
    module_name = run["model_type"] or ".".join(Path(DEFAULT_CONFIG).with_suffix("").parts)
    try:
        cfg = model_config(module_name)
    except ImportError as error:
        raise ValueError(f"{checkpoint_path} is a {module_name} model, which this code does not define "
                         f"({error}): pass --config CFG") from error
    declared = cfg.keys()
    unknown = sorted(k for k in stored if k not in declared)
    for key, value in stored.items():
        if key in declared and key not in _RUN_PLACE_KEYS and key not in given:
            try:
                cfg.set(key, value, f"checkpoint {checkpoint_path}")
            except (KeyError, TypeError, ValueError) as error:
                unknown.append(f"{key} ({error})")
    if unknown:
        notes.append(f"ignored stored keys this code does not take: {', '.join(unknown)}")
    cfg.apply_overrides(list(overrides))
    cfg.check()
    return cfg, module_name.split(".")[0]


def _override_keys(overrides) -> set[str]:
    return {item.split("=", 1)[0].strip().lstrip("-") for item in overrides if "=" in item}


def load_run_config(checkpoint_path: str | Path, config_path: str | Path | None = None,
                    overrides: list[str] | tuple = (), announce: Callable[[str], Any] | None = _announce) -> KeyedConfig:
    """The config to evaluate, detect with or export the checkpoint (or exported ``.onnx``) at
    ``checkpoint_path``: "the checkpoint carries its run".

    Without ``config_path``: the Config class of the checkpoint's model (``model_type``, e.g.
    ``fcos.config``) updated with the config stored in it (keys the class declares; others are
    ignored with a note), then ``overrides``. With ``config_path``: that file and ``overrides``
    (``load_config``), except that ``RUN_EVAL_KEYS`` (evaluation data and sizes) still come
    from the checkpoint unless overridden. A file that stores no config (a torchvision state
    dict) takes the config file (default ``DEFAULT_CONFIG``) as ``load_config`` does; an
    ``.onnx`` from an older export needs ``config_path``. ``work_dir`` is the checkpoint's
    folder unless overridden. ``announce`` gets one line: the run's values used, what was
    overridden.
    """
    run = stored_run(checkpoint_path)
    if run is None:
        if config_path is None and str(checkpoint_path).lower().endswith(".onnx") and Path(checkpoint_path).is_file():
            raise ValueError(f"{checkpoint_path} holds no config (exported before export.py stored the run's "
                             f"config): pass --config CFG (e.g. --config fcos/config.py) with val_images=DIR "
                             f"val_annotations=FILE, or export the checkpoint again")
        return load_config(config_path or DEFAULT_CONFIG, overrides)
    stored = {k: (_stored_path(v) if k in ("val_images", "val_annotations", "train_images", "train_annotations")
                  else v) for k, v in run["config"].items()}
    given = _override_keys(overrides)
    if stored.get("data"):   # a built-in dataset: its paths follow the code's place, unless paths are given
        data_keys = ("val_images", "val_annotations", "train_images", "train_annotations")
        drop = data_keys if not given & set(data_keys) else ("data",)
        stored = {k: v for k, v in stored.items() if k not in drop}
    notes = []
    if config_path is None:
        cfg, model = _stored_config(checkpoint_path, run, stored, given, overrides, notes)
    else:
        cfg = load_config(config_path, overrides)
        taken = [k for k in RUN_EVAL_KEYS if k in stored and k not in given and hasattr(cfg, k)]
        for key in taken:
            cfg.set(key, stored[key], f"checkpoint {checkpoint_path}")
        cfg.check()
        model = (run["model_type"] or "").split(".")[0] or type(cfg).__module__.split(".")[0]
        notes.append(f"config {config_path} with the run's data and eval sizes")
    if "work_dir" not in given:
        cfg.set("work_dir", str(Path(checkpoint_path).resolve().parent), "the checkpoint's folder")
    if announce is not None:
        shown = ", ".join(item for item in overrides if "=" in item) or "nothing"
        announce(f"run of {checkpoint_path}: {model}, val data {cfg.val_annotations}, test_min_size="
                 f"{cfg.test_min_size} max_size={cfg.max_size}; overridden: {shown}"
                 + "".join(f"; {note}" for note in notes))
    return cfg


