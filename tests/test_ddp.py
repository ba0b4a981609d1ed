"""DDP: 2 processes with gloo on CPU train 2 iterations and hold identical weights.

(BatchNorm running statistics are per process on CPU; DDP broadcasts rank 0's before each
forward, and SyncBN, used on GPUs, shares them.)"""
import os
import socket

import torch
import torch.multiprocessing as mp

from helpers import demo_subset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, images: str, annotations: str, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from fcos.config_demo import Config
    from public.engine import distributed
    from public.engine.optim import LRScheduler, build_optimizer
    from public.engine.trainer import build_loader, train_one_epoch
    from public.data.coco import CocoDetection
    from public.data.transforms import build_transforms

    cfg = Config(device="cpu", batch_size=2, num_workers=0, min_size=(96,), max_size=128, epochs=1,
                 warmup_iters=0, log_interval=1)
    device = distributed.init_distributed(cfg.device)
    assert distributed.get_world_size() == world and distributed.get_rank() == rank
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    dataset = CocoDetection(images, annotations, build_transforms(cfg, train=True))
    loader = build_loader(cfg, dataset, True, device)
    assert len(loader) == 2                      # 8 images / (2 per process x 2 processes)
    model = cfg.build_model(dataset.num_classes)  # (SyncBN is for GPUs; the trainer converts there)
    initial = {k: v.clone() for k, v in model.named_parameters()}
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = build_optimizer(cfg, model)
    train_one_epoch(ddp, cfg.build_loss(), optimizer, LRScheduler(optimizer, cfg, len(loader)),
                    torch.amp.GradScaler("cpu", enabled=False), loader, device, 0, cfg, None)
    torch.save({"initial": initial, "final": dict(model.named_parameters())}, os.path.join(out_dir, f"rank{rank}.pt"))
    distributed.cleanup()


def test_two_process_gloo_training_keeps_replicas_identical(tmp_path):
    images, annotations = demo_subset(tmp_path, 8)
    mp.spawn(_worker, args=(2, _free_port(), images, annotations, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert any(not torch.equal(r0["initial"][k], r1["initial"][k]) for k in r0["initial"])  # started apart
    for key in r0["final"]:
        assert torch.equal(r0["final"][key], r1["final"][key]), key
    changed = [k for k in r0["final"] if not torch.equal(r0["final"][k], r0["initial"][k])]
    assert "head.cls_logits.weight" in changed and "backbone.body.conv1.weight" in changed
