"""A run that cannot go bad silently: the spike guard, the collapse watch, the EMA of the
weights, each against numbers written out here, and a real train() with a forced spike and
a forced collapse."""
import json
import logging
import math
from collections import deque

import pytest
import torch
from torch import nn

from config import load_config
from public.data.demo import generate_demo_data
from public.engine.evaluate.evaluator import EvalResult
from public.engine.train import loop
from public.engine.train.ema import ModelEMA
from public.engine.train.optim import LRScheduler, build_optimizer
from public.engine.train.stability import MIN_STEPS, CollapseWatch, SpikeError, SpikeGuard

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---- the spike guard -------------------------------------------------------------------------
def steady(guard: SpikeGuard, n: int = MIN_STEPS, value: float = 1.0) -> None:
    for i in range(n):
        assert guard.check({"loss_cls": value * 0.6 + 0.01 * (i % 3), "loss_box": value * 0.4}, i + 1, 1)


def test_spike_is_judged_against_the_running_median(caplog):
    """The median of 20 losses 1.00/1.01/1.02 is 1.01: 10 x that is the line. A loss just under
    it passes, one over it is a spike, logged with the iteration, the loss parts and the advice,
    and (on_spike=skip) the step is skipped and left out of the median."""
    guard = SpikeGuard("skip", 10.0)
    steady(guard)
    assert guard.median() == pytest.approx(1.01)
    assert guard.check({"loss_cls": 10.0, "loss_box": 0.09}, 21, 2)          # 10.09 < 10.1: no spike
    with caplog.at_level(logging.WARNING, logger="densedet"):
        assert not guard.check({"loss_cls": 9.0, "loss_box": 1.2}, 22, 2, [5, 9])  # 10.2 > 10.1
    line = caplog.records[-1].getMessage()
    assert "loss spike at iteration 22 (epoch 2)" in line and "loss_cls 9" in line and "loss_box 1.2" in line
    assert "image ids [5, 9]" in line and "step skipped" in line and "clip_grad_norm" in line
    assert len(guard.recent) == 21 and guard.spikes == 1                    # the spike stays out of the median
    # too few steps to judge: no finite loss is a spike yet
    early = SpikeGuard("skip", 10.0)
    assert early.check({"loss": 1.0}, 1, 1) and early.check({"loss": 1000.0}, 2, 1)


def test_spike_actions():
    warn = SpikeGuard("warn", 5.0)
    steady(warn)
    assert warn.check({"loss": 50.0}, 21, 1) and warn.spikes == 1          # updates anyway
    with pytest.raises(SpikeError, match="non-finite loss nan"):
        warn.check({"loss": math.nan}, 22, 1)                                # cannot apply a NaN step
    stop = SpikeGuard("stop", 5.0)
    steady(stop)
    with pytest.raises(SpikeError, match="iteration 21 .*on_spike=stop.*resume=auto"):
        stop.check({"loss": 50.0}, 21, 1)
    skip = SpikeGuard("skip", 5.0)
    steady(skip)
    assert not skip.check({"loss": math.inf}, 21, 1)                         # skipped, the run goes on
    for i in range(9):
        assert not skip.check({"loss": 50.0}, 22 + i, 1)                     # 10 in a row: still skipped
    with pytest.raises(SpikeError, match="11 loss spikes in a row.*diverged"):
        skip.check({"loss": 50.0}, 31, 1)


def test_climbing_epoch_loss_is_reported():
    """A loss part whose epoch mean is over 2 x its lowest earlier epoch mean is reported at the
    epoch's end: loss_cls of a run that ended with no detections (epoch means 0.865, 0.411,
    0.775, 2.044, 4.434) from epoch 4 (2.044 / 0.411 = 5.0), not at epoch 3 (1.9 x); a run that
    fell and rose within 1.6 x never. The lowest values and the count survive a state round trip."""
    guard = SpikeGuard("skip", 10.0)
    bad = [0.865, 0.411, 0.775, 2.044, 4.434, 1.281]
    said = [guard.epoch_ended(e + 1, {"loss_cls": v, "loss_box": 0.7 - 0.05 * e, "lr": 1.0}) for e, v in enumerate(bad)]
    assert said[:3] == [None, None, None] and all(said[3:])
    assert "loss_cls 2.044 = 5.0 x its lowest (0.411 at epoch 2)" in said[3] and "loss_box" not in said[3]
    assert "loss_cls 1.281 = 3.1 x" in said[5] and guard.rises == 3
    again = SpikeGuard("skip", 10.0)
    again.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    assert again.lowest["loss_cls"] == [0.411, 2] and again.lowest["loss_box"] == [pytest.approx(0.45), 6]
    assert again.rises == 3
    assert again.epoch_ended(7, {"loss_cls": 0.823}) is not None and again.epoch_ended(8, {"loss_cls": 0.821}) is None
    healthy = SpikeGuard("skip", 10.0)
    assert all(healthy.epoch_ended(e + 1, {"loss_cls": v}) is None
               for e, v in enumerate([0.89, 0.507, 0.483, 0.76, 0.736, 0.471, 0.349]))


def test_running_median_is_of_the_last_100_steps():
    """The median of the last WINDOW = 100 accepted losses: after 60 x 2.0 then 50 x 1.0 the
    window holds 50 of each, median (1 + 2) / 2 = 1.5 (101 steps would give 2.0). Odd and even
    counts by hand: [1, 2, 10] -> 2, [1, 2, 3, 10] -> 2.5. A loss of exactly factor x the median
    is no spike (the line is "over"). The default guard skips at 10 x."""
    guard = SpikeGuard("skip", 10.0)
    for i, value in enumerate([2.0] * 60 + [1.0] * 50):
        assert guard.check({"loss": value}, i + 1, 1)
    assert len(guard.recent) == 100 and guard.median() == 1.5
    for values, median in (([1.0, 2.0, 10.0], 2.0), ([1.0, 2.0, 3.0, 10.0], 2.5)):
        guard.recent = deque(values)
        assert guard.median() == median
    exact = SpikeGuard("skip", 10.0)
    steady_ones = [exact.check({"loss": 1.0}, i + 1, 1) for i in range(MIN_STEPS)]
    assert all(steady_ones) and exact.check({"loss": 10.0}, 21, 1) and not exact.check({"loss": 10.01}, 22, 1)
    default = SpikeGuard()
    for i in range(MIN_STEPS):
        default.check({"loss": 1.0}, i + 1, 1)
    assert default.action == "skip" and not default.check({"loss": 10.01}, 21, 1)
    with pytest.raises(ValueError, match="on_spike='skp' must be 'skip', 'warn' or 'stop'"):
        SpikeGuard("skp")


def test_spikes_in_a_row_count_from_the_last_normal_step():
    """on_spike=skip stops at the 11th spike in a row, counting from the run's start (NaN from
    the first step) or from the last normal step; a normal step between spikes restarts the count."""
    fresh = SpikeGuard("skip", 10.0)
    for i in range(10):
        assert not fresh.check({"loss": math.nan}, i + 1, 1)
    with pytest.raises(SpikeError, match="11 loss spikes in a row"):
        fresh.check({"loss": math.nan}, 11, 1)
    broken = SpikeGuard("skip", 10.0)
    steady(broken)
    for i in range(8):
        assert not broken.check({"loss": 50.0}, 21 + i, 1)
    assert broken.check({"loss": 1.0}, 29, 1)                                 # normal again
    for i in range(10):
        assert not broken.check({"loss": 50.0}, 30 + i, 1)
    assert broken.spikes == 18 and broken.in_a_row == 10


def test_warned_spike_enters_the_median():
    """on_spike=warn applies the step, and its loss joins the running median (it is the run's
    loss now); on_spike=skip leaves it out."""
    warn = SpikeGuard("warn", 5.0)
    steady(warn)
    assert warn.check({"loss": 50.0}, 21, 1) and len(warn.recent) == 21 and warn.recent[-1] == 50.0


def test_only_finite_loss_parts_are_judged_for_climbing():
    """epoch_ended judges the loss parts ("loss_*"), not the total or other keys, and skips a
    non-finite epoch mean (it never becomes the lowest); a part whose lowest was 0 (no positives
    that epoch) cannot climb by a factor of it."""
    guard = SpikeGuard("skip", 10.0)
    assert guard.epoch_ended(1, {"loss_cls": math.nan, "loss": 1.0, "loss_box": 0.0}) is None
    assert guard.epoch_ended(2, {"loss_cls": 1.0, "loss": 9.0, "loss_box": 0.5}) is None
    said = guard.epoch_ended(3, {"loss_cls": 3.0, "loss": 3.0, "loss_box": 0.5})
    assert said.startswith("the training loss is climbing: loss_cls 3 = 3.0 x its lowest (1 at epoch 2);")
    assert guard.lowest == {"loss_cls": [1.0, 2], "loss_box": [0.0, 1]} and guard.rises == 1
    double = SpikeGuard("skip", 10.0)                 # exactly 2 x is not over 2 x
    assert double.epoch_ended(1, {"loss_cls": 0.5}) is None and double.epoch_ended(2, {"loss_cls": 1.0}) is None
    tie = SpikeGuard("skip", 10.0)                  # a tie keeps the first epoch as the lowest
    tie.epoch_ended(1, {"loss_cls": 1.0}), tie.epoch_ended(2, {"loss_cls": 1.0})
    assert "(1 at epoch 1)" in tie.epoch_ended(3, {"loss_cls": 2.5})


def test_spike_guard_state_of_an_older_checkpoint_and_a_full_window():
    """A state without counts (an older latest.pth) resumes from zero spikes and rises; a
    resumed window still holds the last 100 steps."""
    guard = SpikeGuard("skip", 10.0)
    guard.load_state_dict({"recent": [1.0] * 100})
    assert (guard.spikes, guard.rises, guard.lowest) == (0, 0, {})
    assert guard.check({"loss": 2.0}, 101, 2) and len(guard.recent) == 100 and guard.recent[-1] == 2.0


def test_spike_guard_state_round_trips():
    guard = SpikeGuard("skip", 10.0)
    steady(guard, 30)
    guard.check({"loss": 1e6}, 31, 1)
    again = SpikeGuard("skip", 10.0)
    again.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    assert list(again.recent) == list(guard.recent) and again.spikes == 1
    assert again.is_spike(10.2) and not again.is_spike(10.0)


def test_skipped_step_leaves_the_weights_and_advances_the_schedule(monkeypatch):
    """train_one_epoch with a loss that spikes at its 24th step: the weights after that step are
    those before it, every other step changes them, and the schedule counted every step."""
    cfg = load_config("fcos/config_demo.py", ["log_interval=1", "warmup_iters=0", "on_spike=skip",
                                              "clip_grad_norm=0"]).resolve()
    model = nn.Conv2d(3, 1, 1)
    snapshots = []

    def loss_fn(outputs, targets):
        snapshots.append(model.weight.detach().clone())
        loss = outputs.float().mean() ** 2 + 1.0
        return {"loss_cls": loss * (1000.0 if len(snapshots) == 24 else 1.0)}

    class Batch:
        def __init__(self):
            self.images = torch.rand(1, 3, 8, 8)
            self.targets = torch.zeros(1, 0, 5)
            self.image_ids = torch.tensor([1])

    optimizer = build_optimizer(cfg, model)
    scheduler = LRScheduler(optimizer, cfg, 30)
    torch.manual_seed(0)
    batches = [Batch() for _ in range(30)]
    monkeypatch.setattr(loop, "Prefetcher", lambda loader, device, channels_last: loader)  # batches ready-made
    losses = loop.train_one_epoch(model, loss_fn, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False),
                                  batches, torch.device("cpu"), 0, cfg, None)
    snapshots.append(model.weight.detach().clone())
    moved = [not torch.equal(a, b) for a, b in zip(snapshots, snapshots[1:])]
    assert moved[23] is False and all(moved[:23]) and all(moved[24:])
    assert scheduler.iteration == 30
    assert losses["loss_cls"] < 2.0                                          # the epoch's mean leaves it out


# ---- the collapse watch ----------------------------------------------------------------------
def test_collapse_watch_reference_is_the_best_map_before():
    """Each evaluation is judged against the earlier evaluation of best mAP (not of most
    detections, not the latest), "under half" is strictly under 0.5 x, and the collapse line
    names the last earlier evaluation that had detections. No evaluation: said so, no fall back."""
    watch = CollapseWatch([(1, 0.5, 50), (2, 0.3, 400)])
    assert "under half the best (0.5000 at epoch 1)" in watch.evaluated(3, 0.2, 30, 0.05)
    assert CollapseWatch([(1, 0.5, 9)]).evaluated(2, 0.25, 9, 0.05) is None          # exactly half
    steps = CollapseWatch([(1, 0.1, 5), (2, 0.2, 7), (3, 0.3, 9)])
    assert "at epoch 4 (9 at epoch 3)" in steps.evaluated(4, 0.0, 0, 0.05)
    one = CollapseWatch([(1, 0.1, 1)])
    assert "the classifier collapsed: no detection above score_thresh=0.05 at epoch 2 (1 at epoch 1)" in \
        one.evaluated(2, 0.0, 0, 0.05)
    assert CollapseWatch([(1, 0.0, 0)]).evaluated(2, 0.0, 0, 0.05) is None         # never had any
    assert CollapseWatch().summary() == ("no evaluation", False)
    # the end-of-run line: "collapsed" needs detections at the best epoch (best.pth's) and none at the end
    collapsed, fell = CollapseWatch([(1, 0.5, 1), (2, 0.3, 0)]).summary(0.5, 1)
    assert fell and "the classifier collapsed (no detections at the end)" in collapsed
    assert CollapseWatch([(1, 0.0, 0), (2, 0.0, 0)]).summary(0.0, 1) == ("best mAP 0.0000 at epoch 1, last 0.0000 "
                                                                         "at epoch 2", False)


def test_collapse_is_reported_at_the_evaluation_and_at_the_end():
    watch = CollapseWatch()
    assert watch.evaluated(3, 0.0006, 12, 0.05) is None
    assert watch.evaluated(6, 0.0172, 300, 0.05) is None
    warning = watch.evaluated(9, 0.0, 0, 0.05)
    assert "no detection above score_thresh=0.05 at epoch 9 (300 at epoch 6)" in warning
    assert "best.pth keeps epoch 6" in warning
    summary, fell_back = watch.summary()
    assert fell_back and summary.startswith("best mAP 0.0172 at epoch 6, last 0.0000 at epoch 9: the classifier "
                                            "collapsed")
    # under half the best, but with detections
    watch = CollapseWatch([(3, 0.017, 500)])
    assert "under half the best (0.0170 at epoch 3)" in watch.evaluated(6, 0.0084, 400, 0.05)
    assert watch.evaluated(6, 0.0086, 400, 0.05) is None                     # redone (resume): replaces epoch 6
    # a redone evaluation is judged against the epochs before it, not against its first try
    redone = CollapseWatch([(3, 0.5, 10), (6, 0.9, 10)])
    assert "under half the best (0.5000 at epoch 3)" in redone.evaluated(6, 0.2, 10, 0.05)
    assert redone.history == [(3, 0.5, 10), (6, 0.2, 10)]
    assert watch.summary() == ("best mAP 0.0170 at epoch 3, last 0.0086 at epoch 6: the run fell back after its "
                               "best epoch (best.pth keeps it); " + loop_advice(), True)
    # 0.8 x the best is the end-of-run line's threshold
    assert CollapseWatch([(1, 0.5, 9), (2, 0.4, 9)]).summary() == ("best mAP 0.5000 at epoch 1, last 0.4000 at "
                                                                    "epoch 2", False)
    assert CollapseWatch([(1, 0.5, 9), (2, 0.39, 9)]).summary()[1] is True
    assert CollapseWatch([(1, 0.1, 9), (2, 0.3, 9)]).summary() == ("best mAP 0.3000 at epoch 2 (the last "
                                                                    "evaluation)", False)


def loop_advice() -> str:
    from public.engine.train.stability import ADVICE
    return ADVICE


# ---- EMA ---------------------------------------------------------------------------------------
def test_ema_decay_is_checked_and_a_resumed_average_goes_on():
    """ema must lie strictly between 0 and 1 (0 would not average, 1 would never move); a
    resumed average (``load``: latest.pth's averaged weights and update count) continues with
    the decay of the next update, as the uninterrupted run's would."""
    model = nn.Linear(2, 1)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=f"ema={bad!r} must be between 0 and 1"):
            ModelEMA(model, bad, 2)
    ema = ModelEMA(model, 0.9, 2)
    saved = {k: torch.full_like(v, 3.0) for k, v in model.state_dict().items()}
    ema.load(saved, {"updates": 7, "decay": 0.9, "tau": 2})
    assert ema.updates == 7 and all(torch.equal(v, saved[k]) for k, v in ema.module.state_dict().items())
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    d = 0.9 * (1 - math.exp(-8 / 2))
    assert ema.updates == 8 and torch.allclose(ema.module.weight, torch.full((1, 2), d * 3 + (1 - d) * 1.0))


def test_ema_equals_the_average_by_hand():
    """Three SGD steps of a conv + BatchNorm; after each, by hand in float64:
    d_t = decay (1 - exp(-t / tau)), ema = d_t ema + (1 - d_t) w for weights and BN statistics,
    the BN batch count copied."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    ema = ModelEMA(model, decay=0.9, tau=2)
    hand = {k: v.double().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for t in (1, 2, 3):
        (model(torch.rand(2, 3, 8, 8)) - torch.rand(2, 4, 6, 6)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update(model)
        d = 0.9 * (1 - math.exp(-t / 2))
        for key, value in model.state_dict().items():
            hand[key] = value.double().clone() if key.endswith("num_batches_tracked") else \
                d * hand[key] + (1 - d) * value.double()
    assert ema.updates == 3
    for key, value in ema.module.state_dict().items():
        assert torch.allclose(value.double(), hand[key], rtol=0, atol=1e-6), key
        if not key.endswith("num_batches_tracked"):
            assert not torch.allclose(value, model.state_dict()[key])         # really an average
    assert int(ema.module.state_dict()["2.num_batches_tracked"]) == 3
    assert not any(p.requires_grad for p in ema.module.parameters())



@pytest.mark.parametrize("scaled", [False, True], ids=["bf16_autocast", "bf16_autocast_grad_scaler"])
def test_ema_under_mixed_precision_averages_the_float32_weights(monkeypatch, scaled):
    """train_one_epoch with autocast (bfloat16, what amp=True runs on a CPU) and EMA on: the EMA is
    the float64 hand average of the float32 weights after each step, and stays float32. With a
    loss scale (the float16 path on GPUs) the average is of the unscaled weights."""
    cfg = load_config("fcos/config_demo.py", ["log_interval=1", "warmup_iters=0", "clip_grad_norm=0"]).resolve()
    torch.manual_seed(0)
    model = nn.Conv2d(3, 2, 3)
    ema = ModelEMA(model, decay=0.8, tau=1.5)
    hand = {k: v.double().clone() for k, v in model.state_dict().items()}
    seen = []

    def loss_fn(outputs, targets):
        assert outputs.dtype == torch.bfloat16                                # autocast was on
        if seen:                                                              # the weights after the last step
            fold(len(seen))
        seen.append(1)
        return {"loss_cls": outputs.float().square().mean()}

    def fold(t):
        d = 0.8 * (1 - math.exp(-t / 1.5))
        for key, value in model.state_dict().items():
            hand[key] = d * hand[key] + (1 - d) * value.double()

    class Batch:
        def __init__(self):
            self.images = torch.rand(2, 3, 8, 8)
            self.targets = torch.zeros(2, 0, 5)
            self.image_ids = torch.tensor([1, 2])

    optimizer = build_optimizer(cfg, model)
    scheduler = LRScheduler(optimizer, cfg, 5)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=scaled)
    monkeypatch.setattr(loop, "Prefetcher", lambda loader, device, channels_last: loader)
    loop.train_one_epoch(model, loss_fn, optimizer, scheduler, scaler, [Batch() for _ in range(5)],
                         torch.device("cpu"), 0, cfg, torch.bfloat16, ema=ema)
    fold(5)
    assert ema.updates == 5
    for key, value in ema.module.state_dict().items():
        assert value.dtype == torch.float32, key
        assert torch.allclose(value.double(), hand[key], rtol=0, atol=1e-6), key
        assert not torch.allclose(value, model.state_dict()[key])

# ---- a real train(): forced spike, forced collapse, EMA saved as the model -------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stability_data")
    generate_demo_data(root, 8, 2, seed=11)
    return [f"train_images={root / 'train'}", f"train_annotations={root / 'annotations' / 'instances_train.json'}",
            f"val_images={root / 'val'}", f"val_annotations={root / 'annotations' / 'instances_val.json'}"]


@pytest.mark.slow
def test_forced_spike_and_collapse_are_reported(data, tmp_path, monkeypatch):
    """8 images at batch 1 for 3 epochs (24 steps) with EMA on; the loss of step 23 is multiplied
    by 1000, the other steps of epoch 3 by 4 (a climb, no spike), and the evaluations return mAP
    0.30, 0.40, then nothing. The log names the spike's iteration, the climb of epoch 3, the
    collapse at epoch 3, and ends "best mAP 0.4000 at epoch 2, last 0.0000 at epoch 3: the
    classifier collapsed"; best.pth holds the EMA weights of epoch 2 and
    latest.pth the EMA weights as its model, the raw ones for resume."""
    work_dir = tmp_path / "run"
    cfg = load_config("fcos/config_demo.py", data + [
        "backbone=resnet18", "fpn_channels=64", "num_convs=1", "min_size=(128,)", "max_size=128", "test_min_size=64",
        "batch_size=1", "epochs=3", "eval_interval=1", "num_workers=0", "flops=False", "log_interval=1",
        "check_images=off", "ema=0.99", f"work_dir={work_dir}", "aspect_ratio_grouping=False"])
    original_loss = cfg.build_loss
    calls = []

    def spiking_loss():
        loss_fn = original_loss()

        def forced(outputs, targets):
            calls.append(1)
            losses = loss_fn(outputs, targets)
            factor = 1000.0 if len(calls) == 23 else 4.0 if len(calls) > 16 else 1.0
            return {k: v * factor for k, v in losses.items()}
        return forced

    monkeypatch.setattr(cfg, "build_loss", spiking_loss)
    stats = iter([0.30, 0.40, 0.0])
    saved = {}

    def fake_evaluate(model, *args, **kwargs):
        value = next(stats)
        saved[len(saved) + 1] = {k: v.clone() for k, v in model.state_dict().items()}
        return EvalResult(stats=[value] + [0.0] * 11, num_detections=0 if value == 0 else 50)

    monkeypatch.setattr(loop, "evaluate", fake_evaluate)
    assert loop.train(cfg) == pytest.approx(0.40)
    log = (work_dir / "train.log").read_text()
    assert "loss spike at iteration 23 (epoch 3)" in log and "step skipped (on_spike=skip)" in log
    assert "epoch 3: the classifier collapsed: no detection above score_thresh=0.05 at epoch 3 (50 at epoch 2)" in log
    assert ("done: best mAP 0.4000 at epoch 2, last 0.0000 at epoch 3: the classifier collapsed (no detections at "
            "the end)") in log and "1 loss spike(s)" in log
    assert "epoch 3: the training loss is climbing: loss_cls" in log and "climbed in 1 epoch(s)" in log
    assert "epoch 2: the training loss" not in log
    best = torch.load(work_dir / "best.pth", weights_only=True)
    latest = torch.load(work_dir / "latest.pth", weights_only=True)
    assert best["epoch"] == 2 and all(torch.equal(best["model"][k], saved[2][k]) for k in saved[2])
    assert all(torch.equal(latest["model"][k], saved[3][k]) for k in saved[3])     # evaluated = saved model
    assert latest["ema"]["updates"] == 23                                            # 24 steps, one skipped
    assert any(not torch.equal(latest["train_model"][k], latest["model"][k]) for k in latest["model"])
    assert latest["spikes"]["spikes"] == 1 and [e[0] for e in latest["evaluations"]] == [1, 2]  # before epoch 3's


@pytest.mark.parametrize("keys, clip, line", [
    (["pretrained=False"], 35.0, "gradient clipping at norm 35 (clip_grad_norm=auto: from random init"),
    (["pretrained=True"], 0.0, "gradient clipping at norm 0 (clip_grad_norm=auto: trained weights"),
    (["pretrained=False", "clip_grad_norm=10"], 10.0, None),
])
def test_clip_grad_norm_auto_is_resolved_and_printed(keys, clip, line):
    """clip_grad_norm=auto: 35 from random init, 0 with trained weights; an explicit value wins and
    is not announced; ema_tau=auto is 2000 capped at a quarter of the run."""
    from public.engine.train.resolve import resolve

    cfg = load_config("fcos/config.py", keys + ["ema=0.999"])
    resolution = resolve(cfg, 100, 1)                     # 6 iterations an epoch, 12 epochs: 72
    assert resolution.values["clip_grad_norm"] == clip
    assert resolution.values["ema_tau"] == 18
    announced = [text for text in resolution.lines if text.startswith("gradient clipping")]
    assert (len(announced) == 1 and announced[0].startswith(line)) if line else announced == []
    assert any("EMA of the weights: decay 0.999 x (1 - exp(-updates / 18))" in text for text in resolution.lines)
    # 0.999 averages over ~1000 of the run's 72 iterations: a warning with a decay for a tenth of the run
    assert [w for w in resolution.warnings if w.startswith("ema=")] == [
        "ema=0.999 averages over ~1000 iterations, more than a quarter of this run's 72: the average lags the model "
        "it follows (12 epochs on the tree crowns: ema=0.999 scored 0.098 mAP against 0.112 without); ema=0.86 "
        "averages over a tenth of the run"]
    for decay, epochs, warned in ((0.9, 7, False), (0.9, 6, True), (0.98, 34, False), (0.98, 33, True)):
        # horizon 10 / 50 iterations against runs of 42 / 36 / 204 / 198 (6 an epoch)
        cfg = load_config("fcos/config.py", keys + [f"ema={decay}", f"epochs={epochs}"])
        assert any(w.startswith("ema=") for w in resolve(cfg, 100, 1).warnings) is warned, (decay, epochs)
