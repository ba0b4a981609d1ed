"""Random augmentation that depends only on (seed, epoch, image index).

The training transforms draw from Python's ``random`` (scale choice, flips). Left to the
process RNG, what an image gets depends on which process or data-loader worker loads it and
on everything drawn before in that process, so a run resumed after a crash, or run with
another ``num_workers``, sees other augmentations than an uninterrupted one. Here every
sample is loaded under random states seeded from (seed, epoch, index) and the previous states
are put back afterwards: the same image in the same epoch is augmented the same way in any
process, worker count or resumed run.

    batches = EpochBatches(batch_sampler)                 # yields [(epoch, index), ...]
    loader = DataLoader(EpochSamples(dataset, seed), batch_sampler=batches, ...)
    batches.set_epoch(epoch)                              # before each epoch
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that is a function of (seed, epoch, index) only, well mixed."""
    words = [seed % 2**32, seed // 2**32 % 2**32, epoch % 2**32, index % 2**32]
    low, high = np.random.SeedSequence(words).generate_state(2, np.uint32).tolist()
    return (low | high << 32) % 2**63


@contextlib.contextmanager
def seeded(seed: int):
    """Python ``random``, NumPy's global generator and torch's CPU generator seeded with
    ``seed`` inside the block. In the main process their previous states are put back after
    it; a data-loader worker's own states matter to nothing else, so there they are not."""
    in_worker = torch.utils.data.get_worker_info() is not None
    if not in_worker:
        saved = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)   # CPU only (torch.manual_seed also seeds CUDA: slow)
    try:
        yield
    finally:
        if not in_worker:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.default_generator.set_state(saved[2])


class EpochSamples(Dataset):
    """``dataset[index]`` with its random transforms seeded from (``seed``, epoch, index).

    Indexed by ``(epoch, index)`` pairs (what ``EpochBatches`` yields). Attributes not defined
    here are the wrapped dataset's.
    """

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with seeded(sample_seed(self.seed, epoch, index)):
            # a dataset that varies by epoch (CocoDetection's mosaic, closed for the last epochs) gets it
            in_epoch = getattr(self.dataset, "item_in_epoch", None)
            return in_epoch(index, epoch) if in_epoch is not None else self.dataset[index]

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet (unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """A batch sampler whose batches of indices become batches of (epoch, index) pairs.

    ``set_epoch`` is passed on to the wrapped batch sampler and to its sampler (whichever of
    them shuffle by epoch: ``GroupedBatchSampler``, ``DistributedSampler``).
    """

    def __init__(self, batch_sampler):
        self.batch_sampler = batch_sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for inner in (self.batch_sampler, getattr(self.batch_sampler, "sampler", None)):
            if hasattr(inner, "set_epoch"):
                inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        epoch = self.epoch
        for batch in self.batch_sampler:
            yield [(epoch, int(index)) for index in batch]
