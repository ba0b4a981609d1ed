"""Config values checked before a run reads them, and bad input told apart from bugs.

``check_config`` raises one ValueError naming the key, the value and what is allowed, before
anything is built or written: ``epochs=-3`` would otherwise exit 0 having trained nothing,
``eval_interval=0`` divide by zero after the first epoch, ``min_size=()`` fail inside a
transform. Types are already checked by ``config.py``; these are the ranges and choices.

``user_error_message`` gives the one line a command prints for bad input (a missing file, a
bad value, data or checkpoint that do not fit), or None for a bug (whose traceback is kept).
"""
from __future__ import annotations

import math
import re

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
             "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d")


class _Checker:
    def __init__(self, cfg):
        self.cfg, self.problems = cfg, []

    def has(self, key: str) -> bool:
        return hasattr(self.cfg, key)

    def number(self, key: str, low=None, high=None, low_open=False, high_open=False, integer=False) -> None:
        """``key`` in [low, high] (open ends where said); skipped if the config lacks the key or
        holds a non-number there (a value another part resolves, e.g. "auto")."""
        if not self.has(key):
            return
        value = getattr(self.cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        bad = not math.isfinite(value) or (integer and value != int(value))
        bad |= low is not None and (value <= low if low_open else value < low)
        bad |= high is not None and (value >= high if high_open else value > high)
        if bad:
            self.problems.append(f"{key}={value!r} must be {_range(low, high, low_open, high_open, integer)}")

    def choice(self, key: str, options) -> None:
        if self.has(key) and getattr(self.cfg, key) not in options:
            self.problems.append(f"{key}={getattr(self.cfg, key)!r} must be one of {', '.join(map(repr, options))}")

    def sizes(self, key: str) -> None:
        """A non-empty tuple of positive integers."""
        if not self.has(key):
            return
        value = getattr(self.cfg, key)
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
            self.problems.append(f"{key}={value!r} must be a non-empty tuple of positive integers, e.g. {key}=(800,)")


def _range(low, high, low_open, high_open, integer) -> str:
    kind = "an integer" if integer else "a number"
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return f"{kind} {' and '.join(parts)}".strip()


def check_config(cfg, training: bool = True) -> None:
    """Raise ValueError listing every out-of-range or unknown-choice value of ``cfg`` (the
    training keys only when ``training``). Keys a config lacks are skipped."""
    c = _Checker(cfg)
    # data
    c.sizes("min_size")
    c.number("max_size", 1, integer=True)
    c.number("test_min_size", 1, integer=True)
    c.choice("multiscale_mode", ("choice", "range"))
    c.choice("resize_mode", ("keep_ratio", "square"))
    c.choice("test_resize", ("opencv", "torchvision"))
    c.choice("location_steps", ("stride", "torchvision"))
    c.number("hflip_prob", 0, 1)
    c.number("size_divisible", 1, integer=True)
    c.number("num_workers", 0, integer=True)
    c.number("batch_size", 1, integer=True)
    # model
    c.choice("backbone", BACKBONES)
    c.number("fpn_channels", 1, integer=True)
    c.number("num_convs", 0, integer=True)
    c.choice("head_norm", ("GN", "none", "auto"))
    c.choice("p6_from", ("p5", "c5"))
    c.number("prior_prob", 0, 1, low_open=True, high_open=True)
    if c.has("dcn_stages") and len(cfg.dcn_stages) != 4:
        c.problems.append(f"dcn_stages={cfg.dcn_stages!r} must hold 4 booleans (layer1..layer4)")
    # decoding
    c.number("score_thresh", 0, 1, high_open=True)
    c.number("nms_thresh", 0, 1, low_open=True)
    c.number("topk_candidates", 1, integer=True)
    c.number("detections_per_img", 1, integer=True)
    # assignment: a box is foreground above fg_iou_thresh, background below bg_iou_thresh
    c.number("fg_iou_thresh", 0, 1)
    c.number("bg_iou_thresh", 0, 1)
    if c.has("fg_iou_thresh") and c.has("bg_iou_thresh") and cfg.bg_iou_thresh > cfg.fg_iou_thresh:
        c.problems.append(f"bg_iou_thresh={cfg.bg_iou_thresh!r} must be <= fg_iou_thresh={cfg.fg_iou_thresh!r}")
    c.choice("device", ("auto", "cuda", "cpu"))
    c.choice("amp_dtype", ("float16", "bfloat16"))
    if training:
        c.number("epochs", 1, integer=True)
        c.number("lr", 0, low_open=True)
        c.choice("optimizer", ("sgd", "adamw"))
        c.number("momentum", 0, 1, high_open=True)
        c.number("weight_decay", 0)
        c.choice("scheduler", ("multistep", "cosine", "plateau"))
        c.number("lr_gamma", 0, low_open=True)
        c.number("plateau_patience", 0, integer=True)
        c.number("warmup_iters", 0, integer=True)
        c.number("warmup_factor", 0, 1)
        c.number("clip_grad_norm", 0)
        c.number("eval_interval", 1, integer=True)
        c.number("log_interval", 1, integer=True)
    if c.problems:
        raise ValueError("bad config value" + ("s" if len(c.problems) > 1 else "") + ": " + "; ".join(c.problems))


# ---- bad input vs bugs ---------------------------------------------------------------------
# RuntimeErrors that report bad input (data or checkpoints), by the start of their message.
_INPUT_RUNTIME_ERRORS = ("cannot read image", "could not read checkpoint", "device=cuda but")
_INPUT_RUNTIME_PATTERNS = (re.compile(r"does not fit the model"), re.compile(r"is \d+x\d+ on disk but"))


def user_error_message(error: BaseException) -> str | None:
    """The message to print for an error caused by bad input or settings, None for a bug.

    Bad input: ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError (a
    non-finite loss), and RuntimeErrors of the data and checkpoint loaders. An error raised in
    a data-loader worker is unwrapped to the worker's own message.
    """
    if isinstance(error, OSError) and error.errno is not None:  # raised by the OS: "[Errno 2] ...: 'path'"
        message = str(error)
    else:
        message = str(error.args[0]) if error.args else str(error)
    if "Original Traceback" in message:  # re-raised from a data-loader worker: keep its last line
        last = [line for line in message.strip().splitlines() if line.strip()][-1]
        message = last.split(": ", 1)[1] if ": " in last else last
    if isinstance(error, (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError)):
        return message
    if isinstance(error, RuntimeError) and (message.startswith(_INPUT_RUNTIME_ERRORS)
                                            or any(p.search(message) for p in _INPUT_RUNTIME_PATTERNS)):
        return message
    return None
