"""Settings that depend on the run, resolved once at its start.

The papers' recipes are written for COCO fine-tuning: ImageNet weights to protect (frozen stem
and stage 1, frozen BatchNorm), 90k iterations (500 warmup iterations, lr drops at epochs 8 and
11 of 12) and a total batch of 16 (lr 0.01). A user's own small dataset, trained from scratch
at another batch size, needs other values; this module derives them from what the run actually
is, unless the user set them:

- freezing (``frozen_stages``, ``freeze_bn``): "auto" freezes the stem, stage 1 and BatchNorm
  (the paper) when the backbone starts from trained weights (``pretrained``,
  ``backbone_weights`` or ``init_from``), and trains everything from random init;
- ``head_norm`` "auto" (RetinaNet's): the paper's plain towers with trained weights, GroupNorm
  from random init (plain towers trained from scratch do not learn to classify);
- warmup: ``warmup_iters``, capped at ``warmup_max_fraction`` of the run's iterations;
- lr steps: ``lr_steps`` below 1 are fractions of ``epochs`` (the default 8/12 and 11/12 is the
  1x recipe at 12 epochs and the 2x recipe at 24), whole numbers are epochs;
- lr: ``lr`` is the lr at a total batch of ``reference_batch``, scaled linearly to the run's
  total batch (``batch_size`` x processes) when ``scale_lr`` is set (the linear scaling rule of
  Goyal et al., 2017, as mmdetection's ``auto_scale_lr``).

``resolve`` makes the run spec (``cfg.resolve``: a frozen copy of the config with these values,
every "auto" key resolved by its declared rule, and where each value came from); the block of
lines says what was decided, and every checkpoint stores the values ("resolved"). A resumed
run takes the stored values instead of resolving again, so a resumed schedule is the
interrupted one, and says which of this command's settings it did not take.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable

from public.engine.train.budget import epochs_for_budget
from public.keys import RunFacts, is_auto

# The keys whose value ``resolve`` may change; stored in every checkpoint as "resolved".
RESOLVED_KEYS = ("frozen_stages", "freeze_bn", "head_norm", "warmup_iters", "lr_steps", "lr", "scale_lr",
                 "batch_size", "num_workers", "clip_grad_norm", "ema_tau")


@dataclass
class Resolution:
    """What ``resolve`` decided: the run spec, the resolved values, one line per decision, and warnings."""
    spec: object                                     # the frozen config every part of the run reads
    values: dict                                     # key -> value used (RESOLVED_KEYS)
    lines: list[str] = field(default_factory=list)   # the "resolved:" block, one decision a line
    warnings: list[str] = field(default_factory=list)  # what a short or small run changed
    advice: list[str] = field(default_factory=list)    # settings that train poorly here, left as set


def step_epochs(lr_steps: tuple, epochs: int) -> tuple[int, ...]:
    """``lr_steps`` as epochs: values below 1 are fractions of ``epochs`` (rounded, at least 1),
    whole numbers are epochs already (the config checks that they are one or the other)."""
    steps = tuple(lr_steps)
    if all(s < 1 for s in steps):
        return tuple(max(1, round(s * epochs)) for s in steps)
    return tuple(int(s) for s in steps)


@dataclass
class _Decisions:
    """The run-dependent values as they are decided, with their lines and warnings."""
    values: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)
    lines: list = field(default_factory=list)
    later: list = field(default_factory=list)      # lines that close the block (lr steps, loading)
    warnings: list = field(default_factory=list)

    def set(self, key, value, why: str) -> None:
        self.values[key], self.sources[key] = value, why


def resolve(cfg, num_train_images: int, world_size: int = 1, stored_config: dict | None = None,
            stored_source: str = "checkpoint") -> Resolution:
    """The run spec of ``cfg`` for ``num_train_images`` images split over ``world_size``
    processes; ``stored_config``: the config of the checkpoint the run starts from (init_from),
    whose structure keys a key left "auto" takes. ``cfg`` is not modified.

    The number of iterations per epoch is that of the training loader: batches of
    ``batch_size`` per process, the last partial one dropped when there are at least
    ``batch_size`` x ``world_size`` images (as ``build_loader`` does; aspect-ratio grouping
    drops at most one partial batch per orientation, so this is exact up to one iteration).
    """
    run = _Decisions()
    total_iters, iters_per_epoch, workers_line = _batch(cfg, num_train_images, world_size, run)
    _lr_and_schedule(cfg, world_size, total_iters, iters_per_epoch, run)
    run.later += [workers_line] if workers_line else []
    spec = cfg.resolve(RunFacts(total_iters, stored_config or {}, stored_source), run.values, run.sources)
    lines = _model_lines(cfg, spec) + run.lines + _stability_lines(cfg, spec, total_iters, run.warnings) + run.later
    if cfg.eval_interval > cfg.epochs:
        run.warnings.append(f"eval_interval={cfg.eval_interval} is longer than the run ({cfg.epochs} epochs): "
                            f"evaluating after the last epoch only")
    advice = []
    if spec.from_scratch() and cfg.head_norm == "none":
        advice.append("the head's towers have no normalisation (head_norm='none', the RetinaNet paper's) and the "
                      "backbone starts from random weights: detectors trained from scratch need normalised heads "
                      "(He et al., Rethinking ImageNet Pre-training); set head_norm=GN or auto (RetinaNet with "
                      "plain towers on the demo data from scratch: loss_cls stayed near 1.1 and mAP below 0.03 "
                      "for 24 epochs)")
    values = {key: getattr(spec, key) for key in RESOLVED_KEYS}
    return Resolution(spec, values, lines, run.warnings, advice)


def _batch(cfg, num_train_images: int, world_size: int, run: _Decisions) -> tuple[int, int, str | None]:
    """The batch per process and the loader's workers; the run's iterations in all and per epoch."""
    batch_size = cfg.batch_size
    if num_train_images < batch_size * world_size:
        batch_size = max(1, math.ceil(num_train_images / world_size))
        run.warnings.append(f"only {num_train_images} training images for batch_size={cfg.batch_size} x "
                            f"{world_size} process(es): batch_size={batch_size}, one batch per epoch")
        run.set("batch_size", batch_size, f"fewer images than a batch ({num_train_images})")
    iters_per_epoch = max(1, num_train_images // (batch_size * world_size))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cfg.num_workers > cpus:
        run.set("num_workers", cpus, "the CPUs this process may use")
        workers_line = (f"num_workers {cpus} (the CPUs this process may use; num_workers={cfg.num_workers} asked)")
    else:
        workers_line = None
    return iters_per_epoch * cfg.epochs, iters_per_epoch, workers_line


def _lr_and_schedule(cfg, world_size: int, total_iters: int, iters_per_epoch: int, run: _Decisions) -> None:
    """lr scaled to the total batch, warmup capped to the run, lr steps as epochs."""
    total_batch = run.values.get("batch_size", cfg.batch_size) * world_size
    if cfg.scale_lr:
        lr = cfg.lr * total_batch / cfg.reference_batch
        run.set("lr", lr, f"lr x {total_batch}/{cfg.reference_batch} (scale_lr)")
        run.set("scale_lr", False, "lr is the lr used")
        run.lines.append(f"lr {lr:.6g} for a total batch of {total_batch} ({cfg.lr:g} at {cfg.reference_batch}; "
                         f"scale_lr=False uses lr as given)")
    else:
        run.lines.append(f"lr {cfg.lr:.6g} as given, for a total batch of {total_batch} (scale_lr=False)")

    warmup = min(cfg.warmup_iters, max(0, int(cfg.warmup_max_fraction * total_iters)))
    if warmup < cfg.warmup_iters:
        run.set("warmup_iters", warmup, f"capped at warmup_max_fraction of {total_iters} iterations")
        run.lines.append(f"warmup {warmup} iterations (run: {total_iters}; warmup_iters={cfg.warmup_iters} capped "
                         f"at warmup_max_fraction={cfg.warmup_max_fraction:g} of the run)")
        run.warnings.append(f"warmup_iters={cfg.warmup_iters} is more than {cfg.warmup_max_fraction:g} of this "
                            f"run's {total_iters} iterations: warmup shortened to {warmup}")
    else:
        run.lines.append(f"warmup {warmup} iterations (run: {total_iters} = {cfg.epochs} epochs x "
                         f"{iters_per_epoch})")

    steps = step_epochs(cfg.lr_steps, cfg.epochs)
    if steps != tuple(cfg.lr_steps):
        run.set("lr_steps", steps, f"fractions of {cfg.epochs} epochs")
    if cfg.scheduler == "multistep":
        late = [s for s in steps if s >= cfg.epochs] if all(s >= 1 for s in cfg.lr_steps) else []
        run.later.append(f"lr steps at epochs {', '.join(map(str, steps))} of {cfg.epochs} (x{cfg.lr_gamma:g} each)")
        if late:
            run.warnings.append(f"lr_steps {steps}: epochs {late} are not before the end of the run "
                                f"(epochs={cfg.epochs}); give fractions of the run (e.g. (0.667, 0.917)) to follow "
                                f"epochs")
    else:
        run.later.append(f"scheduler {cfg.scheduler}")


def _model_lines(cfg, spec) -> list[str]:
    """What the weights' origin decided: freezing and the head's norm (``cfg``: as asked)."""
    scratch = spec.from_scratch()
    source = ("backbone trained from scratch" if scratch else
              "backbone from " + ("init_from" if spec.init_from else "ImageNet weights"))
    bn = "BatchNorm frozen" if spec.freeze_bn else "BatchNorm trained (SyncBN under DDP on GPUs)"
    lines = [f"{source}: frozen_stages={spec.frozen_stages}, {bn}"
             + ("" if is_auto(cfg.frozen_stages) and is_auto(cfg.freeze_bn) else " (as set)")]
    if is_auto(cfg.head_norm):
        lines.append("head towers with GroupNorm (head_norm=auto: from random weights, plain towers do not learn "
                     "to classify)" if spec.head_norm == "GN" else
                     "head towers plain, the paper's (head_norm=auto with trained weights)")
    return lines


def _stability_lines(cfg, spec, total_iters: int, warnings: list) -> list[str]:
    """Clipping and the EMA as resolved; a warning for frozen random weights and for an EMA
    that lags the run."""
    lines = []
    if spec.from_scratch() and (spec.frozen_stages > 0 or spec.freeze_bn):
        warnings.append(f"frozen_stages={spec.frozen_stages} freeze_bn={spec.freeze_bn} freeze random weights: "
                        f"there are no pretrained weights to protect (set frozen_stages=auto freeze_bn=auto to "
                        f"train them)")
    if is_auto(cfg.clip_grad_norm):
        lines.append(f"gradient clipping at norm {spec.clip_grad_norm:g} (clip_grad_norm=auto: " +
                     ("from random init, unclipped runs spike)" if spec.clip_grad_norm else
                      "trained weights, the papers' recipe)"))
    if spec.ema > 0:
        lines.append(f"EMA of the weights: decay {spec.ema:g} x (1 - exp(-updates / {spec.ema_tau}))"
                     + (" (ema_tau=auto: 2000, at most a quarter of the run)" if is_auto(cfg.ema_tau) else ""))
        horizon = 1 / (1 - spec.ema)
        if horizon > total_iters / 4:
            suggested = 1 - 10 / total_iters if total_iters > 10 else 0.0
            warnings.append(f"ema={spec.ema:g} averages over ~{horizon:.0f} iterations, more than a quarter of this "
                            f"run's {total_iters}: the average lags the model it follows (12 epochs on the tree "
                            f"crowns: ema=0.999 scored 0.098 mAP against 0.112 without); "
                            + (f"ema={suggested:.2f} averages over a tenth of the run" if suggested > 0 else
                               "this run is too short for an average"))
    return lines


@dataclass
class Budget:
    """What ``time_budget`` needs from the run: ``speed(spec) -> Speed`` (measured with the spec's
    model), the seconds since the run started (``elapsed()``) and the validation images."""
    speed: Callable
    elapsed: Callable[[], float]
    num_val_images: int


def _within_budget(cfg, first: Resolution, num_train_images: int, world_size: int, start, budget: Budget):
    """The resolution of ``cfg`` with the epochs that fit in ``time_budget`` (``first``: with the
    configured epochs, whose spec the speed is measured with)."""
    speed = budget.speed(first.spec)
    iters_per_epoch = max(1, num_train_images // (first.spec.batch_size * world_size))
    epochs, line = epochs_for_budget(cfg.time_budget, budget.elapsed(), speed, iters_per_epoch,
                                     budget.num_val_images, cfg.eval_interval)
    budgeted = cfg.replace(f"time_budget={cfg.time_budget:g} min", epochs=epochs)
    resolution = resolve(budgeted, num_train_images, world_size, start, "init_from")
    resolution.values["epochs"] = epochs
    resolution.lines.insert(0, line)
    return resolution


def resolve_for_run(cfg, num_train_images: int, world_size: int, log, resumed: dict | None = None,
                    start: dict | None = None, budget: "Budget | None" = None) -> tuple[object, dict]:
    """The run spec and the "resolved" entry to store in its checkpoints; logs the block and the
    warnings with ``log`` (a logger).

    ``resumed``: the checkpoint the run resumes from: its stored values are the run's (not a new
    resolution), and the settings of this command it does not take are named in a warning.
    ``start``: the config of the checkpoint of init_from (or the settings a converted foreign
    one implies), whose structure keys a key left "auto" takes. ``budget``: how to measure the
    run's speed, for ``time_budget`` (the epochs resolved from it are stored with the values)."""
    requested = {key: getattr(cfg, key) for key in RESOLVED_KEYS}
    if resumed is None:
        resolution = resolve(cfg, num_train_images, world_size, start, "init_from")
        if cfg.time_budget > 0 and budget is not None:
            resolution = _within_budget(cfg, resolution, num_train_images, world_size, start, budget)
        log.info("resolved:\n  %s", "\n  ".join(resolution.lines))
        for warning in resolution.warnings:
            log.warning("short or small run: %s", warning)
        for advice in resolution.advice:
            log.warning("from scratch: %s", advice)
        return resolution.spec, {"values": resolution.values, "requested": requested, "lines": resolution.lines}
    stored = resumed["resolved"]
    fresh = resolve(cfg, num_train_images, world_size, resumed.get("config") or {}, "the checkpoint resumed")
    missing = [key for key in RESOLVED_KEYS if key not in stored["values"]]   # keys newer than the run
    values = {**stored["values"], **{key: fresh.values[key] for key in missing}}
    total_iters = values.get("epochs", cfg.epochs) * max(1, num_train_images // (values["batch_size"] * world_size))
    spec = cfg.resolve(RunFacts(total_iters, resumed.get("config") or {}, "the checkpoint resumed"), values,
                       {key: "the checkpoint resumed" for key in stored["values"]})
    log.info("resolved (stored in the checkpoint this run resumes from):\n  %s", "\n  ".join(stored["lines"]))
    changed = [key for key in RESOLVED_KEYS
               if key in stored["requested"] and stored["requested"][key] != requested[key]]
    if changed:
        log.warning("resuming keeps the settings the run started with: %s (this command asks for %s)",
                    ", ".join(f"{k}={stored['values'][k]!r}" for k in changed),
                    ", ".join(f"{k}={requested[k]!r}" for k in changed))
    return spec, {**stored, "values": values}
