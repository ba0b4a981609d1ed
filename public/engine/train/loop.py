"""The training run: datasets, model, optimizer, the epoch loop, evaluation, checkpoints."""
from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from public.data.levels import level_warnings, resized_box_sizes
from public.data.loaders import build_dataset, build_loader
from public.data.prefetcher import Prefetcher, eval_resize
from public.data.validate import check_same_classes
from public.engine import distributed as dist_utils
from public.engine.device_plan import device_plan
from public.engine.distributed import prepare_demo_data
from public.engine.evaluate.evaluator import check_eval_backend, evaluate, log_evaluation
from public.engine.runs import resume as resume_utils
from public.engine.runs.checkpoint import (build_model_for_checkpoint, is_densedet, load_checkpoint,
                                           load_model_weights, model_state_from_checkpoint, save_checkpoint)
from public.engine.runs.identity import model_type, take_auto_settings
from public.engine.runs.state import drop_rows_from_epoch, preserved_rng, seed_everything
from public.engine.runs.weights import check_only_class_layer_differs, match_classes_by_name, without_imagenet
from public.engine.train.ema import ModelEMA
from public.engine.train.optim import LRScheduler, build_optimizer
from public.engine.train.resolve import resolve_for_run
from public.engine.train.stability import CollapseWatch, SpikeGuard, mean_over_processes
from public.engine.watch.logger import MetricLogger, append_jsonl, setup_logging
from public.engine.watch.plots import RunRecorder

logger = logging.getLogger("densedet")

# Files of the work_dir with one row per epoch: a resumed run replaces the rows of the epochs it redoes.
EPOCH_FILES = ("metrics.jsonl", "results.csv")


# ---- model ---------------------------------------------------------------------------------
def count_flops(model, cfg, device) -> tuple[float, int]:
    """Forward GFLOPs at test_min_size x test_min_size and the parameter count."""
    from torch.utils.flop_counter import FlopCounterMode

    size = cfg.test_min_size if cfg.resize_mode == "square" else min(cfg.test_min_size, cfg.max_size)
    size = int(math.ceil(size / cfg.size_divisible) * cfg.size_divisible)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size, device=device))
    model.train(was_training)
    return counter.get_total_flops() / 1e9, sum(p.numel() for p in model.parameters())


def init_source(cfg, path: str, category_ids: list[int], class_names: list[str] | None = None) -> dict:
    """Read ``init_from``'s checkpoint and give the structure keys ``cfg`` leaves "auto"
    (``head_norm``) its values: those stored in our checkpoint, or those a converted
    torchvision state dict implies (its head with or without GroupNorm)."""
    checkpoint = load_checkpoint(path)
    if is_densedet(checkpoint):
        take_auto_settings(cfg, checkpoint.get("config") or {})
    else:
        _, overrides = model_state_from_checkpoint(checkpoint, cfg, category_ids, path, class_names)
        take_auto_settings(cfg, overrides)
    return checkpoint


def init_weights_from(model, cfg, path: str, category_ids: list[int], class_names: list[str] | None = None,
                      checkpoint: dict | None = None) -> None:
    """``init_from``: our checkpoint or a torchvision state dict (``checkpoint``: its contents,
    if already read); classes matched by name, the class layer re-initialised where they
    differ (only it may)."""
    checkpoint = load_checkpoint(path) if checkpoint is None else checkpoint
    state, _ = model_state_from_checkpoint(checkpoint, cfg, category_ids, path, class_names)
    if is_densedet(checkpoint) and class_names is not None:
        state = match_classes_by_name(state, checkpoint["classes"], category_ids, class_names, model, path)
    check_only_class_layer_differs(model, state, path)
    load_model_weights(model, state, path, reinit_mismatched=True)


# ---- the run -------------------------------------------------------------------------------
def train(cfg) -> float:
    """Train ``cfg``; returns the best mAP. Launched once per process (torchrun for DDP)."""
    device = dist_utils.init_distributed(cfg.device)
    main = dist_utils.is_main_process()
    work_dir = Path(cfg.work_dir)
    resume = resume_utils.resume_path(cfg)
    notes = resume_utils.prepare_work_dir(cfg)   # refuses a work_dir that holds another run
    setup_logging(str(work_dir), main)
    for note in notes:
        logger.info(note)
    seed_everything(cfg.seed + dist_utils.get_rank())

    check_eval_backend(cfg.eval_backend)
    prepare_demo_data(cfg)
    train_set, val_set = build_dataset(cfg, train=True), build_dataset(cfg, train=False)
    check_classes(cfg, train_set, val_set)
    checkpoint = (resume_utils.load_resume_checkpoint(resume, cfg, train_set.class_names, train_set.category_ids)
                  if resume else None)
    init_checkpoint = (init_source(cfg, cfg.init_from, train_set.category_ids, train_set.class_names)
                       if cfg.init_from and checkpoint is None else None)
    # freezing, head_norm, warmup, lr steps, lr, batch: from this run, or as stored by the run resumed
    resolved = resolve_for_run(cfg, len(train_set), dist_utils.get_world_size(),
                               checkpoint.get("resolved") if checkpoint is not None else None, logger)
    if checkpoint is not None:  # "auto" structure keys the stored resolved block lacks: the checkpoint's values
        take_auto_settings(cfg, checkpoint.get("config") or {})
    rank, world = dist_utils.get_rank(), dist_utils.get_world_size()
    train_loader = build_loader(cfg, train_set, True, device, rank, world)
    val_loader = build_loader(cfg, val_set, False, device, rank, world)
    if len(train_loader) == 0:
        raise ValueError(f"{cfg.train_annotations}: {len(train_set)} images is fewer than one batch of {cfg.batch_size}")

    if checkpoint is not None:  # every weight comes from the checkpoint: no ImageNet weights needed
        model = build_model_for_checkpoint(cfg, train_set.num_classes)
    elif cfg.init_from:         # likewise
        model = without_imagenet(cfg).build_model(train_set.num_classes)
        init_weights_from(model, cfg, cfg.init_from, train_set.category_ids, train_set.class_names, init_checkpoint)
    else:
        model = cfg.build_model(train_set.num_classes)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    plan = device_plan(cfg, device, dist_utils.is_distributed())   # autocast, GradScaler, SyncBN
    model = plan.prepare_model(model)
    loss_fn, decoder = cfg.build_loss(), cfg.build_decoder()
    optimizer = build_optimizer(cfg, model)
    scheduler = LRScheduler(optimizer, cfg, len(train_loader))
    amp_dtype, scaler = plan.autocast_dtype, plan.grad_scaler()

    start_epoch, best_map, pending_losses = 0, -1.0, None   # pending: the last epoch's evaluation is redone
    best_epoch = None                                       # the epoch (1-based) of best.pth
    guard, watch = SpikeGuard(cfg.on_spike, cfg.spike_factor), CollapseWatch()
    if checkpoint is not None:
        start_epoch, best_map, pending_losses = resume_utils.restore(checkpoint, resume, model, optimizer,
                                                                     scheduler, scaler)
        best_epoch = resume_utils.best_epoch_of(checkpoint, work_dir)
        guard.load_state_dict(checkpoint.get("spikes") or {})
        watch = CollapseWatch(checkpoint.get("evaluations"))
    # the averaged weights (evaluated and saved as the model) start from the weights trained so far
    ema = ModelEMA(model, cfg.ema, cfg.ema_tau) if cfg.ema > 0 else None
    if ema is not None and checkpoint is not None:
        resume_utils.restore_ema(checkpoint, ema)
    eval_model = ema.module if ema is not None else model

    if main:
        changed = " ".join(f"{key}={value!r}" for key, value in cfg.changed().items() if key != "work_dir")
        logger.info("config %s with %s (all keys: %s)", type(cfg).__module__, changed or "its defaults",
                    Path(cfg.work_dir) / "config.json")
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        logger.info("data: %d train images, %d val images, %d classes: %s", len(train_set), len(val_set),
                    train_set.num_classes, ", ".join(train_set.class_names[:20]))
        # e.g. the paper's level ranges or anchors on small objects: every box on P3, or none matched well
        for line in level_warnings(cfg, resized_box_sizes(train_set.validation, cfg, train=True)[0]):
            logger.warning("levels: %s (python -m tools.check_dataset shows the table)", line)
        if cfg.flops:
            gflops, params = count_flops(model, cfg, device)
            logger.info("model: %.2fM parameters, %.1f GFLOPs per %dpx forward", params / 1e6, gflops, cfg.test_min_size)

    ddp_model = (DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
                 if dist_utils.is_distributed() else model)
    meta = {"format": "densedet", "model_type": model_type(cfg), "config": cfg.to_dict(), "resolved": resolved,
            "classes": {"names": train_set.class_names, "category_ids": train_set.category_ids}}
    if main:  # rows of the epochs this run (re)does are replaced, not duplicated
        for name in EPOCH_FILES:
            drop_rows_from_epoch(work_dir / name, start_epoch + (pending_losses is None))
    recorder = RunRecorder(work_dir, start_epoch, len(train_loader), cfg.tensorboard, main)
    evaluation = functools.partial(evaluate_epoch, eval_model, decoder, val_loader, val_set, device, amp_dtype,
                                   cfg, scheduler, meta, recorder, watch)
    if checkpoint is not None:
        resume_utils.restore_rng(checkpoint)   # last: the states of the uninterrupted run at this epoch's end
        if pending_losses is not None:
            best_map, best_epoch = evaluation(start_epoch, pending_losses, best_map, best_epoch)

    for epoch in range(start_epoch, cfg.epochs):
        train_loader.batch_sampler.set_epoch(epoch)   # the order and augmentation of this epoch's images
        losses = train_one_epoch(ddp_model, loss_fn, optimizer, scheduler, scaler, train_loader, device,
                                 epoch, cfg, amp_dtype, recorder.iteration_logger(epoch), guard=guard, ema=ema)
        recorder.trained(epoch + 1, losses, scheduler.get_lr())
        rising = guard.epoch_ended(epoch + 1, losses)   # the same on every process (losses are reduced)
        if rising and main:
            logger.warning("epoch %d: %s", epoch + 1, rising)
        evaluate_now = (epoch + 1) % cfg.eval_interval == 0 or epoch + 1 == cfg.epochs
        if main and not evaluate_now:  # every epoch has its row; an evaluated one gets it with its stats
            append_jsonl(work_dir / "metrics.jsonl", {"epoch": epoch + 1, **losses, "lr": scheduler.get_lr(),
                                                      "time": recorder.elapsed()})
            recorder.rows_changed()
        # latest.pth before the evaluation: an evaluation that fails or is killed loses no training
        state = resume_utils.latest_state(model, optimizer, scheduler, scaler, epoch + 1, best_map, evaluate_now,
                                          losses, best_epoch, ema=ema, guard=guard, watch=watch)
        if main:
            save_checkpoint({**meta, **state}, work_dir / "latest.pth")
        if evaluate_now:
            best_map, best_epoch = evaluation(epoch + 1, losses, best_map, best_epoch)
    recorder.close()
    spikes = f"; {guard.spikes} loss spike(s), see the warnings" if guard.spikes else ""
    spikes += f"; the training loss climbed in {guard.rises} epoch(s), see the warnings" if guard.rises else ""
    summary, fell_back = watch.summary(best_map, best_epoch)
    (logger.warning if fell_back else logger.info)("done: %s%s; checkpoints in %s", summary, spikes, work_dir)
    return best_map


def check_classes(cfg, train_set, val_set) -> None:
    """The training data names at least one class, and the same ones (ids and names) as the
    validation data."""
    if train_set.num_classes == 0:
        raise ValueError(f"{cfg.train_annotations} has no categories ('categories': []): list the classes as "
                         f"\"categories\": [{{\"id\": 1, \"name\": \"...\"}}, ...]")
    check_same_classes(train_set, val_set, cfg.train_annotations, cfg.val_annotations)


def evaluate_epoch(model, decoder, val_loader, val_set, device, amp_dtype, cfg, scheduler, meta, recorder, watch,
                   epoch: int, losses: dict, best_map: float,
                   best_epoch: int | None = None) -> tuple[float, int | None]:
    """Evaluate after ``epoch`` (1-based) epochs: log it, add its metrics.jsonl row (and the
    recorder's results.csv, results.png, TensorBoard), save best.pth if the mAP improved; returns
    the best mAP and its epoch (``best_epoch`` if not improved). Random states are left as they
    were, so the training that follows does not depend on whether this ran (or ran again on
    resume)."""
    with preserved_rng():
        result = evaluate(model, decoder, val_loader, val_set, device, amp_dtype,
                          cfg.channels_last, cfg.eval_backend, eval_resize(cfg))
    scheduler.step_metric(result.stats[0])
    if dist_utils.is_main_process():
        work_dir = Path(cfg.work_dir)
        log_evaluation(result, epoch)
        append_jsonl(work_dir / "metrics.jsonl", {"epoch": epoch, **result.metrics, **losses,
                                                  "lr": scheduler.get_lr(), "time": recorder.elapsed()})
        recorder.evaluated(epoch, result)  # TensorBoard, results.csv, results.png
        warning = watch.evaluated(epoch, result.stats[0], result.num_detections, cfg.score_thresh)
        if warning:
            logger.warning("epoch %d: %s", epoch, warning)
        if result.stats[0] > best_map:
            best_map, best_epoch = result.stats[0], epoch
            save_checkpoint({**meta, "model": model.state_dict(), "epoch": epoch, "best_map": best_map},
                            work_dir / "best.pth")
            logger.info("new best mAP %.4f at epoch %d: saved %s", best_map, epoch, work_dir / "best.pth")
    return tuple(dist_utils.broadcast_object((best_map, best_epoch)))


def train_one_epoch(model, loss_fn, optimizer, scheduler, scaler, loader, device, epoch, cfg, amp_dtype,
                    on_log=None, guard: SpikeGuard | None = None, ema: ModelEMA | None = None) -> dict:
    """One pass over ``loader``; returns the mean of each loss over the epoch's updating steps.
    ``on_log``: see MetricLogger. ``guard`` judges each step's loss before the backward pass
    (a spike is logged, and skipped with on_spike=skip); ``ema`` is updated after each step."""
    model.train()
    guard = guard if guard is not None else SpikeGuard(cfg.on_spike, cfg.spike_factor)
    clip = cfg.effective("clip_grad_norm")
    unwrapped = model.module if isinstance(model, DistributedDataParallel) else model
    metric_logger = MetricLogger(cfg.log_interval, device, on_log)
    header = f"epoch {epoch + 1}/{cfg.epochs}"
    for batch in metric_logger.log_every(Prefetcher(loader, device, cfg.channels_last), header):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(batch.images)
        losses = loss_fn(outputs, batch.targets)       # in float32, outside autocast
        total = sum(losses.values())
        # note: one host sync per step (and one all_reduce of a few numbers under DDP)
        values = mean_over_processes(torch.stack([v.detach() for v in losses.values()]).tolist())
        if not guard.check(dict(zip(losses, values)), scheduler.iteration + 1, epoch + 1,
                           batch.image_ids.tolist()):
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()                             # the schedule stays a function of the iteration
            continue
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        if clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update(unwrapped)
        metric_logger.update(loss=sum(values), **dict(zip(losses, values)), lr=scheduler.get_lr())
    return {k: v for k, v in metric_logger.averages().items() if k.startswith("loss")}
