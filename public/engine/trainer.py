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
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from public.data.coco import CocoDetection
from public.data.collate import collate
from public.data.demo import DEMO_ROOT, ensure_demo_data
from public.data.prefetcher import Prefetcher
from public.data.sampler import GroupedBatchSampler
from public.data.transforms import build_transforms
from public.data.validate import check_same_classes
from public.engine import distributed as dist_utils
from public.engine.checkpoint import (is_densedet, load_checkpoint, load_for_inference, load_model_weights,
                                      model_state_from_checkpoint, save_checkpoint)
from public.engine.evaluator import EvalResult, check_eval_backend, evaluate, format_per_class, format_stats
from public.engine.logger import MetricLogger, append_jsonl, setup_logging
from public.engine.optim import LRScheduler, build_optimizer
from public.engine.plots import RunRecorder
from public.engine.resolve import resolve_for_run
from public.engine.weights import (check_only_class_layer_differs, full_checkpoint_follows, match_classes_by_name,
                                   without_imagenet)

logger = logging.getLogger("densedet")


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
    ``collate_fn`` replaces the padding ``collate`` (test-time augmentation takes raw samples)."""
    rank, world = dist_utils.get_rank(), dist_utils.get_world_size()
    collate_fn = collate_fn or functools.partial(collate, size_divisible=cfg.size_divisible)
    common = {"num_workers": cfg.num_workers, "collate_fn": collate_fn, "pin_memory": device.type == "cuda",
              "persistent_workers": cfg.num_workers > 0, "worker_init_fn": _seed_worker}
    drop_last = train and len(dataset) >= cfg.batch_size * world
    if train and cfg.aspect_ratio_grouping:
        batches = GroupedBatchSampler(dataset.portrait(), cfg.batch_size, rank, world, cfg.seed, drop_last)
        return DataLoader(dataset, batch_sampler=batches, **common)
    if train:
        sampler = (DistributedSampler(dataset, world, rank, shuffle=True, seed=cfg.seed, drop_last=True)
                   if world > 1 else RandomSampler(dataset))
    else:
        sampler = ShardSampler(len(dataset), rank, world) if world > 1 else SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=drop_last, **common)


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


def init_weights_from(model, cfg, path: str, category_ids: list[int], class_names: list[str] | None = None) -> None:
    """``init_from``: our checkpoint or a torchvision state dict; classes matched by name,
    the class layer re-initialised where they differ (only it may)."""
    checkpoint = load_checkpoint(path)
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
    setup_logging(str(work_dir), main)
    torch.manual_seed(cfg.seed + dist_utils.get_rank())
    random.seed(cfg.seed + dist_utils.get_rank())
    np.random.seed(cfg.seed + dist_utils.get_rank())

    check_eval_backend(cfg.eval_backend)
    prepare_demo_data(cfg)
    train_set, val_set = build_dataset(cfg, train=True), build_dataset(cfg, train=False)
    check_same_classes(train_set, val_set, cfg.train_annotations, cfg.val_annotations)
    resume = str(work_dir / "latest.pth") if cfg.resume == "auto" else cfg.resume
    checkpoint = load_checkpoint(resume) if resume and Path(resume).is_file() else None
    stored = checkpoint.get("resolved") if isinstance(checkpoint, dict) else None
    resolved = resolve_for_run(cfg, len(train_set), dist_utils.get_world_size(), stored, logger)
    train_loader = build_loader(cfg, train_set, True, device)
    val_loader = build_loader(cfg, val_set, False, device)
    if len(train_loader) == 0:
        raise ValueError(f"{cfg.train_annotations}: {len(train_set)} images is fewer than one batch of {cfg.batch_size}")

    # a full checkpoint to load (resume, init_from) makes ImageNet weights pointless: none fetched
    model = (without_imagenet(cfg) if full_checkpoint_follows(cfg) else cfg).build_model(train_set.num_classes)
    if cfg.init_from:
        init_weights_from(model, cfg, cfg.init_from, train_set.category_ids, train_set.class_names)
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

    start_epoch, best_map = 0, -1.0
    if checkpoint is not None:
        if not is_densedet(checkpoint) or "optimizer" not in checkpoint:
            raise ValueError(f"resume={resume} is not a densedet latest.pth (use init_from for weights only)")
        load_model_weights(model, checkpoint["model"], resume)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        start_epoch, best_map = checkpoint["epoch"], checkpoint["best_map"]
        logger.info("resumed from %s at epoch %d (best mAP %.4f)", resume, start_epoch + 1, best_map)
    elif cfg.resume and cfg.resume != "auto":
        raise FileNotFoundError(f"resume checkpoint not found: {cfg.resume}")

    if main:
        logger.info("config %s:\n%s", type(cfg).__module__, cfg)
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        logger.info("data: %d train images, %d val images, %d classes: %s", len(train_set), len(val_set),
                    train_set.num_classes, ", ".join(train_set.class_names[:20]))
        if cfg.flops:
            gflops, params = count_flops(model, cfg, device)
            logger.info("model: %.2fM parameters, %.1f GFLOPs per %dpx forward", params / 1e6, gflops, cfg.test_min_size)

    ddp_model = (DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
                 if dist_utils.is_distributed() else model)
    meta = {"format": "densedet", "config": cfg.to_dict(), "resolved": resolved,
            "classes": {"names": train_set.class_names, "category_ids": train_set.category_ids}}

    recorder = RunRecorder(work_dir, start_epoch, len(train_loader), cfg.tensorboard, main)
    for epoch in range(start_epoch, cfg.epochs):
        for sampler in (train_loader.sampler, train_loader.batch_sampler):
            if hasattr(sampler, "set_epoch"):   # DistributedSampler, GroupedBatchSampler
                sampler.set_epoch(epoch)
        losses = train_one_epoch(ddp_model, loss_fn, optimizer, scheduler, scaler, train_loader, device,
                                 epoch, cfg, amp_dtype, recorder.iteration_logger(epoch))
        is_last = epoch + 1 == cfg.epochs
        result = None
        if (epoch + 1) % cfg.eval_interval == 0 or is_last:
            result = evaluate(model, decoder, val_loader, val_set, device, amp_dtype, cfg.channels_last,
                              cfg.eval_backend)
            scheduler.step_metric(result.stats[0])
            if main:
                log_evaluation(result, epoch + 1)
                append_jsonl(work_dir / "metrics.jsonl", {"epoch": epoch + 1, **result.metrics, **losses,
                                                          "lr": scheduler.get_lr(), "time": recorder.elapsed()})
                recorder.evaluated(epoch + 1, result)  # TensorBoard, results.csv, results.png
        if main:
            state = {**meta, "model": model.state_dict(), "epoch": epoch + 1}
            if result is not None and result.stats[0] > best_map:
                best_map = result.stats[0]
                save_checkpoint({**state, "best_map": best_map}, work_dir / "best.pth")
                logger.info("new best mAP %.4f: saved %s", best_map, work_dir / "best.pth")
            save_checkpoint({**state, "best_map": best_map, "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()},
                            work_dir / "latest.pth")
        best_map = dist_utils.broadcast_object(best_map)
    recorder.close()
    logger.info("done: best mAP %.4f, checkpoints in %s", best_map, work_dir)
    return best_map


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
                      cfg.eval_backend)
    if dist_utils.is_main_process():
        logger.info("evaluated %s on %s (%d images) in %.1fs, %.1f ms/image (model+decoder)", path,
                    cfg.val_annotations, len(val_set), time.perf_counter() - start, 1000 * result.seconds_per_image)
        logger.info("COCO stats:\n%s", format_stats(result.stats))
        logger.info("per-class AP (weakest first):\n%s", format_per_class(result.per_class))
        log_evaluation(result)
    return result
