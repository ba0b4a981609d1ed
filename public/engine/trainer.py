"""The training run: datasets, model, optimizer, the epoch loop, evaluation, checkpoints."""
from __future__ import annotations

import functools
import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, SequentialSampler

from public.data.check import level_warnings, resized_box_sizes
from public.data.coco import CocoDetection
from public.data.collate import collate
from public.data.demo import DEMO_ROOT, ensure_demo_data
from public.data.prefetcher import Prefetcher, eval_resize
from public.data.sampler import GroupedBatchSampler
from public.data.seeding import EpochBatches, EpochSamples
from public.data.transforms import build_transforms
from public.data.validate import check_same_classes
from public.engine import distributed as dist_utils
from public.engine import resume as resume_utils
from public.engine.checkpoint import (build_model_for_checkpoint, is_densedet, load_checkpoint, load_for_inference,
                                      load_model_weights, model_state_from_checkpoint, save_checkpoint)
from public.engine.config_check import check_config
from public.engine.evaluator import EvalResult, check_eval_backend, evaluate, format_per_class, format_stats
from public.engine.identity import model_type, take_auto_settings
from public.engine.logger import MetricLogger, append_jsonl, setup_logging
from public.engine.optim import LRScheduler, build_optimizer
from public.engine.plots import RunRecorder
from public.engine.resolve import resolve_for_run
from public.engine.runstate import drop_rows_from_epoch, pausable, pause_point, preserved_rng, seed_everything
from public.engine.weights import check_only_class_layer_differs, match_classes_by_name, without_imagenet

logger = logging.getLogger("densedet")

# Files of the work_dir with one row per epoch: a resumed run replaces the rows of the epochs it redoes.
EPOCH_FILES = ("metrics.jsonl", "results.csv")


# ---- data ----------------------------------------------------------------------------------
def prepare_demo_data(cfg) -> None:
    """Generate the built-in demo data if the config points into it (main process first)."""
    paths = (cfg.train_images, cfg.train_annotations, cfg.val_images, cfg.val_annotations)
    if any(Path(p).resolve().is_relative_to(DEMO_ROOT) for p in paths):
        if dist_utils.is_main_process():
            ensure_demo_data()
        dist_utils.barrier()


def build_dataset(cfg, train: bool) -> CocoDetection:
    images, annotations = ((cfg.train_images, cfg.train_annotations) if train
                           else (cfg.val_images, cfg.val_annotations))
    return CocoDetection(images, annotations, build_transforms(cfg, train), cfg.check_images)


class ShardSampler(torch.utils.data.Sampler):
    """Every world_size-th index from this rank's: evaluation shards without the duplicates
    DistributedSampler pads with (which would count some images twice)."""

    def __init__(self, size: int, rank: int, world_size: int):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_loader(cfg, dataset, train: bool, device: torch.device, collate_fn=None) -> DataLoader:
    """Training: shuffled (sharded under DDP), in batches of one orientation with
    ``aspect_ratio_grouping``; evaluation: in order, each rank its own shard.
    ``collate_fn`` replaces the padding ``collate`` (test-time augmentation takes raw samples).

    Training batches are a function of (seed, epoch) (call ``loader.batch_sampler.set_epoch``)
    and each image's augmentation of (seed, epoch, index) (``public.data.seeding``), whatever
    the process, worker count or resume; the loaders draw their worker seeds from their own
    generator, not from the process's torch RNG."""
    rank, world = dist_utils.get_rank(), dist_utils.get_world_size()
    collate_fn = collate_fn or functools.partial(collate, size_divisible=cfg.size_divisible)
    common = {"num_workers": cfg.num_workers, "collate_fn": collate_fn, "pin_memory": device.type == "cuda",
              "persistent_workers": cfg.num_workers > 0, "worker_init_fn": _seed_worker,
              "generator": torch.Generator().manual_seed(cfg.seed + rank)}
    if not train:
        sampler = ShardSampler(len(dataset), rank, world) if world > 1 else SequentialSampler(dataset)
        return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, **common)
    drop_last = len(dataset) >= cfg.batch_size * world
    if cfg.aspect_ratio_grouping:
        batches = GroupedBatchSampler(dataset.portrait(), cfg.batch_size, rank, world, cfg.seed, drop_last)
    else:  # a permutation from seed + epoch, as GroupedBatchSampler's (one process: all of it)
        sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=cfg.seed, drop_last=world > 1)
        batches = BatchSampler(sampler, cfg.batch_size, drop_last)
    return DataLoader(EpochSamples(dataset, cfg.seed), batch_sampler=EpochBatches(batches), **common)


# ---- model ---------------------------------------------------------------------------------
def amp_dtype_of(cfg) -> torch.dtype | None:
    if not cfg.amp:
        return None
    if cfg.amp_dtype not in ("float16", "bfloat16"):
        raise ValueError(f"amp_dtype must be 'float16' or 'bfloat16', got {cfg.amp_dtype!r}")
    return getattr(torch, cfg.amp_dtype)


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
    check_config(cfg, training=True)
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
    if checkpoint is not None:  # a checkpoint from before head_norm was resolved: its stored value
        take_auto_settings(cfg, checkpoint.get("config") or {})
    train_loader = build_loader(cfg, train_set, True, device)
    val_loader = build_loader(cfg, val_set, False, device)
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
    if dist_utils.is_distributed() and cfg.freeze_bn is False and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # BN statistics over all GPUs' images
    loss_fn, decoder = cfg.build_loss(), cfg.build_decoder()
    optimizer = build_optimizer(cfg, model)
    scheduler = LRScheduler(optimizer, cfg, len(train_loader))
    amp_dtype = amp_dtype_of(cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16 and device.type == "cuda")

    start_epoch, best_map, pending_losses = 0, -1.0, None   # pending: the last epoch's evaluation is redone
    if checkpoint is not None:
        start_epoch, best_map, pending_losses = resume_utils.restore(checkpoint, resume, model, optimizer,
                                                                     scheduler, scaler)

    if main:
        logger.info("config %s:\n%s", type(cfg).__module__, cfg)
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        logger.info("data: %d train images, %d val images, %d classes: %s", len(train_set), len(val_set),
                    train_set.num_classes, ", ".join(train_set.class_names[:20]))
        # e.g. the paper's level ranges or anchors on small objects: every box on P3, or none matched well
        for line in level_warnings(cfg, resized_box_sizes(train_set.validation, cfg, train=True)[0]):
            logger.warning("levels: %s (python -m public.data.check shows the table)", line)
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
    evaluation = functools.partial(evaluate_epoch, model, decoder, val_loader, val_set, device, amp_dtype, cfg,
                                   scheduler, meta, recorder)
    if checkpoint is not None:
        resume_utils.restore_rng(checkpoint)   # last: the states of the uninterrupted run at this epoch's end
        if pending_losses is not None:
            best_map = evaluation(start_epoch, pending_losses, best_map)

    for epoch in range(start_epoch, cfg.epochs):
        train_loader.batch_sampler.set_epoch(epoch)   # the order and augmentation of this epoch's images
        losses = train_one_epoch(ddp_model, loss_fn, optimizer, scheduler, scaler, train_loader, device,
                                 epoch, cfg, amp_dtype, recorder.iteration_logger(epoch))
        evaluate_now = (epoch + 1) % cfg.eval_interval == 0 or epoch + 1 == cfg.epochs
        # latest.pth before the evaluation: an evaluation that fails or is killed loses no training
        state = resume_utils.latest_state(model, optimizer, scheduler, scaler, epoch + 1, best_map, evaluate_now,
                                          losses)
        if main:
            save_checkpoint({**meta, **state}, work_dir / "latest.pth")
        if evaluate_now:
            best_map = evaluation(epoch + 1, losses, best_map)
    recorder.close()
    logger.info("done: best mAP %.4f, checkpoints in %s", best_map, work_dir)
    return best_map


def check_classes(cfg, train_set, val_set) -> None:
    """The training data names at least one class, and the same ones (ids and names) as the
    validation data."""
    if train_set.num_classes == 0:
        raise ValueError(f"{cfg.train_annotations} has no categories ('categories': []): list the classes as "
                         f"\"categories\": [{{\"id\": 1, \"name\": \"...\"}}, ...]")
    check_same_classes(train_set, val_set, cfg.train_annotations, cfg.val_annotations)


def evaluate_epoch(model, decoder, val_loader, val_set, device, amp_dtype, cfg, scheduler, meta, recorder,
                   epoch: int, losses: dict, best_map: float) -> float:
    """Evaluate after ``epoch`` (1-based) epochs: log it, add its metrics.jsonl row (and the
    recorder's results.csv, results.png, TensorBoard), save best.pth if the mAP improved; returns
    the best mAP. Random states are left as they were, so the training that follows does not
    depend on whether this ran (or ran again on resume)."""
    with preserved_rng():
        result = evaluate(model, decoder, pausable(val_loader, f"eval:{epoch}"), val_set, device, amp_dtype,
                          cfg.channels_last, cfg.eval_backend, eval_resize(cfg))
    scheduler.step_metric(result.stats[0])
    if dist_utils.is_main_process():
        work_dir = Path(cfg.work_dir)
        log_evaluation(result, epoch)
        append_jsonl(work_dir / "metrics.jsonl", {"epoch": epoch, **result.metrics, **losses,
                                                  "lr": scheduler.get_lr(), "time": recorder.elapsed()})
        recorder.evaluated(epoch, result)  # TensorBoard, results.csv, results.png
        if result.stats[0] > best_map:
            best_map = result.stats[0]
            save_checkpoint({**meta, "model": model.state_dict(), "epoch": epoch, "best_map": best_map},
                            work_dir / "best.pth")
            logger.info("new best mAP %.4f: saved %s", best_map, work_dir / "best.pth")
    return dist_utils.broadcast_object(best_map)


def train_one_epoch(model, loss_fn, optimizer, scheduler, scaler, loader, device, epoch, cfg, amp_dtype,
                    on_log=None) -> dict:
    """One pass over ``loader``; returns the mean of each loss over the epoch. ``on_log``: see MetricLogger."""
    model.train()
    metric_logger = MetricLogger(cfg.log_interval, device, on_log)
    header = f"epoch {epoch + 1}/{cfg.epochs}"
    for batch in metric_logger.log_every(Prefetcher(loader, device, cfg.channels_last), header):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(batch.images)
        losses = loss_fn(outputs, batch.targets)       # in float32, outside autocast
        total = sum(losses.values())
        values = torch.stack([v.detach() for v in losses.values()]).tolist()  # note: one host sync per step
        if not all(math.isfinite(v) for v in values):
            raise FloatingPointError(
                f"non-finite loss at epoch {epoch + 1}: {dict(zip(losses, values))}; image ids of the batch: "
                f"{batch.image_ids.tolist()}. Lower lr, raise warmup_iters or set clip_grad_norm; "
                f"resume from latest.pth with resume=auto.")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        if cfg.clip_grad_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        pause_point(f"iter:{scheduler.iteration}")
        metric_logger.update(loss=sum(values), **dict(zip(losses, values)), lr=scheduler.get_lr())
    return {k: v for k, v in metric_logger.averages().items() if k.startswith("loss")}


def log_evaluation(result: EvalResult, epoch: int | None = None) -> None:
    m = result.metrics
    prefix = f"epoch {epoch}: " if epoch is not None else ""
    logger.info("%smAP %.4f  mAR %.4f  | %s", prefix, m["mAP"], m["mAR"],
                "  ".join(f"{k} {v:.4f}" for k, v in m.items() if k not in ("mAP", "mAR")))


# ---- --evaluate ------------------------------------------------------------------------------
def evaluate_checkpoint(cfg, path: str) -> EvalResult:
    """Score a checkpoint (ours, or a torchvision state dict) on the config's validation set;
    print the 12 COCO stats and a per-class AP table."""
    device = dist_utils.init_distributed(cfg.device)
    setup_logging(None, dist_utils.is_main_process())
    check_config(cfg, training=False)
    prepare_demo_data(cfg)
    val_set = build_dataset(cfg, train=False)
    loaded = load_for_inference(cfg, path, val_set.category_ids, val_set.class_names)
    if loaded.overrides:  # a foreign checkpoint's settings may change the eval transforms
        val_set = build_dataset(cfg, train=False)
    model = loaded.model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    loader = build_loader(cfg, val_set, False, device)
    start = time.perf_counter()
    result = evaluate(model, cfg.build_decoder(), loader, val_set, device, amp_dtype_of(cfg), cfg.channels_last,
                      cfg.eval_backend, eval_resize(cfg))
    if dist_utils.is_main_process():
        logger.info("evaluated %s on %s (%d images) in %.1fs, %.1f ms/image (model+decoder)", path,
                    cfg.val_annotations, len(val_set), time.perf_counter() - start, 1000 * result.seconds_per_image)
        logger.info("COCO stats:\n%s", format_stats(result.stats))
        logger.info("per-class AP (weakest first):\n%s", format_per_class(result.per_class))
        log_evaluation(result)
    return result
