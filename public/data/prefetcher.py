"""Move batches to the device ahead of time and normalise them there."""

from __future__ import annotations

import dataclasses

import torch

# ImageNet statistics in 0-255 RGB, matching torchvision's pretrained backbones.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def normalize(images: torch.Tensor, image_sizes: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 (x - mean) / std per channel, on the images' device.

    With ``image_sizes`` [B, 2] (h, w), the padding beyond each image is set to 0 after
    normalisation, as torchvision and detectron2 pad: the pad then reads as "average colour"
    rather than as a dark border, the same for every padded size.
    """
    mean = torch.tensor(PIXEL_MEAN, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    out = (images.float() - mean) / std
    if image_sizes is not None:
        h, w = images.shape[-2:]
        rows = torch.arange(h, device=images.device)[None, :] < image_sizes[:, 0:1]   # [B, H]
        cols = torch.arange(w, device=images.device)[None, :] < image_sizes[:, 1:2]   # [B, W]
        out = out * (rows[:, None, :, None] & cols[:, None, None, :])                  # [B, 3, H, W]
    return out


class Prefetcher:
    """Iterate a DataLoader of `Batch`; yield each batch on `device` with normalised float32 images.

    On CUDA the next batch is copied from pinned memory on a side stream while the current
    step runs (create the loader with pin_memory=True for the copies to be asynchronous).
    On CPU it is plain iteration plus normalisation.

    Args:
        loader: iterable of `Batch` with a length (a DataLoader).
        device: where the batches go.
        channels_last: also convert images to channels_last memory format.
    """

    def __init__(self, loader, device, channels_last: bool = False):
        self.loader = loader
        self.device = torch.device(device)
        self.channels_last = channels_last

    def __len__(self) -> int:
        return len(self.loader)

    def _prepare(self, batch):
        batch = batch.to(self.device, non_blocking=True)
        images = normalize(batch.images, batch.image_sizes)  # [B, 3, H, W] float32
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return dataclasses.replace(batch, images=images)

    def __iter__(self):
        if self.device.type != "cuda":
            for batch in self.loader:
                yield self._prepare(batch)
            return

        stream = torch.cuda.Stream(device=self.device)
        batches = iter(self.loader)

        def load_next():
            batch = next(batches, None)
            if batch is None:
                return None
            with torch.cuda.stream(stream):
                return self._prepare(batch)

        next_batch = load_next()
        while next_batch is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(stream)  # the copy of this batch must finish before the step reads it
            batch = next_batch
            # Tensors allocated on the side stream and used on the current one: tell the caching
            # allocator so it does not reuse their memory while the step may still read them.
            for field in dataclasses.fields(batch):
                getattr(batch, field.name).record_stream(current)
            next_batch = load_next()  # starts the next copy, overlapping the caller's step
            yield batch
