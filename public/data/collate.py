"""Collate transformed samples into one padded `Batch`."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class Batch:
    """One padded batch of B images and their targets.

    Attributes:
        images: uint8 [B, 3, H, W], zero padded at the bottom/right; H, W multiples of size_divisible.
        targets: float32 [B, M, 5] rows (x1, y1, x2, y2, label) in resized pixels; pad rows are
            all -1; M = most boxes in one image of the batch (may be 0).
        image_sizes: int64 [B, 2] (h, w) of each resized image before padding.
        scales: float32 [B, 2] (sx, sy): resized = original * scale.
        orig_sizes: int64 [B, 2] (h, w) of each original image.
        image_ids: int64 [B].
    """

    images: torch.Tensor
    targets: torch.Tensor
    image_sizes: torch.Tensor
    scales: torch.Tensor
    orig_sizes: torch.Tensor
    image_ids: torch.Tensor

    def _map(self, fn) -> "Batch":
        return Batch(**{field.name: fn(getattr(self, field.name)) for field in dataclasses.fields(self)})

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """Called by DataLoader(pin_memory=True) on its pinning thread."""
        return self._map(lambda t: t.pin_memory())

    def __len__(self) -> int:
        return self.images.shape[0]


def collate(samples: list[dict], size_divisible: int = 32) -> Batch:
    """Pad images to a common size (a multiple of `size_divisible`) and targets to M rows.

    Args:
        samples: dicts with image uint8 [H_i, W_i, 3], boxes float32 [N_i, 4], labels int64 [N_i],
            image_id, orig_size (h, w), scale (sx, sy).
    """
    batch_size = len(samples)
    heights = [s["image"].shape[0] for s in samples]
    widths = [s["image"].shape[1] for s in samples]
    padded_h = -(-max(heights) // size_divisible) * size_divisible  # ceil to a multiple
    padded_w = -(-max(widths) // size_divisible) * size_divisible
    max_boxes = max(len(s["boxes"]) for s in samples)

    images = torch.zeros((batch_size, 3, padded_h, padded_w), dtype=torch.uint8)  # [B, 3, H, W]
    targets = torch.full((batch_size, max_boxes, 5), -1.0, dtype=torch.float32)  # [B, M, 5]
    for i, sample in enumerate(samples):
        h, w = heights[i], widths[i]
        images[i, :, :h, :w] = torch.from_numpy(sample["image"]).permute(2, 0, 1)  # [H, W, 3] -> [3, H, W]
        num_boxes = len(sample["boxes"])
        targets[i, :num_boxes, :4] = torch.as_tensor(sample["boxes"], dtype=torch.float32).reshape(-1, 4)
        targets[i, :num_boxes, 4] = torch.as_tensor(sample["labels"], dtype=torch.float32)

    return Batch(
        images=images,
        targets=targets,
        image_sizes=torch.tensor(list(zip(heights, widths)), dtype=torch.int64).reshape(batch_size, 2),
        scales=torch.tensor([s["scale"] for s in samples], dtype=torch.float32).reshape(batch_size, 2),
        orig_sizes=torch.tensor([s["orig_size"] for s in samples], dtype=torch.int64).reshape(batch_size, 2),
        image_ids=torch.tensor([s["image_id"] for s in samples], dtype=torch.int64),
    )
