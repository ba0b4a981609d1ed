"""Datasets and loaders of a run, from its config.

Training batches are a function of (seed, epoch) (call ``loader.batch_sampler.set_epoch``)
and each image's augmentation of (seed, epoch, index) (``public.data.seeding``), whatever the
process, worker count or resume.
"""
from __future__ import annotations

import functools
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, SequentialSampler

from public.data.coco import CocoDetection
from public.data.collate import collate
from public.data.crowns import CROWNS_ROOT, ensure_crowns_data
from public.data.demo import DEMO_ROOT, ensure_demo_data
from public.data.mosaic import build_mosaic
from public.data.prefetcher import pinned_copies
from public.data.sampler import GroupedBatchSampler
from public.data.seeding import EpochBatches, EpochSamples
from public.data.transforms import build_transforms


# The built-in datasets, generated on first use: root -> the function that makes it there.
BUILTIN_DATA = {DEMO_ROOT: ensure_demo_data, CROWNS_ROOT: ensure_crowns_data}


def builtin_roots(cfg) -> list[Path]:
    """The roots of the built-in datasets (BUILTIN_DATA) that the config's data paths point into."""
    paths = [Path(p).resolve() for p in (cfg.train_images, cfg.train_annotations, cfg.val_images, cfg.val_annotations)]
    return [root for root in BUILTIN_DATA if any(p.is_relative_to(root) for p in paths)]


def uses_demo_data(cfg) -> bool:
    """Whether the config's data paths point into a built-in dataset (the demo shapes or the tree
    crowns, generated on first use)."""
    return bool(builtin_roots(cfg))


def ensure_builtin_data(cfg) -> None:
    """Generate each built-in dataset the config points into, unless it already exists."""
    for root in builtin_roots(cfg):
        BUILTIN_DATA[root]()



def prepare_builtin_data(cfg) -> None:
    """Generate the built-in dataset the config points into (demo shapes or tree crowns): the
    first process generates it while the others wait (under torchrun)."""
    if not uses_demo_data(cfg):
        return
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not distributed or torch.distributed.get_rank() == 0:
        ensure_builtin_data(cfg)
    if distributed:
        torch.distributed.barrier()

def build_dataset(cfg, train: bool) -> CocoDetection:
    images, annotations = ((cfg.train_images, cfg.train_annotations) if train
                           else (cfg.val_images, cfg.val_annotations))
    dataset = CocoDetection(images, annotations, build_transforms(cfg, train), cfg.check_images)
    if train:
        dataset.mosaic = build_mosaic(cfg, dataset.transforms)
    return dataset


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


def build_loader(cfg, dataset, train: bool, device: torch.device, rank: int = 0, world_size: int = 1,
                 collate_fn=None) -> DataLoader:
    """Training: shuffled (sharded over ``world_size`` processes), in batches of one orientation
    with ``aspect_ratio_grouping``; evaluation: in order, each rank its own shard.
    ``collate_fn`` replaces the padding ``collate`` (test-time augmentation takes raw samples).
    The loaders draw their worker seeds from their own generator, not from the process's torch RNG."""
    collate_fn = collate_fn or functools.partial(collate, size_divisible=cfg.size_divisible)
    common = {"num_workers": cfg.num_workers, "collate_fn": collate_fn, "pin_memory": pinned_copies(device),
              "persistent_workers": cfg.num_workers > 0, "worker_init_fn": _seed_worker,
              "generator": torch.Generator().manual_seed(cfg.seed + rank)}
    if not train:
        sampler = ShardSampler(len(dataset), rank, world_size) if world_size > 1 else SequentialSampler(dataset)
        return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, **common)
    drop_last = len(dataset) >= cfg.batch_size * world_size
    if cfg.aspect_ratio_grouping:
        batches = GroupedBatchSampler(dataset.portrait(), cfg.batch_size, rank, world_size, cfg.seed, drop_last)
    else:  # a permutation from seed + epoch, as GroupedBatchSampler's (one process: all of it)
        sampler = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=cfg.seed,
                                     drop_last=world_size > 1)
        batches = BatchSampler(sampler, cfg.batch_size, drop_last)
    return DataLoader(EpochSamples(dataset, cfg.seed), batch_sampler=EpochBatches(batches), **common)
