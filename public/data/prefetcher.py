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


class TorchvisionResize:
    """torchvision's evaluation preprocessing (``GeneralizedRCNNTransform`` in eval mode) on a
    batch of original images, for checkpoints trained by torchvision (``test_resize="torchvision"``).

    Each image is taken as float in [0, 1], normalised with torchvision's ImageNet mean/std,
    resized by ``min(min_size / short side, max_size / long side)`` with bilinear
    interpolation (output sides floored), and the batch zero-padded to a multiple of
    ``size_divisible``: exactly the tensors torchvision's detection models see. The densedet
    default (``"opencv"``) resizes uint8 images in the loader and rounds the sizes, which moves
    a torchvision model's boxes by a fraction of a pixel and its AP in the third decimal.

    Called on a ``Batch`` of uint8 originals (no resize in the loader) on the device; returns
    it with float32 normalised ``images`` [B, 3, H', W'], the resized ``image_sizes`` and the
    ``scales`` and ``targets`` updated (resized = original * scale).
    """

    def __init__(self, min_size: int, max_size: int, size_divisible: int = 32):
        from torchvision.models.detection.transform import GeneralizedRCNNTransform

        self.transform = GeneralizedRCNNTransform(
            min_size, max_size, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
            size_divisible=size_divisible).eval()

    def __call__(self, batch):
        # Per image: the sizes differ (torchvision loops over the list the same way).
        originals = [batch.images[i, :, :h, :w].float() / 255  # [3, h, w], as to_tensor reads an image
                     for i, (h, w) in enumerate(batch.image_sizes.tolist())]
        image_list, _ = self.transform(originals)
        sizes = torch.tensor(image_list.image_sizes, dtype=torch.int64, device=batch.images.device)  # [B, 2]
        ratio = sizes.flip(1).float() / batch.image_sizes.flip(1).float()                             # [B, 2] (sx, sy)
        targets = batch.targets.clone()                                                               # [B, M, 5]
        real = targets[..., 4] >= 0
        targets[..., :4] = torch.where(real[..., None], targets[..., :4] * ratio.repeat(1, 2)[:, None, :],
                                       targets[..., :4])
        return dataclasses.replace(batch, images=image_list.tensors, image_sizes=sizes,
                                   scales=batch.scales * ratio, targets=targets)


def pinned_copies(device) -> bool:
    """Whether batches for ``device`` go through page-locked host memory with non_blocking
    copies: only to a CUDA device (a copy to the CPU is no copy; pinning there only costs)."""
    return torch.device(device).type == "cuda"


def eval_resize(cfg):
    """The device-side evaluation resize of ``cfg`` (``TorchvisionResize``), or None when the
    loader resizes (``test_resize="opencv"``, the default)."""
    if cfg.test_resize != "torchvision":
        return None
    return TorchvisionResize(cfg.test_min_size, cfg.max_size, cfg.size_divisible)


class Prefetcher:
    """Iterate a DataLoader of `Batch`; yield each batch on `device` with normalised float32 images.

    On CUDA the next batch is copied from pinned memory on a side stream while the current
    step runs (create the loader with pin_memory=True for the copies to be asynchronous).
    On CPU it is plain iteration plus normalisation.

    Args:
        loader: iterable of `Batch` with a length (a DataLoader).
        device: where the batches go.
        channels_last: also convert images to channels_last memory format.
        resize: a device-side resize that also normalises (``eval_resize``), for batches of
            original images; None: the loader has resized them.
    """

    def __init__(self, loader, device, channels_last: bool = False, resize=None):
        self.loader = loader
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.resize = resize

    def __len__(self) -> int:
        return len(self.loader)

    def _prepare(self, batch):
        batch = batch.to(self.device, non_blocking=pinned_copies(self.device))
        if self.resize is not None:
            batch = self.resize(batch)
            images = batch.images                            # [B, 3, H', W'] float32, normalised
        else:
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
