"""Proof of the training engine: the optimizer it builds, the update one step of the real
trainer makes, the epoch order of its sampler, the choice of best.pth and that it learns.

Every expected number here is computed in the test from first principles (the parameter's
module and name, the update rules of SGD with momentum and AdamW written out, the warmup and
cosine formulas, torch.randperm seeded with seed + epoch) or scripted by the test; nothing is
the engine's output compared with itself. Each test names the wrong changes it catches.
"""
from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import public.engine.train.loop as loop
from config import load_config
from public.data.demo import generate_demo_data
from public.data.loaders import build_dataset, build_loader
from public.data.prefetcher import normalize
from public.data.seeding import sample_seed, seeded
from public.engine.evaluate.evaluator import EvalResult
from public.engine.train.optim import LRScheduler, build_optimizer
from public.engine.train.resolve import resolve_for_run
from public.models.head import Scale

CPU = torch.device("cpu")
TINY_MODEL = ["backbone=resnet18", "pretrained=False", "fpn_channels=32", "num_convs=1"]


# tests/conftest.py: one torch thread; train() writes results.csv but draws no results.png (1.4 s of
# CPU an epoch, 3/4 of test_trainer_overfits_eight_images's 40 epochs; the figure is tested in
# test_watch.py and test_cli.py, nothing here reads it)
pytestmark = pytest.mark.usefixtures("one_thread", "no_results_figure")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 training and 2 validation demo images (128-192 px), generated for this module."""
    root = tmp_path_factory.mktemp("proof_data")
    generate_demo_data(root, 8, 2, seed=5)
    return {"train_images": str(root / "train"),
            "train_annotations": str(root / "annotations" / "instances_train.json"),
            "val_images": str(root / "val"), "val_annotations": str(root / "annotations" / "instances_val.json")}


def data_keys(data: dict) -> list[str]:
    return [f"{key}={value}" for key, value in data.items()]


def run_keys(data: dict, work_dir: Path) -> list[str]:
    """A tiny, quick train() run: 64-80 px inputs, batch 4 (2 iterations an epoch), no workers,
    no FLOP count."""
    return data_keys(data) + TINY_MODEL + [
        "min_size=(64,80)", "max_size=112", "test_min_size=64", "batch_size=4", "num_workers=0", "flops=False",
        "log_interval=1", f"work_dir={work_dir}", "check_images=off"]


# ---- 1. the optimizer of every config ---------------------------------------------------------
NORMS = (nn.BatchNorm2d, nn.GroupNorm, FrozenBatchNorm2d, nn.LayerNorm, nn.SyncBatchNorm)
CONFIGS = {  # config file: (optimizer class, weight decay of the decayed group, biases' lr factor), as documented
    # the papers' code: biases at twice the lr (maskrcnn-benchmark's BIAS_LR_FACTOR, Detectron's BIAS_DOUBLE_LR)
    "fcos/config.py": (torch.optim.SGD, 1e-4, 2.0), "atss/config.py": (torch.optim.SGD, 1e-4, 2.0),
    "retinanet/config.py": (torch.optim.SGD, 1e-4, 2.0),
    "fcos/config_demo.py": (torch.optim.AdamW, 0.05, 1.0), "atss/config_demo.py": (torch.optim.AdamW, 0.05, 1.0),
    "retinanet/config_demo.py": (torch.optim.AdamW, 0.05, 1.0),
}


def parameter_kinds(model: nn.Module) -> dict[str, str]:
    """Every trainable parameter's kind from its module and attribute name (not its shape):
    "conv" (conv/linear weight), "bias", "norm" (BN/GN weight) or "scale" (a per-level Scale)."""
    kinds = {}
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            full = f"{module_name}.{name}" if module_name else name
            if isinstance(module, Scale):
                kinds[full] = "scale"
            elif name == "bias":
                kinds[full] = "bias"
            elif isinstance(module, NORMS):
                kinds[full] = "norm"
            elif name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear)):
                kinds[full] = "conv"
            else:
                raise AssertionError(f"parameter {full} of {type(module).__name__}: kind unknown to this test")
    return kinds


def group_names(model: nn.Module, optimizer) -> list[tuple[float, set[str]]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [(g["weight_decay"], {names[id(p)] for p in g["params"]}) for g in optimizer.param_groups]


@pytest.mark.parametrize("weight_decay_1d", [False, True])
@pytest.mark.parametrize("config_file", list(CONFIGS))
def test_optimizer_of_every_config(config_file, weight_decay_1d):
    """The optimizer built for each model's config, on that config's real model: SGD with
    momentum 0.9 (no Nesterov, no dampening) for the papers' configs, AdamW with betas (0.9,
    0.999) for the demo configs, lr the config's, biases' (conv and norm) at the config's
    bias_lr_factor x lr (the papers' 2, the demo's 1); conv weights decayed by the config's weight
    decay, and biases, BN/GN weights and the 0-d per-level Scales not decayed (all decayed with
    weight_decay_1d). The expected groups are the parameters' names sorted by module type,
    not by shape. Catches: SGD without momentum; ``ndim == 1`` (0-d Scales decayed); betas
    changed; the weight decay value ignored; a parameter missing from the optimizer; the bias lr
    factor dropped or given to norm weights."""
    optimizer_class, weight_decay, bias_factor = CONFIGS[config_file]
    cfg = load_config(config_file, TINY_MODEL + [f"weight_decay_1d={weight_decay_1d}"])
    model = cfg.resolve().build_model(5)
    optimizer = build_optimizer(cfg, model)
    kinds = parameter_kinds(model)
    present = set(kinds.values())
    assert {"conv", "bias", "norm"} <= present
    assert ("scale" in present) == (not config_file.startswith("retinanet"))      # FCOS, ATSS: 5 Scales
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())           # from scratch: BN trained
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())             # head towers

    assert type(optimizer) is optimizer_class
    lr_of, name_of = {}, {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for param in group["params"]:
            lr_of[name_of[id(param)]] = group["lr"]
    assert lr_of == {n: cfg.lr * (bias_factor if kind == "bias" else 1.0) for n, kind in kinds.items()}
    for group in optimizer.param_groups:
        if optimizer_class is torch.optim.SGD:
            assert (group["momentum"], group["dampening"], group["nesterov"]) == (0.9, 0, False)
        else:
            assert tuple(group["betas"]) == (0.9, 0.999) and group["eps"] == 1e-8
    decayed = {n for n, kind in kinds.items() if kind == "conv" or weight_decay_1d}
    groups = group_names(model, optimizer)
    got_decayed = set().union(*[names for wd, names in groups if wd > 0])
    got_plain = set().union(*[names for wd, names in groups if wd == 0])
    assert {wd for wd, names in groups if names} == ({weight_decay} if weight_decay_1d else {weight_decay, 0.0})
    assert got_decayed == decayed
    assert got_plain == set(kinds) - decayed
    assert sum(len(names) for _, names in groups) == len(kinds)                  # each exactly once
    if not weight_decay_1d:
        assert {n for n in got_plain if kinds[n] == "scale"} == {n for n, k in kinds.items() if k == "scale"}


def test_frozen_parameters_are_not_optimised():
    """With the paper's freezing (stem and stage 1, BatchNorm frozen) the frozen parameters are in
    no group and the trainable ones each in one: the stem conv is not moved by weight decay."""
    cfg = load_config("fcos/config.py", TINY_MODEL + ["frozen_stages=1", "freeze_bn=True"])
    model = cfg.resolve().build_model(5)
    groups = group_names(model, build_optimizer(cfg, model))
    in_groups = set().union(*[names for _, names in groups])
    frozen = {n for n, p in model.named_parameters() if n.split(".")[2] in ("conv1", "layer1")}
    assert frozen and all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)
    assert in_groups == set(parameter_kinds(model)) and not (in_groups & frozen)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.body.modules())


# ---- 2. one real step of the real trainer, by hand ---------------------------------------------
class Recording:
    """The first ``steps`` batches of a loader, kept as the trainer received them (on the CPU);
    with ``model``, also its state before each batch and after the last (when the trainer asks
    for a batch, the step of the previous one is done)."""

    def __init__(self, loader, steps: int | None = None, model: nn.Module | None = None):
        self.loader, self.steps, self.model, self.batches, self.states = loader, steps, model, [], []

    def __len__(self) -> int:
        return len(self.loader) if self.steps is None else self.steps

    def _snapshot(self) -> None:
        if self.model is not None:
            self.states.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if self.steps is not None and i == self.steps:
                break
            self._snapshot()
            self.batches.append(batch)
            yield batch
        self._snapshot()


STEP_CASES = {
    # name: (optimizer, lr in the config (at a batch of 16), clip_grad_norm, GradScaler's scale or None,
    #        bias_lr_factor)
    "sgd": ("sgd", 0.08, 0.0, None, 2.0),
    "adamw": ("adamw", 0.04, 0.0, None, 1.0),
    "sgd_clip_scaler": ("sgd", 0.08, 0.5, 256.0, 1.0),
    "sgd_scaler": ("sgd", 0.08, 0.0, 1024.0, 2.0),
}
STEP_DECAY = {"sgd": 0.01, "adamw": 0.05}


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_trainer_steps_equal_the_update_by_hand(data, case):
    """Two iterations of the real ``train_one_epoch`` (real loader, resolved settings,
    ``build_optimizer``, ``LRScheduler``, a GradScaler): each step k changes the weights as the
    update written out here does, from the same weights and batch, on a copy of the model:

    - lr = lr_config x batch / reference_batch (linear scaling), times the warmup factor
      wf (1 - a) + a with a = k / warmup_iters, times 0.5 (1 + cos(pi k / total)) for AdamW's
      cosine schedule (SGD: multistep, no step yet);
    - SGD: v = 0.9 v + g + wd p, p -= lr v, with wd 0 for biases, norm weights and Scales, and
      biases at bias_lr_factor x lr (2 in two cases);
    - AdamW: p *= 1 - lr wd, then Adam with betas (0.9, 0.999), eps 1e-8, bias corrections;
    - clipping: g *= c / (|g| + 1e-6) with |g| the total norm (> c here), on the unscaled
      gradients; an enabled GradScaler (its scale a power of 2) changes nothing.

    The velocity and moments are the hand's own, from the gradients of the copy at the
    trainer's weights of that step. Compared per tensor on the change of the weight, to 1e-5 of
    that change plus the float32 rounding of the weight, so that a lr off by a small factor or a
    decayed Scale cannot hide in the rounding; the Scales of levels without positives
    (gradient 0) must not move at all. Catches: momentum dropped, Scales decayed
    (``ndim == 1``), warmup start or formula wrong, lr scaling rule wrong, the weight decay value
    ignored, AdamW betas changed, clipping skipped, clipping before ``unscale_`` or ``unscale_``
    missing, the loss not scaled, the scheduler stepped twice or not at all."""
    optimizer_name, config_lr, clip, grad_scale, bias_factor = STEP_CASES[case]
    weight_decay = STEP_DECAY[optimizer_name]
    batch, reference, warmup_iters, warmup_factor, epochs, steps = 2, 16, 5, 0.25, 3, 2
    scheduler = "cosine" if optimizer_name == "adamw" else "multistep"
    cfg = load_config("fcos/config_demo.py", data_keys(data) + TINY_MODEL + [
        f"optimizer={optimizer_name}", f"scheduler={scheduler}", "lr_steps=(2,)", f"weight_decay={weight_decay}",
        f"clip_grad_norm={clip}", f"bias_lr_factor={bias_factor}", "min_size=(64,)", "max_size=96", f"batch_size={batch}", "num_workers=0",
        f"lr={config_lr}", "scale_lr=True", f"reference_batch={reference}", f"warmup_iters={warmup_iters}",
        f"warmup_factor={warmup_factor}", "warmup_max_fraction=1.0", f"epochs={epochs}", "log_interval=1",
        "check_images=off"])
    # The trainer's side, set up as train() sets it up.
    train_set = build_dataset(cfg, train=True)
    cfg, _ = resolve_for_run(cfg, len(train_set), 1, logging.getLogger("proof"))
    loader = build_loader(cfg, train_set, True, CPU)
    loader.batch_sampler.set_epoch(0)
    torch.manual_seed(0)
    model = cfg.resolve().build_model(train_set.num_classes)
    hand = copy.deepcopy(model)
    optimizer = build_optimizer(cfg, model)
    lr_scheduler = LRScheduler(optimizer, cfg, len(loader))
    scaler = (torch.amp.GradScaler("cpu", init_scale=grad_scale) if grad_scale
              else torch.amp.GradScaler("cpu", enabled=False))
    recording = Recording(loader, steps, model)
    loop.train_one_epoch(model, cfg.build_loss(), optimizer, lr_scheduler, scaler, recording, CPU, 0, cfg, None)
    assert len(recording.batches) == steps and len(recording.states) == steps + 1

    # By hand, on the copy: step k from the trainer's weights before step k, with its batch.
    kinds = parameter_kinds(hand)
    total_iters = len(train_set) // batch * epochs
    loss_fn = cfg.build_loss()
    hand.train()
    velocity, moment1, moment2 = {}, {}, {}
    compared, still = set(), set()
    for k, cpu_batch in enumerate(recording.batches):
        hand.load_state_dict(recording.states[k])
        losses = loss_fn(hand(normalize(cpu_batch.images, cpu_batch.image_sizes)), cpu_batch.targets)
        hand.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        grads = {n: p.grad for n, p in hand.named_parameters()}
        total_norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads.values()))
        if clip > 0:
            assert total_norm > 2 * clip                 # clipping is active in this case
            grads = {n: g * (clip / (total_norm + 1e-6)) for n, g in grads.items()}
        alpha = k / warmup_iters
        lr = config_lr * batch / reference * (warmup_factor * (1 - alpha) + alpha)
        if scheduler == "cosine":
            lr *= 0.5 * (1 + math.cos(math.pi * k / total_iters))
        with torch.no_grad():
            for name, param in hand.named_parameters():
                g = grads[name]
                wd = weight_decay if kinds[name] == "conv" else 0.0
                lr_p = lr * (bias_factor if kinds[name] == "bias" else 1.0)
                if optimizer_name == "sgd":
                    velocity[name] = 0.9 * velocity.get(name, 0) + g + wd * param
                    param -= lr_p * velocity[name]
                else:
                    t = k + 1
                    param *= 1 - lr_p * wd
                    moment1[name] = 0.9 * moment1.get(name, 0) + 0.1 * g
                    moment2[name] = 0.999 * moment2.get(name, 0) + 0.001 * g * g
                    m_hat = moment1[name] / (1 - 0.9 ** t)
                    v_hat = moment2[name] / (1 - 0.999 ** t)
                    param -= lr_p * m_hat / (v_hat.sqrt() + 1e-8)
        for name, param in hand.named_parameters():
            start, real = recording.states[k][name].double(), recording.states[k + 1][name].double()
            real_change, hand_change = real - start, param.detach().double() - start
            if float(hand_change.abs().max()) == 0:
                still.add(name)
                assert float(real_change.abs().max()) == 0, f"{case} step {k}: {name} moved, by hand it does not"
                continue
            compared.add(name)
            rounding = 2 * torch.finfo(torch.float32).eps * float(start.norm())
            error = float((real_change - hand_change).norm()) / (1e-4 * float(hand_change.norm()) + rounding)
            assert error < 1, f"{case} step {k}: {name} moved otherwise than by hand ({error:.3g} x the tolerance)"
    scales = {n for n, kind in kinds.items() if kind == "scale"}
    assert len(scales) == 5 and "head.scales.0.scale" in compared   # one Scale learns, in the comparison
    assert still <= scales and compared == set(kinds) - still         # every other parameter compared


# ---- 3. the sampler's epoch through train() ----------------------------------------------------
def recorded_run(monkeypatch, cfg) -> list[list]:
    """train(cfg) with every training batch recorded: per epoch, a list of batches."""
    original, epochs = loop.train_one_epoch, []

    def recording(model, loss_fn, optimizer, scheduler, scaler, loader, device, epoch, cfg, amp_dtype, on_log=None,
                  **keywords):
        rec = Recording(loader)
        epochs.append(rec.batches)
        return original(model, loss_fn, optimizer, scheduler, scaler, rec, device, epoch, cfg, amp_dtype, on_log,
                        **keywords)

    monkeypatch.setattr(loop, "train_one_epoch", recording)
    loop.train(cfg)
    return epochs


def image_of(batch, i: int) -> np.ndarray:
    """Image ``i`` of a collated batch without its padding, [H, W, 3] uint8."""
    h, w = batch.image_sizes[i].tolist()
    return batch.images[i, :, :h, :w].permute(1, 2, 0).numpy()


def batches_by_hand(order: list[int], portrait: list[bool], batch_size: int) -> list[list[int]]:
    """Aspect-ratio grouping as documented (GroupedBatchSampler, one process, drop_last): walk
    the permutation, each orientation fills its own batch, a batch is emitted when full; the
    leftovers of both, in the permutation's order, make the last (full) batches."""
    buckets, batches = {False: [], True: []}, []
    for index in order:
        bucket = buckets[portrait[index]]
        bucket.append(index)
        if len(bucket) == batch_size:
            batches.append(bucket[:])
            bucket.clear()
    rest = [index for index in order if index in buckets[False] or index in buckets[True]]
    return batches + [rest[j:j + batch_size] for j in range(0, len(rest) - batch_size + 1, batch_size)]


@pytest.mark.parametrize("grouping", [True, False])
def test_each_epoch_has_its_own_order_and_augmentation(data, tmp_path, monkeypatch, grouping):
    """A real train() of 2 epochs: epoch e's batches are the permutation
    ``torch.randperm(8, seed + e)`` cut in fours (without aspect-ratio grouping: DistributedSampler's
    rule) or grouped by orientation (read from the json) as written out in ``batches_by_hand``,
    and each image is augmented as the dataset augments it under the seed of (seed, e, index);
    the two epochs differ in order and in augmentation, and a second run with the same seed
    sees exactly the same images. Catches: ``set_epoch(0)`` (or no set_epoch) in the loop, an
    augmentation seed without the epoch."""
    seed = 11
    keys = ["epochs=2", "eval_interval=2", f"aspect_ratio_grouping={grouping}", f"seed={seed}", "hflip_prob=0.5"]
    cfg = load_config("fcos/config_demo.py", run_keys(data, tmp_path / "a") + keys)
    first = recorded_run(monkeypatch, cfg)
    assert len(first) == 2 and all(len(e) == 2 for e in first)
    rows = [json.loads(line) for line in (Path(cfg.work_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and "mAP" not in rows[0] and "mAP" in rows[1]  # a row per epoch
    assert rows[0]["loss"] > 0 and rows[0]["lr"] > 0 and rows[0]["time"] < rows[1]["time"]

    dataset = build_dataset(cfg, train=True)             # the training transforms
    images = json.loads(Path(cfg.train_annotations).read_text())["images"]
    sizes = {im["id"]: (im["height"], im["width"]) for im in images}
    portrait = [sizes[i][0] > sizes[i][1] for i in dataset.image_ids]
    assert 0 < sum(portrait) < 8                         # both orientations: grouping has work to do
    ids, regrouped = [[b.image_ids.tolist() for b in epoch] for epoch in first], []
    for epoch, batches in enumerate(first):
        order = torch.randperm(8, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        chunks = [order[j:j + 4] for j in range(0, 8, 4)]
        expected_batches = batches_by_hand(order, portrait, 4) if grouping else chunks
        regrouped.append(expected_batches != chunks)
        assert ids[epoch] == [[dataset.image_ids[i] for i in batch] for batch in expected_batches]
        flat = [(b, i) for b in batches for i in range(len(b))]
        for (batch, i), index in zip(flat, [index for batch in expected_batches for index in batch]):
            with seeded(sample_seed(seed, epoch, index)):
                expected = dataset[index]
            np.testing.assert_array_equal(image_of(batch, i), expected["image"])
            real = batch.targets[i][batch.targets[i][:, 4] >= 0]
            np.testing.assert_allclose(real[:, :4].numpy(), expected["boxes"], rtol=0, atol=1e-4)
    assert ids[0] != ids[1]
    # The same image looks different in the two epochs (scale or flip) for at least one image.
    views = [{int(b.image_ids[i]): image_of(b, i) for b in epoch for i in range(len(b))} for epoch in first]
    assert any(views[0][k].shape != views[1][k].shape or not np.array_equal(views[0][k], views[1][k])
               for k in views[0])
    if not grouping:
        return
    assert any(regrouped)                                 # the grouping rule reordered some epoch
    again = recorded_run(monkeypatch, load_config("fcos/config_demo.py", run_keys(data, tmp_path / "b") + keys))
    assert [[b.image_ids.tolist() for b in epoch] for epoch in again] == ids
    for epoch_a, epoch_b in zip(first, again):
        for a, b in zip(epoch_a, epoch_b):
            assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)


# ---- 4. best.pth on a run whose mAP rises then falls --------------------------------------------
MAP, AP50 = (0.2, 0.5, 0.3), (0.4, 0.45, 0.9)        # AP50 is best at epoch 3, mAP at epoch 2


def scripted_evaluation(monkeypatch, captured: list):
    """``evaluate`` replaced: the n-th call (over the runs of a test) returns mAP ``MAP[n]`` (the
    last once they run out) and AP50 ``AP50[n]``, and records the weights it was given."""
    def evaluate(model, *args, **kwargs):
        n = min(len(captured), len(MAP) - 1)
        captured.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return EvalResult(stats=[MAP[n], AP50[n]] + [0.1] * 10)
    monkeypatch.setattr(loop, "evaluate", evaluate)


def test_best_checkpoint_is_the_best_map_epoch(data, tmp_path, monkeypatch):
    """3 epochs evaluated after each, scripted mAP 0.2, 0.5, 0.3 (AP50 0.4, 0.45, 0.9): best.pth
    holds epoch 2 with exactly the weights evaluated after epoch 2, best_map 0.5; the log names
    epoch 2 when it is saved and at the end; train() returns 0.5. A resume of the finished run
    (which evaluates epoch 3 again) keeps naming epoch 2, from latest.pth, and from best.pth for
    a latest.pth written before it recorded the epoch. Catches: best chosen by AP50 (stats[1]),
    best.pth saved on every evaluation, the best epoch lost on resume."""
    work_dir = tmp_path / "run"
    keys = run_keys(data, work_dir) + ["epochs=3", "eval_interval=1", "min_size=(64,)"]
    captured = []
    scripted_evaluation(monkeypatch, captured)
    assert loop.train(load_config("fcos/config_demo.py", keys)) == 0.5
    assert len(captured) == 3
    best = torch.load(work_dir / "best.pth", weights_only=True)
    assert best["epoch"] == 2 and best["best_map"] == 0.5
    assert best["model"].keys() == captured[1].keys()
    assert all(torch.equal(best["model"][k], captured[1][k]) for k in captured[1])
    # The weights did change between evaluations, so the equality above picks out epoch 2.
    for other in (captured[0], captured[2]):
        assert any(not torch.equal(best["model"][k], other[k]) for k in other if other[k].is_floating_point())
    log = (work_dir / "train.log").read_text()
    assert "new best mAP 0.5000 at epoch 2:" in log and "new best mAP 0.2000 at epoch 1:" in log
    assert "new best mAP 0.3000" not in log and "new best mAP 0.9000" not in log
    assert "done: best mAP 0.5000 at epoch 2," in log
    latest = torch.load(work_dir / "latest.pth", weights_only=True)
    assert (latest["epoch"], latest["best_map"], latest["best_epoch"], latest["eval_pending"]) == (3, 0.5, 2, True)

    def resumed_done_line() -> str:
        loop.train(load_config("fcos/config_demo.py", keys + ["resume=auto"]))
        lines = [line for line in (work_dir / "train.log").read_text().splitlines() if "done: best mAP" in line]
        return lines[-1]

    assert "done: best mAP 0.5000 at epoch 2," in resumed_done_line()
    assert all(torch.equal(captured[3][k], captured[2][k]) for k in captured[2])   # epoch 3 evaluated again
    old = {k: v for k, v in latest.items() if k not in ("best_epoch", "evaluations", "spikes")}  # an older one
    torch.save(old, work_dir / "latest.pth")
    assert "done: best mAP 0.5000 at epoch 2," in resumed_done_line()
    torch.save(old, work_dir / "latest.pth")
    (work_dir / "best.pth").unlink()
    assert "done: best mAP 0.5000 at epoch None," in resumed_done_line()           # unknown, not made up


# ---- 5. the trainer learns -------------------------------------------------------------------
@pytest.mark.slow
def test_trainer_overfits_eight_images(data, tmp_path, monkeypatch):
    """The real train() (resolved settings, real loader, build_optimizer, AdamW lr 4e-3 with
    warmup and cosine, the real evaluation) on the 8 generated images, evaluated on the same
    images, reaches mAP >= 0.5 in 80 iterations (measured: ~0.6; a broken optimizer, schedule,
    loss or loader stays far below). No flips, so that the 8 images are memorised as they are
    scored; latest.pth is not written (130 MB with AdamW's moments, fsynced every epoch: half the
    run time here, and nothing the learning depends on)."""
    real_save = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint",
                        lambda state, path: None if Path(path).name == "latest.pth" else real_save(state, path))
    train_json = data["train_annotations"]
    keys = [f"train_images={data['train_images']}", f"train_annotations={train_json}",
            f"val_images={data['train_images']}", f"val_annotations={train_json}",
            "backbone=resnet18", "pretrained=False", "fpn_channels=32", "num_convs=1", "min_size=(96,)",
            "max_size=128", "test_min_size=96", "batch_size=4", "num_workers=0", "flops=False", "optimizer=adamw",
            "lr=4e-3", "scale_lr=False", "scheduler=cosine", "warmup_iters=10", "epochs=40", "eval_interval=40",
            "log_interval=50", "hflip_prob=0.0", f"work_dir={tmp_path / 'overfit'}", "check_images=off"]
    best = loop.train(load_config("fcos/config_demo.py", keys))
    assert best >= 0.5
    assert torch.load(tmp_path / "overfit" / "best.pth", weights_only=True)["epoch"] == 40


def test_two_dimensional_weights_are_decayed_like_conv_weights():
    """A linear layer's weight (2-D, as in a user's own head) is a weight: decayed, at the lr;
    its bias goes with the biases, a norm layer's weight with the undecayed 1-D parameters."""
    from public.engine.train.optim import parameter_groups

    cfg = load_config("fcos/config.py", ["weight_decay=0.0001", "weight_decay_1d=False"])
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2), nn.BatchNorm1d(2))
    model(torch.zeros(2, 3, 5, 5))
    weights, biases, others = parameter_groups(cfg, model)
    assert [p.shape for p in weights["params"]] == [(4, 3, 3, 3), (2, 36)] and weights["weight_decay"] == 0.0001
    assert [p.shape for p in biases["params"]] == [(4,), (2,), (2,)] and biases["weight_decay"] == 0.0
    assert [p.shape for p in others["params"]] == [(2,)] and others["weight_decay"] == 0.0
