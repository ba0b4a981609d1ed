"""torch.distributed helpers: one process per device, launched by torchrun.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every process,
on one machine (``--nproc_per_node=N``) or many (``--nnodes --node_rank --rdzv_endpoint``).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(device_kind: str) -> torch.device:
    """Join the process group if launched by torchrun; return this process's device.

    NCCL on GPUs, gloo on CPU. Without torchrun's variables this is a single process.
    """
    cuda = device_kind == "cuda" or (device_kind == "auto" and torch.cuda.is_available())
    if device_kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is available; use device=cpu")
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not is_distributed():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        return torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over processes (a copy; the identity in a single process)."""
    if not is_distributed():
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor / get_world_size()


def all_gather_objects(obj) -> list:
    """Every process's ``obj``, in rank order (the list [obj] in a single process)."""
    if not is_distributed():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def broadcast_object(obj, src: int = 0):
    """``obj`` of process ``src`` on every process."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def amp_dtype_of(cfg, device_type: str = "cuda") -> torch.dtype | None:
    """The autocast dtype of ``cfg`` (``amp``, ``amp_dtype``) on ``device_type``, None without
    mixed precision. On a CPU, float16 autocast runs many times slower than float32 (13x
    measured on an Intel Xeon), so a CPU run takes bfloat16 instead, and says so."""
    if not cfg.amp:
        return None
    if device_type == "cpu" and cfg.amp_dtype == "float16":
        import logging
        logging.getLogger("densedet").warning(
            "amp=True on a CPU: autocast in bfloat16, not float16 (float16 on a CPU runs many times slower than "
            "float32); CPUs without native bfloat16 run it slower than float32 too: amp=False is usually fastest")
        return torch.bfloat16
    return getattr(torch, cfg.amp_dtype)
