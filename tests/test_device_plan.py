"""What a run does on a GPU (autocast dtype, GradScaler, SyncBatchNorm, pinned memory and
non_blocking copies), decided by ``device_plan`` from (config, device, DDP or not): every
decision asserted here on a CPU with a CUDA device description; on a machine with a GPU, the
tests at the end (skipped without one; bench/gpu.sh runs them) check by a real step that each
decision took effect."""
import numpy as np
import pytest
import torch
from torch import nn

from config import load_config
from public.data.loaders import build_loader
from public.data.prefetcher import Prefetcher
from public.engine.device_plan import DevicePlan, device_plan

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu.sh runs it)")


def config(*keys):
    return load_config("fcos/config_demo.py", ["freeze_bn=False", *keys])


# ---- the decisions, on any machine ------------------------------------------------------------
@pytest.mark.parametrize("keys, device, distributed, expected", [
    # keys,                              device, DDP,  (autocast dtype, scaler, SyncBN, pinned + non_blocking)
    ([],                                 "cuda", False, (None, False, False, True)),
    (["amp=True"],                       "cuda", False, (torch.float16, True, False, True)),
    (["amp=True", "amp_dtype=bfloat16"], "cuda", False, (torch.bfloat16, False, False, True)),
    (["amp=True"],                       "cuda", True, (torch.float16, True, True, True)),
    (["amp=True", "freeze_bn=True"],     "cuda", True, (torch.float16, True, False, True)),
    ([],                                 "cuda:1", True, (None, False, True, True)),
    # a CPU: bfloat16 for float16 (13x faster measured), no scaler, gloo has no SyncBN, nothing pinned
    (["amp=True"],                       "cpu", True, (torch.bfloat16, False, False, False)),
    (["amp=True", "amp_dtype=bfloat16"], "cpu", False, (torch.bfloat16, False, False, False)),
    ([],                                 "cpu", True, (None, False, False, False)),
], ids=["cuda_fp32", "cuda_fp16", "cuda_bf16", "ddp_fp16", "ddp_frozen_bn", "ddp_cuda1_fp32",
        "cpu_ddp_fp16", "cpu_bf16", "cpu_ddp_fp32"])
def test_device_plan_decides_each_gpu_setting(keys, device, distributed, expected):
    plan = device_plan(config(*keys), torch.device(device), distributed)
    assert (plan.autocast_dtype, plan.use_scaler, plan.sync_bn, plan.pin_memory) == expected
    assert plan.non_blocking == plan.pin_memory and plan.device_type == torch.device(device).type
    assert device_plan(config(*keys), device, distributed) == plan               # a description does too


def test_freeze_bn_auto_left_unresolved_is_no_sync_bn():
    """SyncBN only for a resolved ``freeze_bn=False``: "auto" is resolved before the plan (a
    frozen BN's statistics are not updated, so syncing them costs an all-reduce for nothing)."""
    assert not device_plan(load_config("fcos/config_demo.py", ["freeze_bn=auto"]), "cuda", True).sync_bn


def test_plan_builds_what_it_decides(monkeypatch):
    """The plan's GradScaler is made for its device and enabled exactly with ``use_scaler`` (a
    CUDA GradScaler disables itself without a GPU: its arguments are what is checked here), and
    ``prepare_model`` converts BatchNorm to SyncBatchNorm exactly with ``sync_bn`` (conversion
    needs no GPU)."""
    fields = dict(device_type="cuda", autocast_dtype=torch.float16, pin_memory=True, non_blocking=True)
    on = DevicePlan(use_scaler=True, sync_bn=True, **fields)
    off = DevicePlan(use_scaler=False, sync_bn=False, **fields)
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled=True: (device, enabled))
    assert on.grad_scaler() == ("cuda", True) and off.grad_scaler() == ("cuda", False)
    assert isinstance(on.prepare_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))[1], nn.SyncBatchNorm)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert off.prepare_model(model) is model and type(model[1]) is nn.BatchNorm2d


class _Images(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return {"image": np.zeros((32, 32, 3), np.uint8), "boxes": np.zeros((0, 4), np.float32),
                "labels": np.zeros(0, np.int64), "image_id": i, "scale": (1.0, 1.0),
                "orig_size": (32, 32)}


def test_loaders_pin_memory_only_for_a_gpu():
    """The evaluation and training loaders pin memory for a CUDA device only (the plan's
    ``pin_memory``); building a loader needs no GPU."""
    cfg = config("num_workers=0")
    for device in ("cuda", "cpu"):
        plan = device_plan(cfg, device, False)
        loader = build_loader(cfg, _Images(), False, torch.device(device))
        assert loader.pin_memory is plan.pin_memory is (device == "cuda")


def test_prefetcher_copies_non_blocking_only_to_a_gpu(monkeypatch):
    """The prefetcher's copies are non_blocking exactly where the plan says (a CUDA device): on
    a CPU the copy is synchronous (no stream to overlap)."""
    from public.data import prefetcher

    seen = []

    class Batch:
        images = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
        image_sizes = torch.tensor([[4, 4]])

        def to(self, device, non_blocking=False):
            seen.append(non_blocking)
            return self

    monkeypatch.setattr(prefetcher.dataclasses, "replace", lambda batch, **fields: batch)
    Prefetcher([], "cpu")._prepare(Batch())
    Prefetcher([], torch.device("cuda"))._prepare(Batch())
    assert seen == [device_plan(config(), "cpu", False).non_blocking, device_plan(config(), "cuda", False).non_blocking]
    assert seen == [False, True]


# ---- the decisions taking effect, on a GPU -----------------------------------------------------
@CUDA
def test_gpu_float16_step_is_scaled():
    """amp=True on CUDA: the forward runs in float16 and the GradScaler scales the loss: its
    scale grows (x2 after ``growth_interval`` finite steps, here 1) and the weights move."""
    plan = device_plan(config("amp=True"), "cuda", False)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = plan.grad_scaler()
    scaler.set_growth_factor(2.0)
    scaler._growth_interval = 1
    before = model[0].weight.detach().clone()
    start = scaler.get_scale()
    with torch.autocast("cuda", dtype=plan.autocast_dtype, enabled=plan.autocast_dtype is not None):
        out = model(torch.rand(2, 3, 8, 8, device="cuda"))
    assert out.dtype == torch.float16
    scaler.scale(out.float().square().mean()).backward()
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 2 * start and not torch.equal(before, model[0].weight)


@CUDA
def test_gpu_ddp_step_runs_sync_batchnorm(tmp_path):
    """freeze_bn=False under DDP on CUDA: BatchNorm becomes SyncBatchNorm and a DDP step on a
    pinned batch (a one-process NCCL group) updates its running statistics."""
    import torch.distributed as dist

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        plan = device_plan(config(), "cuda", dist.is_initialized())
        model = plan.prepare_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).cuda()
        assert isinstance(model[1], nn.SyncBatchNorm)
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
        batch = torch.rand(2, 3, 8, 8).pin_memory() if plan.pin_memory else torch.rand(2, 3, 8, 8)
        assert batch.is_pinned()
        ddp(batch.to("cuda", non_blocking=plan.non_blocking)).mean().backward()
        assert int(model[1].num_batches_tracked) == 1 and not torch.equal(model[1].running_mean.cpu(), torch.zeros(4))
    finally:
        dist.destroy_process_group()


@CUDA
def test_gpu_loader_batches_are_pinned():
    cfg = config("num_workers=0")
    loader = build_loader(cfg, _Images(), False, torch.device("cuda"))
    batch = next(iter(loader))
    assert batch.images.is_pinned() and batch.targets.is_pinned()
    on_gpu = next(iter(Prefetcher(loader, "cuda")))
    assert on_gpu.images.is_cuda and on_gpu.images.dtype == torch.float32
