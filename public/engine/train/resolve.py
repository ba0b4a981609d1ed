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

``resolve`` returns the values used; the trainer writes them into the config (so config.json
and every checkpoint hold what the run actually used, with ``scale_lr=False`` since ``lr`` is
then the lr used) and logs one block. A resumed run takes the stored values instead of
resolving again, so a resumed schedule is the interrupted one.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from public.models.backbone import backbone_freezing

# The keys whose value ``resolve`` may change; stored in every checkpoint as "resolved".
RESOLVED_KEYS = ("frozen_stages", "freeze_bn", "head_norm", "warmup_iters", "lr_steps", "lr", "scale_lr",
                 "batch_size", "num_workers", "clip_grad_norm", "ema_tau")


@dataclass
class Resolution:
    """What ``resolve`` decided: the values to apply, one line per decision, and warnings."""
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


def resolve(cfg, num_train_images: int, world_size: int = 1) -> Resolution:
    """Derive the run-dependent settings of ``cfg`` for ``num_train_images`` images split over
    ``world_size`` processes. ``cfg`` is not modified.

    The number of iterations per epoch is that of the training loader: batches of
    ``batch_size`` per process, the last partial one dropped when there are at least
    ``batch_size`` x ``world_size`` images (as ``build_loader`` does; aspect-ratio grouping
    drops at most one partial batch per orientation, so this is exact up to one iteration).
    """
    lines, warnings = [], []
    values = {key: getattr(cfg, key) for key in RESOLVED_KEYS}

    # ---- the batch --------------------------------------------------------------------
    batch_size = cfg.batch_size
    per_rank_images = max(1, math.ceil(num_train_images / world_size))
    if num_train_images < batch_size * world_size:
        batch_size = per_rank_images
        warnings.append(f"only {num_train_images} training images for batch_size={cfg.batch_size} x "
                        f"{world_size} process(es): batch_size={batch_size}, one batch per epoch")
    values["batch_size"] = batch_size
    total_batch = batch_size * world_size
    iters_per_epoch = max(1, num_train_images // total_batch)
    total_iters = iters_per_epoch * cfg.epochs

    # ---- freezing -----------------------------------------------------------------------
    scratch = cfg.from_scratch()
    frozen_stages, freeze_bn = backbone_freezing(cfg)
    values["frozen_stages"], values["freeze_bn"] = frozen_stages, freeze_bn
    source = ("backbone trained from scratch" if scratch else
              "backbone from " + ("init_from" if cfg.init_from else "ImageNet weights"))
    bn = "BatchNorm frozen" if freeze_bn else "BatchNorm trained (SyncBN under DDP on GPUs)"
    lines.append(f"{source}: frozen_stages={frozen_stages}, {bn}"
                 + ("" if cfg.frozen_stages == "auto" and cfg.freeze_bn == "auto" else " (as set)"))
    if scratch and (frozen_stages > 0 or freeze_bn):
        warnings.append(f"frozen_stages={frozen_stages} freeze_bn={freeze_bn} freeze random weights: there are no "
                        f"pretrained weights to protect (set frozen_stages=auto freeze_bn=auto to train them)")
    if cfg.head_norm == "auto":
        values["head_norm"] = cfg.effective("head_norm")
        lines.append("head towers with GroupNorm (head_norm=auto: from random weights, plain towers do not learn "
                     "to classify)" if values["head_norm"] == "GN" else
                     "head towers plain, the paper's (head_norm=auto with trained weights)")
    advice = []
    if scratch and cfg.head_norm == "none":
        advice.append("the head's towers have no normalisation (head_norm='none', the RetinaNet paper's) and the "
                      "backbone starts from random weights: detectors trained from scratch need normalised heads "
                      "(He et al., Rethinking ImageNet Pre-training); set head_norm=GN or auto (RetinaNet with "
                      "plain towers on the demo data from scratch: loss_cls stayed near 1.1 and mAP below 0.03 "
                      "for 24 epochs)")

    # ---- lr -------------------------------------------------------------------------------
    if cfg.scale_lr:
        lr = cfg.lr * total_batch / cfg.reference_batch
        lines.append(f"lr {lr:.6g} for a total batch of {total_batch} ({cfg.lr:g} at {cfg.reference_batch}; "
                     f"scale_lr=False uses lr as given)")
        values["lr"], values["scale_lr"] = lr, False
    else:
        lines.append(f"lr {cfg.lr:.6g} as given, for a total batch of {total_batch} (scale_lr=False)")

    # ---- warmup -------------------------------------------------------------------------
    cap = max(0, int(cfg.warmup_max_fraction * total_iters))
    warmup = min(cfg.warmup_iters, cap)
    values["warmup_iters"] = warmup
    if warmup < cfg.warmup_iters:
        lines.append(f"warmup {warmup} iterations (run: {total_iters}; warmup_iters={cfg.warmup_iters} capped at "
                     f"warmup_max_fraction={cfg.warmup_max_fraction:g} of the run)")
        warnings.append(f"warmup_iters={cfg.warmup_iters} is more than {cfg.warmup_max_fraction:g} of this run's "
                        f"{total_iters} iterations: warmup shortened to {warmup}")
    else:
        lines.append(f"warmup {warmup} iterations (run: {total_iters} = {cfg.epochs} epochs x {iters_per_epoch})")

    # ---- stability ------------------------------------------------------------------------
    clip = cfg.effective("clip_grad_norm")
    values["clip_grad_norm"] = clip
    if cfg.clip_grad_norm == "auto":
        lines.append(f"gradient clipping at norm {clip:g} (clip_grad_norm=auto: " +
                     ("from random init, unclipped runs spike)" if clip else "trained weights, the papers' recipe)"))
    tau = cfg.effective("ema_tau")
    if cfg.ema_tau == "auto":
        tau = max(1, min(tau, total_iters // 4))
    values["ema_tau"] = tau
    if cfg.ema > 0:
        lines.append(f"EMA of the weights: decay {cfg.ema:g} x (1 - exp(-updates / {tau}))"
                     + (" (ema_tau=auto: 2000, at most a quarter of the run)" if cfg.ema_tau == "auto" else ""))
        horizon = 1 / (1 - cfg.ema) if cfg.ema < 1 else float("inf")
        if horizon > total_iters / 4:
            suggested = 1 - 10 / total_iters if total_iters > 10 else 0.0
            warnings.append(f"ema={cfg.ema:g} averages over ~{horizon:.0f} iterations, more than a quarter of this "
                            f"run's {total_iters}: the average lags the model it follows (12 epochs on the tree "
                            f"crowns: ema=0.999 scored 0.098 mAP against 0.112 without); "
                            + (f"ema={suggested:.2f} averages over a tenth of the run" if suggested > 0 else
                               "this run is too short for an average"))

    # ---- lr steps -------------------------------------------------------------------------
    steps = step_epochs(cfg.lr_steps, cfg.epochs)
    values["lr_steps"] = steps
    if cfg.scheduler == "multistep":
        given_as_epochs = all(s >= 1 for s in cfg.lr_steps)
        late = [s for s in steps if s >= cfg.epochs] if given_as_epochs else []
        lines.append(f"lr steps at epochs {', '.join(map(str, steps))} of {cfg.epochs} (x{cfg.lr_gamma:g} each)")
        if late:
            warnings.append(f"lr_steps {steps}: epochs {late} are not before the end of the run (epochs={cfg.epochs}); "
                            f"give fractions of the run (e.g. (0.667, 0.917)) to follow epochs")
    else:
        lines.append(f"scheduler {cfg.scheduler}")

    # ---- data loading ---------------------------------------------------------------------
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cfg.num_workers > cpus:
        values["num_workers"] = cpus
        lines.append(f"num_workers {cpus} (the CPUs this process may use; num_workers={cfg.num_workers} asked)")

    # ---- evaluation -----------------------------------------------------------------------
    if cfg.eval_interval > cfg.epochs:
        warnings.append(f"eval_interval={cfg.eval_interval} is longer than the run ({cfg.epochs} epochs): "
                        f"evaluating after the last epoch only")
    return Resolution(values, lines, warnings, advice)


def resolve_for_run(cfg, num_train_images: int, world_size: int, stored: dict | None, log) -> dict:
    """Resolve ``cfg``'s run-dependent settings (or take ``stored``, the "resolved" entry of the
    checkpoint a run resumes from), write them into ``cfg``, log the block and the warnings
    with ``log`` (a logger); return the entry to store in checkpoints."""
    requested = {key: getattr(cfg, key) for key in RESOLVED_KEYS}
    if stored is not None:
        changed = [key for key in RESOLVED_KEYS
                   if key in stored["requested"] and stored["requested"][key] != requested[key]]
        cfg.update(stored["values"])
        missing = [key for key in RESOLVED_KEYS if key not in stored["values"]]   # keys newer than the run
        if missing:
            fresh = resolve(cfg, num_train_images, world_size).values
            cfg.update({key: fresh[key] for key in missing})
            stored = {**stored, "values": {**stored["values"], **{key: fresh[key] for key in missing}}}
        log.info("resolved (stored in the checkpoint this run resumes from):\n  %s",
                 "\n  ".join(stored["lines"]))
        if changed:
            log.warning("resuming keeps the settings the run started with: %s (this command asks for %s)",
                        ", ".join(f"{k}={stored['values'][k]!r}" for k in changed),
                        ", ".join(f"{k}={requested[k]!r}" for k in changed))
        return stored
    resolution = resolve(cfg, num_train_images, world_size)
    cfg.update(resolution.values)
    log.info("resolved:\n  %s", "\n  ".join(resolution.lines))
    for warning in resolution.warnings:
        log.warning("short or small run: %s", warning)
    for advice in resolution.advice:
        log.warning("from scratch: %s", advice)
    return {"values": resolution.values, "requested": requested, "lines": resolution.lines}
