"""DDP: 2 processes with gloo on CPU train 2 iterations and hold identical weights; the loss
normalisers and sharded evaluation of 2 processes give what one process gives on the whole.

(BatchNorm running statistics are per process on CPU; DDP broadcasts rank 0's before each
forward, and SyncBN, used on GPUs, shares them.)"""
import os
import socket

import pytest
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
    from public.engine.train.ema import ModelEMA
    from public.data.coco import CocoDetection
    from public.data.transforms import build_transforms

    cfg = Config(device="cpu", batch_size=2, num_workers=0, min_size=(96,), max_size=128, epochs=1,
                 warmup_iters=0, log_interval=1).resolve()
    device = distributed.init_distributed(cfg.device)
    assert distributed.get_world_size() == world and distributed.get_rank() == rank
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    dataset = CocoDetection(images, annotations, build_transforms(cfg, train=True))
    loader = build_loader(cfg, dataset, True, device, rank, world)
    assert len(loader) == 2                      # 8 images / (2 per process x 2 processes)
    model = cfg.resolve().build_model(dataset.num_classes)  # (SyncBN is for GPUs; the trainer converts there)
    initial = {k: v.clone() for k, v in model.named_parameters()}
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = build_optimizer(cfg, model)
    ema = ModelEMA(model, 0.5, 1)                # after DDP's broadcast of rank 0's weights
    train_one_epoch(ddp, cfg.build_loss(), optimizer, LRScheduler(optimizer, cfg, len(loader)),
                    torch.amp.GradScaler("cpu", enabled=False), loader, device, 0, cfg, None, ema=ema)
    torch.save({"initial": initial, "final": dict(model.named_parameters()),
                "ema": dict(ema.module.named_parameters()), "ema_updates": ema.updates},
               os.path.join(out_dir, f"rank{rank}.pt"))
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
    # The EMA, updated from the unwrapped model after each step, is the same on both processes
    # (the replicas' weights were, at every step) and an average, not the weights themselves.
    assert r0["ema_updates"] == r1["ema_updates"] == 2
    for key in r0["ema"]:
        assert torch.equal(r0["ema"][key], r1["ema"][key]), key
    assert not torch.equal(r0["ema"]["head.cls_logits.weight"], r0["final"]["head.cls_logits.weight"])


@pytest.mark.slow
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


# ---- normalisers, all_reduce_mean and sharded evaluation in a 2-process world ------------------------
# One spawn of 2 gloo processes (a module fixture) does three things whose answers the tests
# below compare with the same computations in this single process (world size 1):
#  - ``all_reduce_mean`` of a different tensor on each rank;
#  - each model's loss (default config, ``loss_normalizer="batch"`` for RetinaNet) on its own
#    image of a 2-image batch with 1 box in image 0 and 3 in image 1, so that the processes
#    have different numbers of positives. DDP averages gradients over processes, so the
#    effective loss is the mean over processes, which must equal the loss of the whole batch
#    in one process: the normalisers (positives, centerness sum) are totals over processes
#    divided by the world size;
#  - ``evaluate`` of each rank's ``ShardSampler`` shard of 5 images (3 and 2), gathered on
#    rank 0, with a model that returns fixed detections per image: the same COCO stats as
#    one process on all 5.
# The spawn (each process imports torch, torchvision, pycocotools) takes ~20 s on a shared
# 2-core machine, hence ``slow``; the tests themselves are instant.
TINY = ["backbone=resnet18", "pretrained=False", "fpn_channels=32", "num_convs=1"]
LOSS_MODELS = ("fcos", "atss", "retinanet")
PER_IMAGE_OUTPUTS = ("cls_logits", "box_reg", "centerness")
EVAL_OVERRIDES = dict(device="cpu", batch_size=2, num_workers=0, test_min_size=96, max_size=128)


def _image_key(image: torch.Tensor) -> str:
    """A normalised image [3, h, w] (padding cropped) -> a key that does not depend on the batch."""
    import hashlib

    return hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()


class _TableModel(torch.nn.Module):
    """A 'model' whose outputs are its input images; ``_TableDecoder`` looks their detections up."""

    def forward(self, images):
        return images


class _TableDecoder:
    def __init__(self, table: dict):
        self.table = table                  # _image_key -> {"boxes", "scores", "labels"} in input pixels

    def __call__(self, images, image_sizes):
        return [self.table[_image_key(image[:, :h, :w])] for image, (h, w) in zip(images, image_sizes.tolist())]


def _eval_dataset(images: str, annotations: str):
    from fcos.config_demo import Config
    from public.data.coco import CocoDetection
    from public.data.transforms import build_transforms

    cfg = Config(**EVAL_OVERRIDES)
    return cfg, CocoDetection(images, annotations, build_transforms(cfg, train=False))


def _proof_worker(rank: int, world: int, port: int, payload_path: str, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from config import load_config
    from public.data.loaders import ShardSampler, build_loader
    from public.engine import distributed
    from public.engine.evaluate.evaluator import evaluate

    payload = torch.load(payload_path, weights_only=False)
    device = distributed.init_distributed("cpu")
    assert distributed.get_world_size() == world and distributed.get_rank() == rank
    out = {}

    # all_reduce_mean of a different tensor on each rank; the input is left as it was
    mine = torch.tensor([[1.0, -2.0], [4.0, 0.5]]) if rank == 0 else torch.tensor([[3.0, 6.0], [-8.0, 0.25]])
    before = mine.clone()
    out["mean"] = distributed.all_reduce_mean(mine)
    out["input_unchanged"] = torch.equal(mine, before)
    out["scalar_mean"] = distributed.all_reduce_mean(torch.tensor(float(rank + 1) ** 2))  # (1 + 4) / 2

    # each model's loss on this rank's image
    out["losses"] = {}
    for name in LOSS_MODELS:
        outputs, targets = payload["losses"][name]
        mine = {k: (v[rank:rank + 1] if k in PER_IMAGE_OUTPUTS else v) for k, v in outputs.items()}
        loss = load_config(f"{name}/config.py", TINY).build_loss()(mine, targets[rank:rank + 1])
        out["losses"][name] = {k: v.item() for k, v in loss.items()}

    # evaluation of this rank's shard
    cfg, dataset = _eval_dataset(*payload["eval_data"])
    loader = build_loader(cfg, dataset, False, device, rank, world)
    assert isinstance(loader.sampler, ShardSampler)
    out["shard"] = list(loader.sampler)
    result = evaluate(_TableModel(), _TableDecoder(payload["table"]), loader, dataset, device)
    out["stats"] = result.stats
    if rank == 0:
        out["results"], out["per_class"] = result.results, result.per_class
    torch.save(out, os.path.join(out_dir, f"proof{rank}.pt"))
    distributed.cleanup()


def _loss_inputs(name: str):
    """A tiny seeded model's outputs on a seeded random 2-image batch, 1 box in image 0 and 3 in
    image 1; and the loss of the whole batch in this process (world size 1)."""
    from config import load_config

    cfg = load_config(f"{name}/config.py", TINY)
    if name == "retinanet":
        assert cfg.loss_normalizer == "batch"
    torch.manual_seed(0)
    model = cfg.resolve().build_model(3).eval()
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = model(images)
    targets = torch.full((2, 3, 5), -1.0)
    targets[0, :1] = torch.tensor([[20.0, 30.0, 90.0, 100.0, 1]])
    targets[1] = torch.tensor([[10.0, 10.0, 50.0, 60.0, 0], [60.0, 20.0, 120.0, 110.0, 2], [30.0, 70.0, 70.0, 122.0, 1]])
    whole = {k: v.item() for k, v in cfg.build_loss()(outputs, targets).items()}
    return (outputs, targets), whole


def _detection_table(images: str, annotations: str):
    """Fixed detections per image (bench's perturbed ground truth, in input pixels), keyed by the
    normalised image; and one process's ``evaluate`` of all of them."""
    import json

    from bench.eval_backends import perturbed_detections
    from public.data.loaders import build_loader
    from public.data.prefetcher import Prefetcher
    from public.engine.evaluate.evaluator import evaluate

    cfg, dataset = _eval_dataset(images, annotations)
    device = torch.device("cpu")
    loader = build_loader(cfg, dataset, False, device)
    by_image = {}
    for r in perturbed_detections(json.loads(open(annotations).read()), seed=3):
        by_image.setdefault(r["image_id"], []).append(r)
    table = {}
    for batch in Prefetcher(loader, device):
        for image, (h, w), image_id, (sx, sy) in zip(batch.images, batch.image_sizes.tolist(),
                                                    batch.image_ids.tolist(), batch.scales.tolist()):
            dets = by_image.get(image_id, [])
            xywh = torch.tensor([d["bbox"] for d in dets], dtype=torch.float32).reshape(-1, 4)
            boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1) * torch.tensor([sx, sy, sx, sy])
            table[_image_key(image[:, :h, :w])] = {
                "boxes": boxes, "scores": torch.tensor([d["score"] for d in dets], dtype=torch.float32),
                "labels": torch.tensor([dataset.cat_id_to_label[d["category_id"]] for d in dets], dtype=torch.int64)}
    assert len(table) == len(dataset)
    return table, evaluate(_TableModel(), _TableDecoder(table), loader, dataset, device)


@pytest.fixture(scope="module")
def two_process_world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp_proof")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)             # a shared 2-core machine: a second thread makes CPU convs far slower
    try:
        losses, whole = {}, {}
        for name in LOSS_MODELS:
            losses[name], whole[name] = _loss_inputs(name)
        eval_data = demo_subset(tmp, 5, "val")             # odd: shards of 3 and 2 images
        table, single = _detection_table(*eval_data)
    finally:
        torch.set_num_threads(threads)
    torch.save({"losses": losses, "eval_data": eval_data, "table": table}, tmp / "payload.pt")
    mp.spawn(_proof_worker, args=(2, _free_port(), str(tmp / "payload.pt"), str(tmp)), nprocs=2, join=True)
    ranks = [torch.load(tmp / f"proof{r}.pt", weights_only=False) for r in (0, 1)]
    return {"ranks": ranks, "whole": whole, "single": single}


@pytest.mark.slow
def test_all_reduce_mean_of_different_tensors_on_two_processes(two_process_world):
    from public.engine.distributed import all_reduce_mean

    expected = torch.tensor([[2.0, 2.0], [-2.0, 0.375]])
    for rank in two_process_world["ranks"]:
        assert torch.equal(rank["mean"], expected), rank["mean"]
        assert rank["input_unchanged"]
        assert rank["scalar_mean"].item() == 2.5
    alone = torch.tensor([3.0, -1.0])
    assert torch.equal(all_reduce_mean(alone), alone)      # a single process: the identity


@pytest.mark.slow
@pytest.mark.parametrize("name", LOSS_MODELS)
def test_loss_normalisers_two_processes_average_to_the_whole_batch(two_process_world, name):
    per_rank = [rank["losses"][name] for rank in two_process_world["ranks"]]
    whole = two_process_world["whole"][name]
    assert set(whole) == set(per_rank[0]) == set(per_rank[1])
    assert per_rank[0] != per_rank[1]
    for key, value in whole.items():
        assert value > 0, key
        mean = (per_rank[0][key] + per_rank[1][key]) / 2
        assert mean == pytest.approx(value, rel=1e-5, abs=1e-7), (key, per_rank, whole)


@pytest.mark.slow
def test_sharded_evaluation_equals_single_process(two_process_world):
    r0, r1 = two_process_world["ranks"]
    single = two_process_world["single"]
    assert r0["shard"] == [0, 2, 4] and r1["shard"] == [1, 3]
    assert 0 < single.stats[0] < 1 and 0 < single.stats[1] < 1      # not a trivial all-0 or all-1 case
    assert r0["stats"] == single.stats and r1["stats"] == single.stats
    key = lambda r: (r["image_id"], -r["score"], r["category_id"], r["bbox"])
    assert sorted(r0["results"], key=key) == sorted(single.results, key=key)
    assert len(r0["results"]) == single.num_detections > 0
    assert r0["per_class"] == single.per_class
