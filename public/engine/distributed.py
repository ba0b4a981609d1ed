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
        store = _attempt_store()
        joined = {} if store is None else {"store": store, "rank": int(os.environ["RANK"]),
                                           "world_size": int(os.environ["WORLD_SIZE"])}
        dist.init_process_group(backend="nccl" if cuda else "gloo", **joined)
        return torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")


def _attempt_store() -> dist.Store | None:
    """The rendezvous store of this torchrun attempt, its keys apart from earlier attempts'.

    With ``--rdzv-backend=c10d`` torchrun's agent keeps one store server for all its restarts
    (``--max-restarts``), and the processes of attempt N find the keys attempt N-1 wrote there:
    a process that reads a peer's connection key before the restarted peer has rewritten it gets
    the dead process's address, and gloo's pair setup then waits forever (both sides listening).
    A prefix per attempt (``TORCHELASTIC_RESTART_COUNT``) makes every attempt read only its own
    keys. None (torch's own store) outside torchrun's elastic agent."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        return None
    store, _, _ = next(dist.rendezvous("env://"))
    return dist.PrefixStore(f"densedet/attempt_{attempt}", store)


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
