"""What a run does differently on a GPU, decided in one place from (config, device, DDP or not).

These decisions act only on a CUDA device, so a CPU machine never exercises them; written as a
plain function of their inputs, they are tested on a CPU with a ``torch.device("cuda")``
description (tests/test_device_plan.py), and on a GPU by a real step (the same file's GPU tests,
run by bench/gpu.sh).
"""
from __future__ import annotations

import dataclasses

import torch

from public.data.prefetcher import pinned_copies
from public.engine.distributed import amp_dtype_of


@dataclasses.dataclass(frozen=True)
class DevicePlan:
    """How a run uses its device.

    Attributes:
        device_type: "cuda" or "cpu".
        autocast_dtype: the dtype of ``torch.autocast`` (``amp``, ``amp_dtype``; bfloat16 for
            float16 on a CPU), None without mixed precision.
        use_scaler: a GradScaler scales the loss: float16 autocast on CUDA, whose gradients
            underflow without it (bfloat16 has float32's exponent range and needs none).
        sync_bn: BatchNorm layers become SyncBatchNorm (statistics over every GPU's images):
            DDP on GPUs with BatchNorm that trains (``freeze_bn=False``). Gloo (CPU) has no
            SyncBatchNorm.
        pin_memory: the loaders put batches in page-locked memory (CUDA only) ...
        non_blocking: ... so that their copies to the device overlap the step.
    """

    device_type: str
    autocast_dtype: torch.dtype | None
    use_scaler: bool
    sync_bn: bool
    pin_memory: bool
    non_blocking: bool

    def grad_scaler(self) -> torch.amp.GradScaler:
        """The run's GradScaler (disabled, a no-op, unless ``use_scaler``)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.use_scaler)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` with SyncBatchNorm for BatchNorm where ``sync_bn``; else itself."""
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) if self.sync_bn else model


def device_plan(cfg, device: torch.device | str, distributed: bool) -> DevicePlan:
    """The plan of ``cfg`` (resolved: ``freeze_bn`` a bool) on ``device`` (a device or its
    description, e.g. ``"cuda"``), in a DDP run or not."""
    device_type = torch.device(device).type
    cuda = device_type == "cuda"
    dtype = amp_dtype_of(cfg, device_type)
    pinned = pinned_copies(device)
    return DevicePlan(device_type=device_type, autocast_dtype=dtype, use_scaler=cuda and dtype == torch.float16,
                      sync_bn=cuda and distributed and cfg.freeze_bn is False, pin_memory=pinned, non_blocking=pinned)
