"""Engine pieces: LR schedule numbers, atomic checkpoints, init_from a torchvision state dict,
the non-finite loss stop."""
import math

import pytest
import torch

from fcos.config_demo import Config as DemoConfig
from public.data.collate import Batch
from public.engine.runs.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from public.engine.train.optim import LRScheduler, Schedule, build_optimizer
from public.engine.train.loop import init_weights_from, train_one_epoch


def test_warmup_then_multistep():
    cfg = DemoConfig(lr=0.01, scheduler="multistep", lr_steps=(2, 3), lr_gamma=0.1, warmup_iters=10,
                     warmup_factor=0.001, epochs=4)
    model = torch.nn.Linear(2, 2)
    sched = LRScheduler(build_optimizer(cfg, model), cfg, iters_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(sched.get_lr())
        sched.step()
    assert lrs[0] == pytest.approx(0.01 * 0.001)
    assert lrs[5] == pytest.approx(0.01 * (0.001 * 0.5 + 0.5))       # halfway through warmup
    assert lrs[10] == pytest.approx(0.01) and lrs[19] == pytest.approx(0.01)
    assert lrs[20] == pytest.approx(0.001) and lrs[30] == pytest.approx(0.0001)
    # No weight decay on biases (1-D parameters).
    groups = sched.optimizer.param_groups
    assert groups[0]["weight_decay"] == cfg.weight_decay and groups[1]["weight_decay"] == 0.0
    assert groups[1]["params"][0] is model.bias


def test_cosine_and_plateau():
    cfg = DemoConfig(lr=1.0, scheduler="cosine", warmup_iters=0, epochs=2)
    sched = LRScheduler(build_optimizer(cfg, torch.nn.Linear(2, 2)), cfg, iters_per_epoch=5)
    for _ in range(5):
        sched.step()
    assert sched.get_lr() == pytest.approx(0.5)                        # half way: cos(pi/2)
    cfg = DemoConfig(lr=1.0, scheduler="plateau", warmup_iters=0, plateau_patience=1, lr_gamma=0.5)
    sched = LRScheduler(build_optimizer(cfg, torch.nn.Linear(2, 2)), cfg, iters_per_epoch=5)
    for value in (0.3, 0.2, 0.2):                                       # best, then 2 without improvement
        sched.step_metric(value)
    assert sched.get_lr() == pytest.approx(0.5)
    state = sched.state_dict()
    assert all(isinstance(v, (int, float)) for v in state.values())     # loads with weights_only=True


def test_schedule_edges_by_hand():
    """lr_at at the edges a run meets: iteration 0, the last warmup iteration, a step boundary
    and the last iteration, each computed by hand; one iteration per epoch is allowed."""
    warm = dict(lr=0.1, warmup_iters=4, warmup_factor=0.2, epochs=3)
    multistep = Schedule.from_config(DemoConfig(scheduler="multistep", lr_steps=(1, 2), lr_gamma=0.5, **warm), 1)
    assert multistep.step_iters == (1, 2) and multistep.total_iters == 3
    # warmup x step: 0.2; (0.2 x 3/4 + 1/4) x 0.5 (iteration 1 >= step 1); iteration 3: 0.8 x 0.25
    expected = [0.1 * 0.2, 0.1 * 0.4 * 0.5, 0.1 * 0.6 * 0.25, 0.1 * 0.8 * 0.25, 0.1 * 0.25]
    assert [multistep.lr_at(i) for i in range(5)] == pytest.approx(expected)
    cosine = Schedule.from_config(DemoConfig(scheduler="cosine", warmup_iters=0, lr=2.0, epochs=1), 1)
    assert cosine.total_iters == 1
    assert [cosine.lr_at(0), cosine.lr_at(1), cosine.lr_at(5)] == pytest.approx([2.0, 0.0, 0.0], abs=1e-12)
    cosine = Schedule.from_config(DemoConfig(scheduler="cosine", warmup_iters=0, lr=2.0, epochs=3), 2)
    assert cosine.lr_at(2) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi / 3)))   # 1.5
    plateau = Schedule.from_config(DemoConfig(scheduler="plateau", **warm), 10)
    assert plateau.lr_at(20) == pytest.approx(0.1) and plateau.lr_at(20, 0.5) == pytest.approx(0.05)
    assert plateau.lr_at(3) == pytest.approx(0.1 * 0.8)


def test_schedule_refuses_lr_steps_as_fractions():
    """lr_steps are whole epochs once resolved; fractions left over are an error naming the key
    (the key's own check refuses mixed or non-whole epochs before this)."""
    for steps in ((0.5,), (0.25, 0.75)):
        with pytest.raises(ValueError, match="lr_steps"):
            Schedule.from_config(DemoConfig(scheduler="multistep", lr_steps=steps, epochs=3), 10)
    assert Schedule.from_config(DemoConfig(scheduler="multistep", lr_steps=(1, 2.0), epochs=3), 10).step_iters == (10, 20)
    assert Schedule.from_config(DemoConfig(scheduler="cosine", lr_steps=(0.5,), epochs=3), 10).kind == "cosine"


def test_scheduler_sets_every_group_lr():
    """The optimizer's groups hold the schedule's lr (x each group's lr_factor) from the start, after
    each step and after each evaluation; an optimizer without lr_factor gets the schedule's lr."""
    cfg = DemoConfig(lr=0.1, scheduler="plateau", warmup_iters=2, warmup_factor=0.5, bias_lr_factor=2.0,
                     plateau_patience=0, lr_gamma=0.1)
    optimizer = build_optimizer(cfg, torch.nn.Linear(2, 2))
    sched = LRScheduler(optimizer, cfg, iters_per_epoch=5)
    assert [len(g["params"]) for g in optimizer.param_groups] == [1, 1, 0]   # Linear: a 2-D weight, a bias
    lrs = lambda: [g["lr"] for g in optimizer.param_groups]           # weights, biases, others
    assert lrs() == pytest.approx([0.05, 0.1, 0.05])
    sched.step()
    assert lrs() == pytest.approx([0.075, 0.15, 0.075])
    sched.step()
    sched.step_metric(0.3)
    sched.step_metric(0.2)                                               # patience 0: x 0.1 now
    assert lrs() == pytest.approx([0.01, 0.02, 0.01])
    plain = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=7.0)
    LRScheduler(plain, cfg, iters_per_epoch=5)
    assert plain.param_groups[0]["lr"] == pytest.approx(0.05)


def test_plateau_rule_counts_evaluations():
    """mode max, like ReduceLROnPlateau: an equal mAP is no improvement; a better one resets the
    count; after each reduction the count starts again."""
    cfg = DemoConfig(lr=1.0, scheduler="plateau", warmup_iters=0, plateau_patience=1, lr_gamma=0.5)
    sched = LRScheduler(build_optimizer(cfg, torch.nn.Linear(2, 2)), cfg, iters_per_epoch=5)
    assert sched.state_dict() == {"iteration": 0, "plateau_factor": 1.0, "best_metric": -math.inf, "bad_evals": 0}
    lrs = []
    for value in (0.3, 0.2, 0.4, 0.3, 0.4, 0.35, 0.1):
        sched.step_metric(value)
        lrs.append(sched.get_lr())
    # 0.3 best; 0.2 one bad; 0.4 best; 0.3 one bad; 0.4 equal: two bad -> x0.5; 0.35 one bad; 0.1 two -> x0.5
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25])
    cfg = DemoConfig(lr=1.0, scheduler="plateau", warmup_iters=0, plateau_patience=0, lr_gamma=0.5)
    sched = LRScheduler(build_optimizer(cfg, torch.nn.Linear(2, 2)), cfg, iters_per_epoch=5)
    sched.step_metric(0.0)                                               # the first evaluation is a best
    assert sched.get_lr() == pytest.approx(1.0)


def test_scheduler_state_round_trip():
    """A resumed scheduler continues where the saved one stopped: iteration, plateau factor, best
    mAP and the count of evaluations without improvement, and the optimizer's lrs at once."""
    cfg = DemoConfig(lr=1.0, scheduler="plateau", warmup_iters=10, warmup_factor=0.5, plateau_patience=1,
                     lr_gamma=0.5)
    sched = LRScheduler(build_optimizer(cfg, torch.nn.Linear(2, 2)), cfg, iters_per_epoch=5)
    for _ in range(3):
        sched.step()
    for value in (0.3, 0.2, 0.2, 0.1):                                  # x0.5, then one bad evaluation
        sched.step_metric(value)
    state = sched.state_dict()
    assert state == {"iteration": 3, "plateau_factor": 0.5, "best_metric": 0.3, "bad_evals": 1}
    optimizer = build_optimizer(cfg, torch.nn.Linear(2, 2))
    resumed = LRScheduler(optimizer, cfg, iters_per_epoch=5)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * (0.5 * 0.7 + 0.3))   # warmup at 3/10 x 0.5
    resumed.step_metric(0.25)                                           # second bad one: x0.5 again
    assert resumed.get_lr() == pytest.approx(0.25 * 0.65)


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    path = tmp_path / "ck" / "latest.pth"
    save_checkpoint({"format": "densedet", "model": {"w": torch.ones(2)}, "epoch": 3}, path)
    save_checkpoint({"format": "densedet", "model": {"w": torch.zeros(2)}, "epoch": 4}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["latest.pth"]   # no temp files left
    state = load_checkpoint(path)
    assert state["epoch"] == 4 and torch.equal(state["model"]["w"], torch.zeros(2))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pth")


def test_init_from_torchvision_fcos_reinitialises_class_layer(tmp_path):
    from torchvision.models.detection import fcos_resnet50_fpn
    tv = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    path = tmp_path / "tv_fcos.pth"
    torch.save(tv.state_dict(), path)
    cfg = DemoConfig(backbone="resnet50", fpn_channels=256, num_convs=4)
    model = cfg.resolve().build_model(num_classes=3)
    fresh_cls = model.head.cls_logits.weight.clone()
    # Category ids 1, 2, 200: 200 has no row in torchvision's 91 outputs -> class layer re-initialised.
    init_weights_from(model, cfg, str(path), [1, 2, 200])
    assert torch.equal(model.head.cls_logits.weight, fresh_cls)
    assert torch.equal(model.head.bbox_pred.weight, tv.head.regression_head.bbox_reg.weight)
    assert torch.equal(model.backbone.body.layer3[0].conv1.weight, tv.backbone.body.layer3[0].conv1.weight)
    # COCO-style ids pick torchvision's rows.
    model = cfg.resolve().build_model(num_classes=3)
    init_weights_from(model, cfg, str(path), [1, 2, 90])
    assert torch.equal(model.head.cls_logits.weight, tv.head.classification_head.cls_logits.weight[[1, 2, 90]])


def test_mismatched_checkpoint_is_a_clear_error():
    small = DemoConfig().resolve().build_model(5)
    other = DemoConfig(fpn_channels=32).resolve().build_model(5)
    with pytest.raises(RuntimeError, match="does not fit the model built from the config"):
        load_model_weights(other, small.state_dict(), "x.pth")


def test_non_finite_loss_stops_with_loss_dict_and_image_ids():
    """With on_spike=warn (updates anyway) a non-finite loss cannot be applied: the run stops."""
    cfg = DemoConfig(log_interval=1, on_spike="warn").resolve()
    model = torch.nn.Conv2d(3, 1, 1)
    batch = Batch(images=torch.zeros(2, 3, 32, 32, dtype=torch.uint8), targets=torch.zeros(2, 0, 5),
                  image_sizes=torch.tensor([[32, 32]] * 2), scales=torch.ones(2, 2),
                  orig_sizes=torch.tensor([[32, 32]] * 2), image_ids=torch.tensor([17, 42]))

    def loss_fn(outputs, targets):
        return {"loss_cls": outputs.mean() * 0 + math.nan, "loss_box": outputs.mean()}

    optimizer = build_optimizer(cfg, model)
    with pytest.raises(FloatingPointError, match=r"loss_cls.*nan.*\[17, 42\]"):
        train_one_epoch(model, loss_fn, optimizer, LRScheduler(optimizer, cfg, 1),
                        torch.amp.GradScaler("cpu", enabled=False), [batch], torch.device("cpu"), 0, cfg, None)


def test_weight_decay_groups():
    """1-D parameters (biases, norm layers, Scales) are not decayed unless weight_decay_1d; biases
    (conv and norm) train at bias_lr_factor x the lr."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))
    for flag, expected in ((False, {1e-4: 1, 0.0: 3}), (True, {1e-4: 4, 0.0: 0})):
        cfg = DemoConfig(optimizer="sgd", weight_decay=1e-4, weight_decay_1d=flag, lr=0.01, bias_lr_factor=2.0)
        groups = build_optimizer(cfg, model).param_groups
        counts = {0.0: 0, 1e-4: 0}
        for group in groups:
            counts[group["weight_decay"]] += len(group["params"])
        assert counts == expected
        lrs = {id(p): g["lr"] for g in groups for p in g["params"]}
        assert [lrs[id(p)] for p in model.parameters()] == [0.01, 0.02, 0.01, 0.02]  # conv w, b; GN w, b
