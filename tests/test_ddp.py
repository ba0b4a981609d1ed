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
    from public.engine.train.optim import LRScheduler, build_optimizer
    from public.data.loaders import build_loader
    from public.engine.train.loop import train_one_epoch
    from public.data.coco import CocoDetection
    from public.data.transforms import build_transforms

    cfg = Config(device="cpu", batch_size=2, num_workers=0, min_size=(96,), max_size=128, epochs=1,
                 warmup_iters=0, log_interval=1)
    device = distributed.init_distributed(cfg.device)
    assert distributed.get_world_size() == world and distributed.get_rank() == rank
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    dataset = CocoDetection(images, annotations, build_transforms(cfg, train=True))
    loader = build_loader(cfg, dataset, True, device, rank, world)
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


def test_torchrun_two_processes_train_and_evaluate(tmp_path):
    """The real command line under torchrun: gloo on CPU, sharded evaluation gathered on rank 0."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    train_images, train_json = demo_subset(tmp_path, 8, "train")
    val_images, val_json = demo_subset(tmp_path, 5, "val")   # odd: the shards differ in size
    work_dir = tmp_path / "run"
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
               "train.py", "--config", "fcos/config_demo.py", f"train_images={train_images}",
               f"train_annotations={train_json}", f"val_images={val_images}", f"val_annotations={val_json}",
               f"work_dir={work_dir}", "device=cpu", "batch_size=2", "num_workers=0", "epochs=1",
               "min_size=(96,)", "test_min_size=96", "flops=False", "warmup_iters=0"]
    proc = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["epoch"] == 1          # written once, by rank 0
    assert (work_dir / "latest.pth").is_file() and (work_dir / "best.pth").is_file()
    assert "epoch 1/1 [2/2]" in proc.stdout                         # 8 images / (2 x 2) per step
    assert proc.stdout.count("epoch 1: mAP") == 1                   # rank 0 logs, the others stay quiet
    assert 0.0 <= records[0]["mAP"] <= 1.0 and "loss_cls" in records[0]
