"""The GPU check: every speed figure of densedet against torchvision, from one command, in
under 10 minutes on one H100 / H200, written to one markdown file and printed.

    bash bench/gpu.sh                        # GPU: ResNet-50, 800x1333, batch 8 -> bench/gpu_results.md
    bash bench/gpu.sh --out /tmp/r.md        # elsewhere (or GPU_CHECK_OUT=/tmp/r.md)
    bash bench/gpu.sh --tiny                 # smoke run: ResNet-18, 128x128, batch 2, 1 + 2 steps, about 30 s
                                             #   on a CPU (or GPU_CHECK_TINY=1) -> bench/gpu_results_tiny.md

(``python bench/gpu_check.py ...`` is the same.) The full run times FCOS, ATSS and RetinaNet in
fp32 and AMP (bfloat16 by default, ``--amp-dtype float16`` for fp16 with a GradScaler), with
channels_last off and on (12 cases), torchvision's ``fcos_resnet50_fpn`` and
``retinanet_resnet50_fpn`` (weights=None, weights_backbone=None) in both precisions (4 cases),
each training loader once per model and each decoder once per model. A case that fails (e.g.
out of memory) is recorded in the table and the run goes on; cases left when ``--budget-s``
has passed are recorded as skipped. The file is rewritten after every case, so a killed run
still leaves what it measured. The tiny run (what tests/test_bench.py runs) is fp32 only on a
CPU without native bfloat16 convolutions (its AMP case would take minutes there), uses one CPU
thread, and its figures mean nothing: it checks that every column is still produced.

What is measured is the project's own code: configs from ``load_config(<model>/config.py)``
(random init, every layer and BatchNorm trained, as torchvision from scratch), the models,
losses, decoders and optimizer from ``cfg.build_*`` / ``build_optimizer``, and the training
loop itself (``public.engine.train.loop.train_one_epoch``, with its Prefetcher, autocast,
GradScaler and per-step loss check) over synthetic batches. FCOS and RetinaNet take
torchvision's settings (``fcos/convert.py``, ``retinanet/convert.py``: the same network as the
torchvision model they are compared with); ATSS, which torchvision lacks, its own defaults.
Inputs: random uint8 images of the given size and random boxes (10 per image), the same
pixels and boxes for ours (a padded uint8 batch, normalised on the device as in training) and
torchvision's (the same images as float in [0, 1], its own transform normalises).

Columns of the table (one row per model, precision and channels_last):

- train img/s: training images per second (forward, loss, backward, optimizer step), over
  ``steps`` timed steps after ``warmup`` untimed ones, device synchronised before and after.
  torchvision's is its reference training step (autocast forward, the loss ``.item()`` check,
  backward, SGD), measured in the default memory format only: a channels_last row repeats it.
- peak mem MiB: ``torch.cuda.max_memory_allocated`` over the case's training steps, reset at
  the start of each case (weights, gradients, optimizer state and activations); n/a on a CPU.
- syncs/step: host-device synchronisations in one training step (the last warm-up step, run
  as an epoch of one step, so its start is included), counted as the warnings of
  ``torch.cuda.set_sync_debug_mode("warn")``; n/a on a CPU.
- loader img/s: images per second of the model's real training loader alone
  (``build_dataset`` + ``build_loader``, the config's default num_workers capped at the CPUs,
  as a run does) on a generated COCO-format set of JPEGs that the loader resizes to the
  training size, after enough batches for every worker to be running. Measured once for
  models whose data settings agree (``LOADER_KEYS``; the three models' do).
- loader/train: loader img/s divided by our train img/s of the row: above 1 the loader keeps
  up with training on one device.
- decoder ms: one decoder call on batch-size head outputs at the training size (random
  logits, so every level has its top-k candidates and NMS has work), ours
  (``cfg.build_decoder()``) against torchvision's ``postprocess_detections`` on the same
  tensors, median of ``decoder_repeats`` alternating calls; fp32; per model.
- inference img/s: eval mode, no grad, autocast as the row, model forward + decoder on a
  normalised batch (classifier shifted so that the decoder has candidates), median of
  ``infer_repeats`` batches.

A cell reads "n/a" where the figure does not exist on the device, "no peer" where torchvision
has no such model (ATSS), "FAILED (...)" or "skipped" otherwise; the notes under the table
give each failure's message.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torchvision  # noqa: E402
from torchvision.models.detection import FCOS as TorchvisionFCOS  # noqa: E402
from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet  # noqa: E402
from torchvision.models.detection import fcos_resnet50_fpn, retinanet_resnet50_fpn  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402

import public.engine.watch.logger as watch_logger  # noqa: E402
from atss.model import square_anchors  # noqa: E402
from bench.train_step import _tv_backbone, random_targets, timed, timed_pair  # noqa: E402
from config import load_config  # noqa: E402
from fcos.convert import TORCHVISION_SETTINGS as FCOS_TV  # noqa: E402
from public.data.collate import Batch  # noqa: E402
from public.data.loaders import build_dataset, build_loader  # noqa: E402
from public.data.prefetcher import normalize  # noqa: E402
from public.engine.device_plan import device_plan  # noqa: E402
from public.engine.train.loop import train_one_epoch  # noqa: E402
from public.engine.train.optim import LRScheduler, build_optimizer  # noqa: E402
from public.ops.anchors import FPN_STRIDES, grid_points  # noqa: E402
from retinanet.convert import TORCHVISION_SETTINGS as RETINANET_TV  # noqa: E402

NUM_CLASSES = 80
MODELS = ("fcos", "atss", "retinanet")
TORCHVISION_PEER = {"fcos": FCOS_TV, "retinanet": RETINANET_TV}   # settings giving torchvision's network
DECODER_SCORE_THRESH = 0.05
NA, NO_PEER, SKIPPED = "n/a", "no peer", "skipped"

# The two sizes of the check. Cases: (model, precision, channels_last); "amp" is --amp-dtype.
FULL = dict(size=(800, 1333), batch=8, backbone="resnet50", boxes=10, warmup=3, steps=10, infer_repeats=5,
            decoder_repeats=10, budget_s=480.0,
            cases=[(m, p, cl) for m in MODELS for p in ("fp32", "amp") for cl in (False, True)])
TINY = dict(size=(128, 128), batch=2, backbone="resnet18", boxes=5, warmup=1, steps=2, infer_repeats=1,
            decoder_repeats=1, budget_s=300.0,
            cases=[("fcos", "fp32", False), ("fcos", "fp32", True), ("atss", "fp32", False),
                   ("retinanet", "fp32", False)])
# The tiny run's AMP case, where AMP is cheap: on a GPU, or a CPU with native bfloat16 convolutions
# (elsewhere PyTorch falls back to its reference convolution, some 40x slower than fp32).
TINY_AMP_CASE = ("fcos", "amp", True)

COLUMNS = ("model", "precision", "channels_last", "train img/s ours", "train img/s torchvision",
           "peak mem MiB ours", "peak mem MiB torchvision", "syncs/step ours", "syncs/step torchvision",
           "loader img/s", "loader/train", "decoder ms ours", "decoder ms torchvision", "inference img/s")


@dataclasses.dataclass
class Settings:
    tiny: bool
    device: torch.device
    size: tuple[int, int]          # (H, W) of every training image, H <= W
    batch: int
    backbone: str
    boxes: int
    warmup: int
    steps: int
    infer_repeats: int
    decoder_repeats: int
    budget_s: float
    amp_dtype: str                 # "bfloat16" or "float16"
    cases: list

    @property
    def padded(self) -> tuple[int, int]:
        return tuple(-(-s // 32) * 32 for s in self.size)

    def precision_name(self, precision: str) -> str:
        return "fp32" if precision == "fp32" else f"amp-{'bf16' if self.amp_dtype == 'bfloat16' else 'fp16'}"


class Failed(str):
    """A cell that records a failure ("FAILED (OOM)"); its message goes to the notes."""


# ---- inputs ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Inputs:
    batch: Batch                   # ours: uint8 padded images, targets [B, M, 5] (pinned on CUDA)
    tv_images: list                # torchvision's: the same pixels, float [0, 1], unpadded, on the device
    tv_targets: list               # torchvision's: [{"boxes", "labels"}] on the device


def make_inputs(s: Settings) -> Inputs:
    """Random images and boxes, the same for ours and torchvision's."""
    h, w = s.size
    hp, wp = s.padded
    generator = torch.Generator().manual_seed(0)
    images = torch.zeros(s.batch, 3, hp, wp, dtype=torch.uint8)
    images[:, :, :h, :w] = torch.randint(0, 256, (s.batch, 3, h, w), generator=generator, dtype=torch.uint8)
    tv_targets, padded = random_targets(s.batch, s.boxes, h, w, generator)
    batch = Batch(images=images, targets=padded, image_sizes=torch.tensor([[h, w]] * s.batch),
                  scales=torch.ones(s.batch, 2), orig_sizes=torch.tensor([[h, w]] * s.batch),
                  image_ids=torch.arange(1, s.batch + 1))
    if s.device.type == "cuda":
        batch = batch.pin_memory()
    tv_images = [img[:, :h, :w].to(s.device).float() / 255 for img in images]
    tv_targets = [{k: v.to(s.device) for k, v in t.items()} for t in tv_targets]
    return Inputs(batch, tv_images, tv_targets)


def write_coco_jpegs(root: Path, count: int, height: int, width: int, boxes: int, seed: int = 0) -> tuple[str, str]:
    """A COCO-format set of ``count`` JPEGs of height x width (photo-like: smooth colour plus
    noise) with random boxes; returns (images folder, annotations file)."""
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    distinct = min(count, 16)              # the rest are copies: each is still read and decoded
    images, annotations = [], []
    for i in range(count):
        name = f"{i:06d}.jpg"
        if i < distinct:
            coarse = rng.uniform(0, 255, (height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
            image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
            image += rng.normal(0, 6, image.shape).astype(np.float32)
            cv2.imwrite(str(images_dir / name), np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
        else:
            shutil.copyfile(images_dir / f"{i % distinct:06d}.jpg", images_dir / name)
        images.append({"id": i + 1, "file_name": name, "height": height, "width": width})
        for _ in range(boxes):
            bw, bh = rng.uniform(0.05, 0.5) * width, rng.uniform(0.05, 0.5) * height
            x, y = rng.uniform(0, width - bw), rng.uniform(0, height - bh)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(rng.integers(1, 81)),
                                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
    categories = [{"id": k, "name": f"class{k}"} for k in range(1, NUM_CLASSES + 1)]
    annotations_file = root / "instances.json"
    annotations_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(images_dir), str(annotations_file)


# ---- builders -------------------------------------------------------------------------------
def our_config(kind: str, s: Settings, precision: str = "fp32", channels_last: bool = False, **extra):
    """The model's config (torchvision's network for FCOS and RetinaNet), from random init."""
    cfg = load_config(REPO / kind / "config.py")
    cfg.update(TORCHVISION_PEER.get(kind, {}))
    cfg.update({"backbone": s.backbone, "pretrained": False, "frozen_stages": 0, "freeze_bn": False,
                "batch_size": s.batch, "min_size": (min(s.size),), "max_size": max(s.size),
                "amp": precision != "fp32", "amp_dtype": s.amp_dtype, "channels_last": channels_last,
                "lr_steps": (8, 11), "log_interval": 10**6, "flops": False, **extra})
    return cfg.resolve()


def torchvision_model(kind: str, s: Settings, **kwargs):
    """torchvision's FCOS / RetinaNet from random init: its ResNet-50 builders, or the same
    construction on a smaller backbone (--tiny)."""
    torch.manual_seed(0)
    kwargs = {"num_classes": NUM_CLASSES, "min_size": min(s.size), "max_size": max(s.size), **kwargs}
    if s.backbone == "resnet50":
        builder = fcos_resnet50_fpn if kind == "fcos" else retinanet_resnet50_fpn
        return builder(weights=None, weights_backbone=None, **kwargs)
    model_class = TorchvisionFCOS if kind == "fcos" else TorchvisionRetinaNet
    return model_class(_tv_backbone(s.backbone), **kwargs)


# ---- measuring ------------------------------------------------------------------------------
def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_of(fn, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def count_syncs(fn, device):
    """Runs ``fn``; the host-device syncs it caused (CUDA), None on other devices."""
    if device.type != "cuda":
        fn()
        return None
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing CUDA operation" in str(w.message) for w in caught)


def peak_memory(device):
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def release(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def train_ours(kind: str, precision: str, channels_last: bool, s: Settings, inputs: Inputs) -> dict:
    """Our training images/s, peak memory, syncs per step and inference images/s."""
    device = s.device
    cfg = our_config(kind, s, precision, channels_last)
    torch.manual_seed(0)
    model = cfg.resolve().build_model(NUM_CLASSES).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn, optimizer = cfg.build_loss(), build_optimizer(cfg, model)
    scheduler = LRScheduler(optimizer, cfg, 1000)
    plan = device_plan(cfg, device, distributed=False)   # the run's autocast dtype and GradScaler
    amp_dtype, scaler = plan.autocast_dtype, plan.grad_scaler()

    def epoch(steps: int) -> None:   # the real loop, over the same batch ``steps`` times
        train_one_epoch(model, loss_fn, optimizer, scheduler, scaler, [inputs.batch] * steps, device, 0, cfg,
                        amp_dtype)

    if s.warmup > 1:
        epoch(s.warmup - 1)
    syncs = count_syncs(lambda: epoch(1), device)             # the last warm-up step
    seconds = seconds_of(lambda: epoch(s.steps), device)
    out = {"train": s.steps * s.batch / seconds, "mem": peak_memory(device), "syncs": syncs}

    # Inference: model + decoder, as the evaluator runs them.
    with torch.no_grad():  # some candidates above the score threshold, so that top-k and NMS have work
        model.head.cls_logits.weight.normal_(0, 0.05)
        model.head.cls_logits.bias.fill_(-4.0)
    model.eval()
    decoder = cfg.build_decoder()
    image_sizes = inputs.batch.image_sizes.to(device)
    images = normalize(inputs.batch.images.to(device), image_sizes)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def infer():
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(images)
        decoder(outputs, image_sizes)

    out["infer"] = s.batch / timed(infer, device, s.infer_repeats)
    return out


def train_torchvision(kind: str, precision: str, s: Settings, inputs: Inputs) -> dict:
    """torchvision's training images/s, peak memory and syncs per step, as its reference
    training script steps (references/detection/engine.py)."""
    device = s.device
    model = torchvision_model(kind, s).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-5, momentum=0.9, weight_decay=1e-4)
    amp_dtype = None if precision == "fp32" else getattr(torch, s.amp_dtype)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16 and device.type == "cuda")

    def step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            losses = model(inputs.tv_images, inputs.tv_targets)
        total = sum(losses.values())
        if not math.isfinite(total.item()):
            raise FloatingPointError(f"non-finite torchvision loss: {losses}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()

    def steps(n: int) -> None:
        for _ in range(n):
            step()

    steps(s.warmup - 1)
    syncs = count_syncs(step, device)
    seconds = seconds_of(lambda: steps(s.steps), device)
    return {"train": s.steps * s.batch / seconds, "mem": peak_memory(device), "syncs": syncs}


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def loader_speed(kind: str, s: Settings, data: tuple[str, str], workers: int, warmup_batches: int,
                 batches: int) -> float:
    """Images per second of the model's training loader alone, after ``warmup_batches``."""
    cfg = our_config(kind, s, train_images=data[0], train_annotations=data[1], num_workers=workers)
    loader = build_loader(cfg, build_dataset(cfg, train=True), True, s.device)
    loader.batch_sampler.set_epoch(0)
    batches_iter = iter(loader)
    for _ in range(warmup_batches):
        next(batches_iter)
    start = time.perf_counter()
    for _ in range(batches):
        next(batches_iter)
    seconds = time.perf_counter() - start
    del batches_iter, loader               # stops the workers
    gc.collect()
    return batches * s.batch / seconds


# The config keys that make a training loader: models that agree on them share one measurement.
LOADER_KEYS = ("min_size", "max_size", "multiscale_mode", "resize_mode", "hflip_prob", "size_divisible",
               "aspect_ratio_grouping", "num_workers", "batch_size", "check_images", "seed")


def loader_plan(s: Settings) -> tuple[int, int, int]:
    """(workers, warm-up batches, timed batches): every worker busy before timing; timed batches
    a multiple of the workers, so that their (simultaneous) rounds are counted whole."""
    workers = max(1, min(our_config("fcos", s).num_workers, usable_cpus()))   # as a run caps them
    return workers, 2 * workers, (2 if s.tiny else 3) * workers


def decoder_times(kind: str, s: Settings) -> tuple[float, float | None]:
    """(ours, torchvision's or None) seconds of one decoder call on the same random head outputs
    of batch-size images at the training size."""
    device, batch = s.device, s.batch
    hp, wp = s.padded
    sizes = [(-(-hp // st), -(-wp // st)) for st in FPN_STRIDES]
    image_sizes = [tuple(s.size)] * batch
    sizes_tensor = torch.tensor(image_sizes, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    cfg = our_config(kind, s, score_thresh=DECODER_SCORE_THRESH)
    decoder = cfg.build_decoder()

    def randn(*shape):
        return torch.randn(*shape, device=device, generator=generator)

    if kind == "atss":
        points, strides, counts = grid_points(sizes, FPN_STRIDES, cfg.anchor_offset, device)
        n = sum(counts)
        ours = {"cls_logits": randn(batch, n, NUM_CLASSES) - 2, "box_reg": randn(batch, n, 4) * 0.2,
                "centerness": randn(batch, n), "anchors": square_anchors(points, strides, cfg.octave_base_scale),
                "points": points, "strides": strides, "num_per_level": counts, "feature_sizes": sizes,
                "level_strides": FPN_STRIDES}
        return timed(lambda: decoder(ours, sizes_tensor), device, s.decoder_repeats), None

    # FCOS and RetinaNet: as bench/decoder.py, torchvision's anchors for both decoders.
    tv = torchvision_model(kind, s, score_thresh=DECODER_SCORE_THRESH).to(device).eval()
    feature_maps = [torch.zeros(batch, 1, a, b, device=device) for a, b in sizes]
    anchors = tv.anchor_generator(ImageList(torch.zeros(batch, 3, hp, wp, device=device), image_sizes), feature_maps)
    if kind == "retinanet":
        counts = [a * b * 9 for a, b in sizes]
        head = {"cls_logits": randn(batch, sum(counts), NUM_CLASSES) - 4,
                "bbox_regression": randn(batch, sum(counts), 4) * 0.2}
        ours = {"cls_logits": head["cls_logits"], "box_reg": head["bbox_regression"], "anchors": anchors[0],
                "num_per_level": counts}
    else:
        counts = [a * b for a, b in sizes]
        head = {"cls_logits": randn(batch, sum(counts), NUM_CLASSES) - 2,
                "bbox_regression": torch.rand(batch, sum(counts), 4, device=device, generator=generator) * 4,
                "bbox_ctrness": randn(batch, sum(counts), 1)}
        points, strides, _ = grid_points(sizes, FPN_STRIDES, 0.0, device)
        ours = {"cls_logits": head["cls_logits"], "box_reg": head["bbox_regression"],
                "centerness": head["bbox_ctrness"].squeeze(-1), "points": points, "strides": strides,
                "num_per_level": counts}
    split_head = {k: list(v.split(counts, dim=1)) for k, v in head.items()}
    split_anchors = [list(a.split(counts)) for a in anchors]
    with torch.no_grad():
        t_tv, t_ours = timed_pair(lambda: tv.postprocess_detections(split_head, split_anchors, image_sizes),
                                  lambda: decoder(ours, sizes_tensor), device, s.decoder_repeats)
    return t_ours, t_tv


# ---- the report -----------------------------------------------------------------------------
def summary(result) -> str:
    """A progress line's figures: "train 41.2 img/s, peak 9120 MiB, 3 syncs/step, inference 80.1 img/s"."""
    if isinstance(result, str):
        return result
    parts = [f"train {result['train']:.1f} img/s"]
    if result["mem"] is not None:
        parts.append(f"peak {result['mem']:.0f} MiB")
    if result["syncs"] is not None:
        parts.append(f"{result['syncs']} syncs/step")
    if "infer" in result:
        parts.append(f"inference {result['infer']:.1f} img/s")
    return ", ".join(parts)


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {name} ({usable_cpus()} cores usable)"


def cell(value, digits: int = 1) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return NA
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


class Report:
    """The results so far, as the markdown file (rewritten after every case)."""

    def __init__(self, s: Settings, out: Path, argv: list[str]):
        self.s, self.out, self.argv = s, out, argv
        self.started = time.perf_counter()
        self.date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self.ours, self.tv, self.loader, self.decoder = {}, {}, {}, {}
        self.notes: list[str] = []
        self.loader_workers = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {message}", file=sys.stderr, flush=True)

    def run(self, name: str, fn):
        """``fn()``, or a Failed cell (the failure noted) when it raises."""
        try:
            return fn()
        except Exception as error:  # noqa: BLE001 - a failed case is a result, not the end of the run
            oom = isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()
            message = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            self.notes.append(f"{name}: {type(error).__name__}: {message}")
            self.log(f"{name} FAILED: {type(error).__name__}: {message}")
            return Failed("FAILED (OOM)" if oom else f"FAILED ({type(error).__name__})")
        finally:
            release(self.s.device)

    def rows(self) -> list[list[str]]:
        """One row of cells per case of ours, with its model's torchvision, loader and decoder figures."""
        def field(result, key, scale=1.0):     # a figure of a measured case, or the case's own cell
            if isinstance(result, str):
                return result
            value = result[key]
            return value if value is None or scale == 1.0 else value * scale

        rows = []
        for kind, precision, channels_last in self.s.cases:
            ours = self.ours.get((kind, precision, channels_last), SKIPPED)
            tv = self.tv.get((kind, precision), SKIPPED) if kind in TORCHVISION_PEER else NO_PEER
            loader = self.loader.get(kind, SKIPPED)
            decoder = self.decoder.get(kind, SKIPPED)       # (ours s, torchvision s or None) or a cell
            train = field(ours, "train")
            if isinstance(loader, float) and isinstance(train, float):
                ratio = loader / train
            else:
                ratio = loader if isinstance(loader, str) else train
            tv_decoder = NO_PEER if not isinstance(decoder, str) and decoder[1] is None else field(decoder, 1, 1000.0)
            rows.append([kind, self.s.precision_name(precision), "on" if channels_last else "off",
                         cell(train), cell(field(tv, "train")), cell(field(ours, "mem"), 0),
                         cell(field(tv, "mem"), 0), cell(field(ours, "syncs")), cell(field(tv, "syncs")),
                         cell(loader), cell(ratio, 2), cell(field(decoder, 0, 1000.0), 2), cell(tv_decoder, 2),
                         cell(field(ours, "infer"))])
        return rows

    def markdown(self, done: bool) -> str:
        s = self.s
        cuda = s.device.type == "cuda"
        h, w = s.size
        lines = [
            f"# GPU check{' (tiny, smoke run)' if s.tiny else ''}: densedet against torchvision",
            "",
            f"- date: {self.date}",
            f"- device: {device_name(s.device)}" + ("" if cuda else f", {torch.get_num_threads()} torch thread(s)"),
            f"- torch {torch.__version__}, torchvision {torchvision.__version__}"
            + (f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}" if cuda else ""),
            f"- command: `bash bench/gpu.sh{''.join(' ' + a for a in self.argv)}`",
            f"- {s.backbone}, {h}x{w} (padded {s.padded[0]}x{s.padded[1]}), batch {s.batch}, {s.boxes} random boxes "
            f"per image, {NUM_CLASSES} classes, random init; {s.warmup} warm-up + {s.steps} timed training steps "
            f"per case",
            self.precision_line(),
            f"- loader: {self.loader_workers} workers, JPEGs of {round(h * 0.75)}x{round(w * 0.75)} resized to "
            f"{h}x{w}; decoder: score threshold {DECODER_SCORE_THRESH}, random head outputs",
            f"- total time: {self.elapsed():.0f} s" + ("" if done else " (in progress)"),
            "",
            "| " + " | ".join(COLUMNS) + " |",
            "|" + "---|" * len(COLUMNS),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        lines += ["", "torchvision is trained in the default memory format: a channels_last row repeats its "
                  "figures. n/a: not measurable on this device; no peer: torchvision has no ATSS. "
                  "Column meanings: the docstring of bench/gpu_check.py."]
        if self.notes:
            lines += ["", "Failures:", ""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def precision_line(self) -> str:
        s = self.s
        if any(precision == "amp" for _, precision, _ in s.cases):
            line = f"- AMP: autocast to {s.amp_dtype}" + (" with a GradScaler" if s.amp_dtype == "float16" else "")
        else:
            line = "- AMP: not run (this CPU has no native bfloat16 convolutions: the smoke run would take minutes)"
        if s.device.type == "cuda":
            line += (f"; fp32 convolutions may use TF32 (torch.backends.cudnn.allow_tf32="
                     f"{torch.backends.cudnn.allow_tf32}, torch.backends.cuda.matmul.allow_tf32="
                     f"{torch.backends.cuda.matmul.allow_tf32}, PyTorch's defaults unless changed); "
                     f"cudnn.benchmark={torch.backends.cudnn.benchmark} (as in training)")
        return line

    def write(self, done: bool = False) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(self.markdown(done))


# ---- the run --------------------------------------------------------------------------------
def run_cases(report: Report, inputs: Inputs, data_dir: Path) -> None:
    """Per model: its loader, its decoder, then torchvision's and our training cases, precision
    by precision; into ``report``, which is rewritten after each."""
    s = report.s
    h, w = s.size
    workers, loader_warmup, loader_batches = loader_plan(s)
    report.loader_workers = workers
    data = write_coco_jpegs(data_dir, (loader_warmup + loader_batches + 1) * s.batch, round(h * 0.75),
                            round(w * 0.75), s.boxes)

    def within_budget() -> bool:
        if report.elapsed() <= s.budget_s:
            return True
        report.log(f"time budget of {s.budget_s:.0f} s spent: case skipped")
        return False

    loader_keys = {}
    for kind in [m for m in MODELS if any(case[0] == m for case in s.cases)]:
        if not within_budget():
            continue
        loader_key = tuple(getattr(our_config(kind, s), key) for key in LOADER_KEYS)
        same = [other for other, key in loader_keys.items() if key == loader_key and other in report.loader]
        if same:   # the same loader as an earlier model's (the data keys are BaseConfig's)
            report.loader[kind] = report.loader[same[0]]
        else:
            report.loader[kind] = report.run(f"{kind} loader", lambda: loader_speed(kind, s, data, workers, loader_warmup,
                                                                                     loader_batches))
        loader_keys[kind] = loader_key
        report.decoder[kind] = decoder = report.run(f"{kind} decoder", lambda: decoder_times(kind, s))
        if not isinstance(decoder, str):
            decoder = f"{decoder[0] * 1000:.1f} ms" + ("" if decoder[1] is None else
                                                        f" (torchvision {decoder[1] * 1000:.1f} ms)")
        report.log(f"{kind}: loader {cell(report.loader[kind])} img/s, decoder {decoder}")
        report.write()
        for precision in dict.fromkeys(case[1] for case in s.cases if case[0] == kind):
            if kind in TORCHVISION_PEER and within_budget():
                name = f"torchvision {kind} {s.precision_name(precision)}"
                report.tv[(kind, precision)] = result = report.run(
                    name, lambda: train_torchvision(kind, precision, s, inputs))
                report.log(f"{name}: {summary(result)}")
                report.write()
            for case in [case for case in s.cases if case[:2] == (kind, precision)]:
                if within_budget():
                    name = f"ours {kind} {s.precision_name(precision)} channels_last={'on' if case[2] else 'off'}"
                    report.ours[case] = result = report.run(name, lambda: train_ours(*case, s, inputs))
                    report.log(f"{name}: {summary(result)}")
                    report.write()


def settings_from(args) -> Settings:
    base = dict(TINY if args.tiny else FULL)
    if args.budget_s is not None:
        base["budget_s"] = args.budget_s
    if args.steps is not None:
        base["steps"] = args.steps
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.tiny and (device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        base["cases"] = base["cases"] + [TINY_AMP_CASE]
    return Settings(tiny=args.tiny, device=device, amp_dtype=args.amp_dtype, **base)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", default=os.environ.get("GPU_CHECK_TINY", "0") == "1",
                        help="the CPU smoke run (also GPU_CHECK_TINY=1)")
    parser.add_argument("--out", default=os.environ.get("GPU_CHECK_OUT"),
                        help="results file (default bench/gpu_results.md, --tiny: bench/gpu_results_tiny.md)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--amp-dtype", default="bfloat16", choices=("bfloat16", "float16"))
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per case")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no case after this many seconds (default 480; tiny 300)")
    args = parser.parse_args(argv)
    s = settings_from(args)
    out = Path(args.out or REPO / "bench" / ("gpu_results_tiny.md" if s.tiny else "gpu_results.md"))
    watch_logger.progress_bars_enabled = lambda: False   # no tqdm bar per timed epoch on a terminal
    if s.tiny and s.device.type == "cpu":
        # A smoke run, whose figures mean nothing: one thread, since OpenMP threads that wait for
        # each other on a shared CPU make it many times slower.
        torch.set_num_threads(1)
    report = Report(s, out, argv)
    report.log(f"GPU check on {device_name(s.device)}: {len(s.cases)} cases of ours, results -> {out}")

    inputs = make_inputs(s)
    data_dir = Path(tempfile.mkdtemp(prefix="densedet-gpu-check-"))
    try:
        run_cases(report, inputs, data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    report.write(done=True)
    print(report.markdown(done=True))
    report.log(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
