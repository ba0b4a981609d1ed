"""Training batches of images with the same orientation (aspect-ratio grouping).

A batch is padded to its largest height and largest width, so a landscape 800x1216 image
batched with a portrait 1216x800 one becomes two 1216x1216 inputs, 52% more pixels than the
images hold. Grouping landscape with landscape and portrait with portrait (as torchvision's
detection references and detectron2 do by default) removes most of that padding.
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


class GroupedBatchSampler(Sampler[list[int]]):
    """Shuffled batches of dataset indices, each batch from one group, sharded over processes.

    Every epoch (``set_epoch``) draws one permutation from ``seed + epoch``, the same on every
    process; the permutation is cut to a multiple of ``world_size`` and each process takes
    every ``world_size``-th index from ``rank`` (as ``DistributedSampler(drop_last=True)``).
    Walking its shard in that order, each group fills its own batch and a batch is emitted when
    it is full; at the end the groups' leftovers are batched together in order. So every image
    of the shard is used once, and the number of batches is ``len(shard) // batch_size``
    (rounded up without ``drop_last``), the same on every process.

    Args:
        groups: the group of every dataset index (e.g. 0 landscape, 1 portrait).
    """

    def __init__(self, groups, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 drop_last: bool = True):
        self.groups = torch.as_tensor(groups, dtype=torch.long)
        if self.groups.dim() != 1 or self.groups.numel() == 0:
            raise ValueError("groups must hold one group per dataset index, for at least one index")
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard(self) -> torch.Tensor:
        n = self.groups.numel()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        if n < self.world_size:  # fewer images than processes: repeat, so that every process has one
            order = order.repeat(-(-self.world_size // n))
        order = order[:order.numel() // self.world_size * self.world_size]
        return order[self.rank::self.world_size]

    def _num_batches(self, size: int) -> int:
        return size // self.batch_size if self.drop_last else -(-size // self.batch_size)

    def __len__(self) -> int:
        n = self.groups.numel()
        return self._num_batches(max(n, self.world_size) // self.world_size)

    def __iter__(self):
        shard = self._shard()                                            # [n] dataset indices
        group = self.groups[shard]                                       # [n]
        bs = self.batch_size
        full, completed_at, leftover = [], [], []
        for g in group.unique():                                         # a loop over groups, not images
            position = (group == g).nonzero().squeeze(1)                 # where the group's images come
            whole = position.numel() // bs * bs
            full.append(shard[position[:whole]].view(-1, bs))           # [k, bs]
            completed_at.append(position[bs - 1:whole:bs])               # [k] when each batch fills
            leftover.append(position[whole:])
        full, completed_at = torch.cat(full), torch.cat(completed_at)
        batches = full[completed_at.argsort()].tolist()
        rest = shard[torch.cat(leftover).sort().values].split(bs)        # mixed batches, in order
        batches += [r.tolist() for r in rest if r.numel() == bs or not self.drop_last]
        return iter(batches)
