"""The training run: datasets, model, optimizer, the epoch loop, evaluation, checkpoints."""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from public.data.levels import level_warnings, resized_box_sizes
from public.data.loaders import build_dataset, build_loader, prepare_builtin_data
from public.data.prefetcher import Prefetcher, eval_resize
from public.data.validate import check_same_classes
from public.engine import distributed as dist_utils
from public.engine.device_plan import device_plan
from public.engine.evaluate.evaluator import check_eval_backend, evaluate, log_evaluation
from public.engine.runs import resume as resume_utils
from public.engine.runs.checkpoint import (build_model_for_checkpoint, is_densedet, load_checkpoint,
                                           load_model_weights, model_state_from_checkpoint, save_checkpoint)
from public.engine.runs.identity import model_type
from public.engine.runs.state import drop_rows_from_epoch, preserved_rng, seed_everything
from public.engine.runs.weights import check_only_class_layer_differs, match_classes_by_name, without_imagenet
from public.engine.train.ema import ModelEMA
from public.engine.train.optim import LRScheduler, build_optimizer
from public.engine.train.budget import measure_speed
from public.engine.train.resolve import Budget, resolve_for_run
from public.engine.train.stability import CollapseWatch, SpikeGuard, mean_over_processes
from public.engine.watch.logger import MetricLogger, append_jsonl, setup_logging
from public.engine.watch.plots import RunRecorder

logger = logging.getLogger("densedet")

# Files of the work_dir with one row per epoch: a resumed run replaces the rows of the epochs it redoes.
EPOCH_FILES = ("metrics.jsonl", "results.csv")


# ---- what the run starts from -------------------------------------------------------------------
@dataclass
class Start:
    """The checkpoints a run starts from: ``latest.pth`` to resume (``resume``, ``checkpoint``),
    or ``init_from``'s weights (``init``) and the structure settings they imply (``init_config``:
    our checkpoint's config, or those a converted torchvision state dict needs)."""
    resume: str | None = None
    checkpoint: dict | None = None
    init: dict | None = None
    init_config: dict | None = None


def read_start(cfg, train_set) -> Start:
    """Read (and check against ``cfg`` and the training classes) what the run starts from."""
    resume = resume_utils.resume_path(cfg)
    ids, names = train_set.category_ids, train_set.class_names
    if resume:
        return Start(resume, resume_utils.load_resume_checkpoint(resume, cfg, names, ids))
    if not cfg.init_from:
        return Start()
    init = load_checkpoint(cfg.init_from)
    settings = (init.get("config") or {}) if is_densedet(init) else \
        model_state_from_checkpoint(init, cfg, ids, cfg.init_from, names)[1]
    return Start(init=init, init_config=settings)


def init_weights_from(model, spec, path: str, category_ids: list[int], class_names: list[str] | None = None,
                      checkpoint: dict | None = None) -> None:
    """``init_from``: our checkpoint or a torchvision state dict (``checkpoint``: its contents,
    if already read); classes matched by name, the class layer re-initialised where they
    differ (only it may)."""
    checkpoint = load_checkpoint(path) if checkpoint is None else checkpoint
    state, _ = model_state_from_checkpoint(checkpoint, spec, category_ids, path, class_names)
    if is_densedet(checkpoint) and class_names is not None:
        state = match_classes_by_name(state, checkpoint["classes"], category_ids, class_names, model, path)
    check_only_class_layer_differs(model, state, path)
    load_model_weights(model, state, path, reinit_mismatched=True)


def build_run_model(spec, train_set, start: Start, device: torch.device) -> torch.nn.Module:
    """The model to train, on ``device``: random init (ImageNet weights in the backbone if the
    spec asks), or every weight from the checkpoint resumed or ``init_from`` (no ImageNet
    weights fetched then)."""
    if start.checkpoint is not None:
        model = build_model_for_checkpoint(spec, train_set.num_classes)   # restored below
    elif start.init is not None:
        model = without_imagenet(spec).build_model(train_set.num_classes)
        init_weights_from(model, spec, spec.init_from, train_set.category_ids, train_set.class_names, start.init)
    else:
        model = spec.build_model(train_set.num_classes)
    model.to(device)
    if spec.channels_last:
        model.to(memory_format=torch.channels_last)
    return device_plan(spec, device, dist_utils.is_distributed()).prepare_model(model)   # SyncBN on GPUs


# ---- the run -------------------------------------------------------------------------------
def train(cfg) -> float:
    """Train ``cfg``; returns the best mAP. Launched once per process (torchrun for DDP)."""
    try:
        return _train(cfg)
    finally:   # the work_dir's lock, taken in prepare_work_dir: released at the end and on any error
        resume_utils.release_work_dir(cfg)


def _train(cfg) -> float:
    """The recipe: read the data and what the run starts from, resolve the run spec (every part
    below reads it), build, restore a resumed run, then train and evaluate epoch by epoch."""
    started = time.perf_counter()
    device = dist_utils.init_distributed(cfg.device)
    work_dir, main = Path(cfg.work_dir), dist_utils.is_main_process()
    notes = resume_utils.prepare_work_dir(cfg)   # refuses a work_dir that holds another run
    setup_logging(str(work_dir), main)
    for note in notes:
        (logger.warning if note.startswith("warning") else logger.info)(note)
    seed_everything(cfg.seed + dist_utils.get_rank())
    check_eval_backend(cfg.eval_backend)
    prepare_builtin_data(cfg)
    train_set, val_set = build_dataset(cfg, train=True), build_dataset(cfg, train=False)
    check_classes(cfg, train_set, val_set)
    start = read_start(cfg, train_set)
    budget = Budget(lambda spec: measure_speed(spec, train_set, val_set, device),
                    lambda: time.perf_counter() - started, len(val_set))   # for time_budget
    spec, resolved = resolve_for_run(cfg, len(train_set), dist_utils.get_world_size(), logger, start.checkpoint,
                                     start.init_config, budget)
    run = build_run(spec, train_set, val_set, start, device, resolved)
    if main:
        log_start(spec, run, train_set, val_set, device)
    run.continue_from(start.checkpoint)
    for epoch in range(run.start_epoch, spec.epochs):
        run.train_loader.batch_sampler.set_epoch(epoch)   # the order and augmentation of this epoch's images
        losses = train_one_epoch(run.ddp_model, run.loss_fn, run.optimizer, run.scheduler, run.scaler,
                                 run.train_loader, device, epoch, spec, run.amp_dtype,
                                 run.recorder.iteration_logger(epoch), guard=run.guard, ema=run.ema)
        run.epoch_ended(epoch + 1, losses)
    run.recorder.close()
    spikes = f"; {run.guard.spikes} loss spike(s), see the warnings" if run.guard.spikes else ""
    spikes += f"; the training loss climbed in {run.guard.rises} epoch(s), see the warnings" if run.guard.rises else ""
    summary, fell_back = run.watch.summary(run.evaluation.best_map, run.evaluation.best_epoch)
    (logger.warning if fell_back else logger.info)("done: %s%s; checkpoints in %s", summary, spikes, work_dir)
    return run.evaluation.best_map


def check_classes(cfg, train_set, val_set) -> None:
    """The training data names at least one class, and the same ones (ids and names) as the
    validation data."""
    if train_set.num_classes == 0:
        raise ValueError(f"{cfg.train_annotations} has no categories ('categories': []): list the classes as "
                         f"\"categories\": [{{\"id\": 1, \"name\": \"...\"}}, ...]")
    check_same_classes(train_set, val_set, cfg.train_annotations, cfg.val_annotations)


def log_start(spec, run: "Run", train_set, val_set, device) -> None:
    """What the run is, in the log (main process): the keys not at their defaults and where each
    came from, the data, the levels the boxes fall on, the model's size."""
    changed = " ".join(f"{key}={value!r} ({spec.source(key)})" for key, value in spec.changed().items()
                       if key != "work_dir")
    logger.info("config %s with %s (all keys: %s)", type(spec).__module__, changed or "its defaults",
                Path(spec.work_dir) / "config.json")
    logger.info("data: %d train images, %d val images, %d classes: %s", len(train_set), len(val_set),
                train_set.num_classes, ", ".join(train_set.class_names[:20]))
    # e.g. the paper's level ranges or anchors on small objects: every box on P3, or none matched well
    for line in level_warnings(spec, resized_box_sizes(train_set.validation, spec, train=True)[0]):
        logger.warning("levels: %s (python -m tools.check_dataset shows the table)", line)
    if spec.flops:
        gflops, params = count_flops(run.model, spec, device)
        logger.info("model: %.2fM parameters, %.1f GFLOPs per %dpx forward", params / 1e6, gflops, spec.test_min_size)


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


# ---- the parts of a run, and what ends an epoch -----------------------------------------------------
class EpochEvaluation:
    """``evaluation(epoch, losses)``: evaluate after ``epoch`` (1-based) epochs: log it, add its
    metrics.jsonl row (and the recorder's results.csv, results.png, TensorBoard), tell the
    collapse watch, and save best.pth when the mAP improves (``best_map``, ``best_epoch``).
    Random states are left as they were, so the training that follows does not depend on
    whether this ran (or ran again on resume)."""

    def __init__(self, spec, model, decoder, val_loader, val_set, device, amp_dtype, scheduler, meta: dict,
                 recorder, watch, best_map: float = -1.0, best_epoch: int | None = None):
        self.spec, self.model, self.decoder, self.val_loader, self.val_set = spec, model, decoder, val_loader, val_set
        self.device, self.amp_dtype, self.scheduler, self.meta = device, amp_dtype, scheduler, meta
        self.recorder, self.watch, self.best_map, self.best_epoch = recorder, watch, best_map, best_epoch

    def __call__(self, epoch: int, losses: dict) -> None:
        spec = self.spec
        with preserved_rng():
            result = evaluate(self.model, self.decoder, self.val_loader, self.val_set, self.device, self.amp_dtype,
                              spec.channels_last, spec.eval_backend, eval_resize(spec))
        self.scheduler.step_metric(result.stats[0])
        if dist_utils.is_main_process():
            work_dir = Path(spec.work_dir)
            log_evaluation(result, epoch)
            append_jsonl(work_dir / "metrics.jsonl", {"epoch": epoch, **result.metrics, **losses,
                                                      "lr": self.scheduler.get_lr(), "time": self.recorder.elapsed()})
            self.recorder.evaluated(epoch, result)  # TensorBoard, results.csv, results.png
            warning = self.watch.evaluated(epoch, result.stats[0], result.num_detections, spec.score_thresh)
            if warning:
                logger.warning("epoch %d: %s", epoch, warning)
            if result.stats[0] > self.best_map:
                self.best_map, self.best_epoch = result.stats[0], epoch
                save_checkpoint({**self.meta, "model": self.model.state_dict(), "epoch": epoch,
                                 "best_map": self.best_map}, work_dir / "best.pth")
                logger.info("new best mAP %.4f at epoch %d: saved %s", self.best_map, epoch, work_dir / "best.pth")
        self.best_map, self.best_epoch = dist_utils.broadcast_object((self.best_map, self.best_epoch))


@dataclass
class Run:
    """Everything a training run holds between epochs (built by ``build_run``)."""
    spec: object
    model: torch.nn.Module                # the weights trained (``ddp_model`` wraps them under DDP)
    ddp_model: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    train_loader: object
    ema: ModelEMA | None
    guard: SpikeGuard
    watch: CollapseWatch
    recorder: RunRecorder
    evaluation: EpochEvaluation
    meta: dict                            # what every checkpoint of the run says about it
    start_epoch: int = 0
    pending_losses: dict | None = None    # a resumed run whose last evaluation is to run again: its losses

    def continue_from(self, checkpoint: dict | None) -> None:
        """A resumed run: the random states of the uninterrupted run at the end of its last epoch
        (set last, just before training goes on), then the evaluation the killed run had not
        finished."""
        if checkpoint is not None:
            resume_utils.restore_rng(checkpoint)
            if self.pending_losses is not None:
                self.evaluation(self.start_epoch, self.pending_losses)

    def epoch_ended(self, epoch: int, losses: dict) -> None:
        """After ``epoch`` (1-based) epochs: the loss climb check, the epoch's metrics row,
        latest.pth (before the evaluation: one that fails or is killed loses no training), and
        the evaluation when it is due."""
        main, work_dir = dist_utils.is_main_process(), Path(self.spec.work_dir)
        self.recorder.trained(epoch, losses, self.scheduler.get_lr())
        rising = self.guard.epoch_ended(epoch, losses)   # the same on every process (losses are reduced)
        if rising and main:
            logger.warning("epoch %d: %s", epoch, rising)
        evaluate_now = epoch % self.spec.eval_interval == 0 or epoch == self.spec.epochs
        if main and not evaluate_now:  # every epoch has its row; an evaluated one gets it with its stats
            append_jsonl(work_dir / "metrics.jsonl", {"epoch": epoch, **losses, "lr": self.scheduler.get_lr(),
                                                      "time": self.recorder.elapsed()})
            self.recorder.rows_changed()
        state = resume_utils.latest_state(self.model, self.optimizer, self.scheduler, self.scaler, epoch,
                                          self.evaluation.best_map, evaluate_now, losses, self.evaluation.best_epoch,
                                          ema=self.ema, guard=self.guard, watch=self.watch)
        if main:
            save_checkpoint({**self.meta, **state}, work_dir / "latest.pth")
        if evaluate_now:
            self.evaluation(epoch, losses)


def build_run(spec, train_set, val_set, start: Start, device, resolved: dict) -> Run:
    """Build every part of the run from the spec, and restore a resumed one (weights, optimizer,
    schedule, EMA, spike and evaluation history; ``Run.continue_from`` does the rest)."""
    rank, world, main = dist_utils.get_rank(), dist_utils.get_world_size(), dist_utils.is_main_process()
    train_loader = build_loader(spec, train_set, True, device, rank, world)
    val_loader = build_loader(spec, val_set, False, device, rank, world)
    if len(train_loader) == 0:
        raise ValueError(f"{spec.train_annotations}: {len(train_set)} images is fewer than one batch of {spec.batch_size}")
    model = build_run_model(spec, train_set, start, device)
    loss_fn, decoder = spec.build_loss(), spec.build_decoder()
    optimizer = build_optimizer(spec, model)
    scheduler = LRScheduler(optimizer, spec, len(train_loader))
    plan = device_plan(spec, device, dist_utils.is_distributed())   # autocast dtype, GradScaler
    amp_dtype, scaler = plan.autocast_dtype, plan.grad_scaler()
    checkpoint, work_dir = start.checkpoint, Path(spec.work_dir)
    start_epoch, best_map, pending_losses, best_epoch = 0, -1.0, None, None  # pending: an evaluation to redo
    guard, watch = SpikeGuard(spec.on_spike, spec.spike_factor), CollapseWatch()
    if checkpoint is not None:
        start_epoch, best_map, pending_losses = resume_utils.restore(checkpoint, start.resume, model, optimizer,
                                                                     scheduler, scaler)
        best_epoch = resume_utils.best_epoch_of(checkpoint, work_dir)
        guard.load_state_dict(checkpoint.get("spikes") or {})
        watch = CollapseWatch(checkpoint.get("evaluations"))
    # the averaged weights (evaluated and saved as the model) start from the weights trained so far
    ema = ModelEMA(model, spec.ema, spec.ema_tau) if spec.ema > 0 else None
    if ema is not None and checkpoint is not None:
        resume_utils.restore_ema(checkpoint, ema)
    if main:
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "config.json").write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
        for name in EPOCH_FILES:   # rows of the epochs this run (re)does are replaced, not duplicated
            drop_rows_from_epoch(work_dir / name, start_epoch + (pending_losses is None))
    ddp_model = (DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
                 if dist_utils.is_distributed() else model)
    meta = {"format": "densedet", "model_type": model_type(spec), "config": spec.to_dict(),
            "sources": {key: spec.source(key) for key in spec.fields()}, "resolved": resolved,
            "classes": {"names": train_set.class_names, "category_ids": train_set.category_ids}}
    recorder = RunRecorder(work_dir, start_epoch, len(train_loader), spec.tensorboard, main)
    evaluation = EpochEvaluation(spec, ema.module if ema is not None else model, decoder, val_loader, val_set,
                                 device, amp_dtype, scheduler, meta, recorder, watch, best_map, best_epoch)
    return Run(spec, model, ddp_model, loss_fn, optimizer, scheduler, scaler, amp_dtype, train_loader, ema, guard,
               watch, recorder, evaluation, meta, start_epoch, pending_losses)


def train_one_epoch(model, loss_fn, optimizer, scheduler, scaler, loader, device, epoch, cfg, amp_dtype,
                    on_log=None, guard: SpikeGuard | None = None, ema: ModelEMA | None = None) -> dict:
    """One pass over ``loader``; returns the mean of each loss over the epoch's updating steps.
    ``on_log``: see MetricLogger. ``guard`` judges each step's loss before the backward pass
    (a spike is logged, and skipped with on_spike=skip); ``ema`` is updated after each step."""
    model.train()
    guard = guard if guard is not None else SpikeGuard(cfg.on_spike, cfg.spike_factor)
    clip = cfg.clip_grad_norm
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
