"""A schedule from a time budget: ``time_budget=15`` trains for about 15 minutes.

Users of small data think in the time they have (Ultralytics' ``time=0.25`` hours), not in
epochs. With ``time_budget`` set, the run's epochs are resolved before anything else, from the
speed of this run's own training steps and evaluation measured on this machine
(``measure_speed``): the epochs whose training and evaluations fit in what is left of the
budget (``epochs_for_budget``). The schedule (warmup cap, lr steps as fractions, cosine, EMA
horizon) then follows those epochs like any other, and the resolved epochs are stored in the
run's checkpoints, so a resumed run keeps them.

The measurement builds a throwaway copy of the model and runs a few steps on real batches,
with every random state put back afterwards: the run itself is the one it would have been with
``epochs`` set by hand to the resolved value.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from public.data.loaders import build_loader
from public.data.prefetcher import Prefetcher
from public.engine import distributed as dist_utils
from public.engine.runs.state import preserved_rng
from public.engine.train.optim import build_optimizer

WARMUP_STEPS = 2     # steps not timed: the first ones allocate memory and warm up kernels
TIMED_STEPS = 4      # steps timed for the training speed
TIMED_VAL_BATCHES = 2


@dataclass(frozen=True)
class Speed:
    """Measured seconds per training iteration (one batch: loading, forward, loss, backward,
    step) and per validation image (loading, forward, decoding)."""
    seconds_per_iteration: float
    seconds_per_val_image: float


def measure_speed(spec, train_set, val_set, device: torch.device) -> Speed:
    """Time a few training steps and a few validation batches of ``spec``'s model on ``device``;
    random states are left as they were. Every process gets the main process's figures."""
    with preserved_rng():
        model = spec.build_model(train_set.num_classes).to(device).train()
        loss_fn, decoder = spec.build_loss(), spec.build_decoder()
        optimizer = build_optimizer(spec, model)
        loader = build_loader(spec, train_set, True, device)
        loader.batch_sampler.set_epoch(0)
        batches, start = 0, 0.0
        for batch in Prefetcher(loader, device, spec.channels_last):
            if batches == WARMUP_STEPS:
                _sync(device)
                start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            sum(loss_fn(model(batch.images), batch.targets).values()).backward()
            optimizer.step()
            batches += 1
            if batches == WARMUP_STEPS + TIMED_STEPS:
                break
        _sync(device)
        timed = max(1, batches - WARMUP_STEPS)
        per_iteration = (time.perf_counter() - start) / timed if batches > WARMUP_STEPS else 0.0
        model.eval()
        images, start = 0, time.perf_counter()
        with torch.no_grad():
            for index, batch in enumerate(Prefetcher(build_loader(spec, val_set, False, device), device,
                                                     spec.channels_last)):
                decoder(model(batch.images), batch.image_sizes)
                images += len(batch.images)
                if index + 1 == TIMED_VAL_BATCHES:
                    break
        _sync(device)
        per_image = (time.perf_counter() - start) / max(1, images)
    return Speed(*dist_utils.broadcast_object((per_iteration, per_image)))


def epochs_for_budget(minutes: float, elapsed_seconds: float, speed: Speed, iters_per_epoch: int,
                      num_val_images: int, eval_interval: int) -> tuple[int, str]:
    """The most epochs whose training and evaluations (one every ``eval_interval`` epochs, one
    after the last) fit in the ``minutes`` of the budget left after ``elapsed_seconds``; at
    least 1. Returns them and the line that says how."""
    left = minutes * 60 - elapsed_seconds
    epoch_seconds = iters_per_epoch * speed.seconds_per_iteration
    eval_seconds = num_val_images * speed.seconds_per_val_image
    # E epochs cost E x epoch + ceil(E / interval) x eval <= left; with E / interval + 1 as the bound
    epochs = max(1, math.floor((left - eval_seconds) / (epoch_seconds + eval_seconds / eval_interval)))
    line = (f"epochs {epochs} for time_budget={minutes:g} min ({left / 60:.1f} min left): "
            f"{speed.seconds_per_iteration:.3g} s an iteration x {iters_per_epoch} an epoch, an evaluation "
            f"{eval_seconds:.0f} s every {eval_interval} epoch(s) (measured)")
    return epochs, line


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
