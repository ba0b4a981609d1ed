"""The run spec: one resolution of a run's settings, frozen before anything is built.

``cfg.resolve(...)`` (public/keys.py) turns every "auto" into a value and freezes the copy;
``resolve_for_run`` (public/engine/train/resolve.py) makes the spec of a training run. Every
part of a run reads the spec, so a write into it after it is made fails (FrozenConfigError)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from config import FrozenConfigError, RunFacts, load_config
from public.keys import is_auto

REPO = Path(__file__).resolve().parents[1]


def test_resolve_leaves_no_auto_and_says_where_each_value_came_from():
    cfg = load_config("retinanet/config.py", ["pretrained=False", "epochs=3", "ema=0.9"])
    assert [k for k, v in cfg.to_dict().items() if is_auto(v) and cfg.keys()[k].auto] == [
        "frozen_stages", "freeze_bn", "head_norm", "clip_grad_norm", "ema_tau"]
    spec = cfg.resolve(RunFacts(total_iters=40), {"lr": 0.0025}, {"lr": "scaled to the batch"})
    assert (spec.frozen_stages, spec.freeze_bn, spec.head_norm, spec.clip_grad_norm, spec.ema_tau) == \
        (0, False, "GN", 35.0, 10)   # from random init; ema_tau: 2000 capped at a quarter of 40 iterations
    assert not [k for k, v in spec.to_dict().items() if is_auto(v) and spec.keys()[k].auto]
    assert spec.source("epochs") == "command line" and spec.source("lr") == "scaled to the batch"
    assert spec.source("head_norm") == "auto" and spec.source("nms_thresh") == "retinanet.config.Config"
    assert spec.source("seed") == "default"
    assert cfg.head_norm == "auto" and cfg.lr == 0.01 and not cfg.frozen        # the config is not changed
    trained = load_config("retinanet/config.py", ["pretrained=True"]).resolve()
    assert (trained.frozen_stages, trained.freeze_bn, trained.head_norm, trained.clip_grad_norm) == (1, True, "none", 0.0)
    assert trained.ema_tau == 2000                                              # no run length: uncapped


def test_an_auto_structure_key_takes_the_checkpoint_value_an_explicit_one_wins():
    stored = {"head_norm": "none", "fpn_channels": 64}
    spec = load_config("retinanet/config.py", ["pretrained=False"]).resolve(RunFacts(stored=stored,
                                                                                    stored_source="checkpoint x"))
    assert spec.head_norm == "none" and spec.source("head_norm") == "checkpoint x"
    assert spec.fpn_channels == 256                                             # not "auto": not taken
    explicit = load_config("retinanet/config.py", ["head_norm=GN"]).resolve(RunFacts(stored=stored))
    assert explicit.head_norm == "GN" and explicit.source("head_norm") == "command line"


def test_a_spec_cannot_be_written_and_replace_makes_a_new_one():
    spec = load_config("fcos/config_demo.py").resolve()
    for write in (lambda: setattr(spec, "lr", 1.0), lambda: spec.set("lr", 1.0), lambda: spec.update({"epochs": 2}),
                  lambda: spec.apply_overrides(["nms_thresh=0.5"])):
        with pytest.raises(FrozenConfigError, match="the run spec is resolved once"):
            write()
    assert spec.resolve() is spec
    variant = spec.replace(pretrained=False, fpn_channels=32)
    assert variant.frozen and variant.fpn_channels == 32 and spec.fpn_channels == 64
    with pytest.raises(FrozenConfigError):
        variant.fpn_channels = 16


def test_models_are_built_from_a_spec_only():
    cfg = load_config("fcos/config_demo.py", ["fpn_channels=32", "num_convs=1"])
    with pytest.raises(ValueError, match=r"building the backbone needs the run spec.*cfg.resolve\(\)"):
        cfg.build_model(2)
    assert cfg.resolve().build_model(2).head.cls_logits.out_channels == 2


def test_a_training_run_reads_only_its_frozen_spec(tmp_path, no_results_figure, monkeypatch):
    """train() on a tiny run: every part reads the frozen spec (a write anywhere would raise), the
    config given is unchanged, and config.json and the checkpoints hold the spec with its sources."""
    from helpers import demo_subset
    from public.engine.train import loop

    images, annotations = demo_subset(tmp_path, 4, "train")
    cfg = load_config("fcos/config.py", [
        f"train_images={images}", f"train_annotations={annotations}", f"val_images={images}",
        f"val_annotations={annotations}", f"work_dir={tmp_path / 'run'}", "backbone=resnet18", "pretrained=False",
        "fpn_channels=32", "num_convs=1", "min_size=(64,)", "max_size=96", "test_min_size=64", "batch_size=2",
        "epochs=1", "num_workers=0", "flops=False", "ema=0.5", "scale_jitter=(0.8,1.2)"])
    before = cfg.to_dict()
    seen = []
    original = loop.build_run

    def recording(spec, *args, **keywords):
        seen.append(spec)
        return original(spec, *args, **keywords)
    monkeypatch.setattr(loop, "build_run", recording)
    loop.train(cfg)
    assert cfg.to_dict() == before
    spec = seen[0]
    assert spec.frozen and (spec.clip_grad_norm, spec.ema_tau, spec.frozen_stages, spec.head_norm) == (35.0, 1, 0, "GN")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["clip_grad_norm"] == 35.0 and saved["ema_tau"] == 1 and saved["scale_jitter"] == [0.8, 1.2]
    checkpoint = torch.load(tmp_path / "run" / "latest.pth", weights_only=True)
    assert json.loads(json.dumps(checkpoint["config"])) == saved
    sources = checkpoint["sources"]
    assert (sources["clip_grad_norm"], sources["ema"], sources["lr"], sources["nms_thresh"]) == \
        ("auto", "command line", "lr x 2/16 (scale_lr)", "fcos.config.Config")


def test_auto_is_resolved_in_one_place():
    """No part of the library turns "auto" into a value but the spec's resolution: the models,
    ops, data, loop and model folders never compare a key with "auto" and nothing calls the old
    per-site resolver."""
    readers = [*(REPO / "public" / "models").rglob("*.py"), *(REPO / "public" / "ops").rglob("*.py"),
               *(REPO / "public" / "data").rglob("*.py"), REPO / "public" / "engine" / "train" / "loop.py",
               *[p for folder in ("fcos", "atss", "retinanet") for p in (REPO / folder).glob("*.py")
                 if not p.name.startswith("config")]]
    for path in readers:
        text = path.read_text()
        assert '== "auto"' not in text and "is_auto(" not in text, path
    for path in [*(REPO / "public").rglob("*.py"), *(REPO / "fcos").glob("*.py"), REPO / "config.py"]:
        assert ".effective(" not in path.read_text(), path


# ---- time_budget: the epochs resolved from measured speed ---------------------------------------
def test_epochs_for_budget_fit_training_and_evaluations():
    from public.engine.train.budget import Speed, epochs_for_budget

    # 60 s left; an epoch 10 x 0.5 = 5 s, an evaluation 50 x 0.1 = 5 s every 2 epochs (and after the last):
    # 7 epochs cost 35 + 4 x 5 = 55 s; the bound floor((60 - 5) / (5 + 2.5)) = 7
    epochs, line = epochs_for_budget(1.0, 0.0, Speed(0.5, 0.1), 10, 50, 2)
    assert epochs == 7 and line.startswith("epochs 7 for time_budget=1 min (1.0 min left)")
    assert epochs_for_budget(1.0, 30.0, Speed(0.5, 0.1), 10, 50, 2)[0] == 3      # (30 - 5) / 7.5
    assert epochs_for_budget(1.0, 0.0, Speed(0.5, 0.1), 10, 50, 1)[0] == 5       # (60 - 5) / 10
    assert epochs_for_budget(0.01, 0.0, Speed(0.5, 0.1), 10, 50, 1)[0] == 1      # at least one
    assert epochs_for_budget(10.0, 0.0, Speed(0.5, 0.1), 10, 50, 2)[0] == 79     # (600 - 5) / 7.5: minutes x 60


def test_time_budget_resolves_epochs_and_a_resumed_run_keeps_them():
    from public.engine.train.budget import Speed
    from public.engine.train.resolve import Budget, resolve_for_run
    from test_resolve import ListLog

    cfg = load_config("fcos/config_demo.py", ["time_budget=1", "batch_size=4", "eval_interval=2", "epochs=50"])
    measured = []
    budget = Budget(lambda spec: measured.append(spec) or Speed(0.5, 0.1), lambda: 0.0, 50)
    spec, stored = resolve_for_run(cfg, 40, 1, ListLog(), budget=budget)   # 10 iterations an epoch
    assert measured[0].frozen and measured[0].epochs == 50
    assert spec.epochs == 7 and spec.source("epochs") == "time_budget=1 min" and stored["values"]["epochs"] == 7
    assert stored["lines"][0].startswith("epochs 7 for time_budget=1 min")
    assert spec.warmup_iters == 17                # 100 capped at a quarter of 7 x 10 iterations
    again, log = load_config("fcos/config_demo.py", ["time_budget=1", "batch_size=4", "eval_interval=2"]), ListLog()
    kept, _ = resolve_for_run(again, 40, 1, log, resumed={"resolved": stored, "config": spec.to_dict()}, budget=budget)
    assert kept.epochs == 7 and len(measured) == 1                          # not measured again
    assert resolve_for_run(load_config("fcos/config_demo.py", ["batch_size=4"]), 40, 1, ListLog(),
                           budget=budget)[0].epochs == 24 and len(measured) == 1   # no budget: epochs as set


def test_measure_speed_times_the_run_and_leaves_random_states_alone(tmp_path):
    import random

    from helpers import demo_subset
    from public.data.loaders import build_dataset
    from public.engine.train.budget import measure_speed

    images, annotations = demo_subset(tmp_path, 8, "train")
    spec = load_config("fcos/config_demo.py", [f"train_images={images}", f"train_annotations={annotations}",
                                               f"val_images={images}", f"val_annotations={annotations}",
                                               "fpn_channels=32", "num_convs=1", "min_size=(64,)", "max_size=64",
                                               "test_min_size=64", "batch_size=2", "num_workers=0"]).resolve()
    train_set, val_set = build_dataset(spec, train=True), build_dataset(spec, train=False)
    torch.manual_seed(3)
    random.seed(3)
    speed = measure_speed(spec, train_set, val_set, torch.device("cpu"))
    assert speed.seconds_per_iteration > 0 and speed.seconds_per_val_image > 0
    after = (torch.rand(1), random.random())
    torch.manual_seed(3)
    random.seed(3)
    assert after == (torch.rand(1), random.random())


def test_small_data_configs_resolve_to_the_recipe():
    """Each model's config_small.py: the small-data settings on top of the model's own, with a
    15-minute budget; the demo configs keep their values (no budget, no EMA)."""
    for model in ("fcos", "atss", "retinanet"):
        spec = load_config(f"{model}/config_small.py").resolve()
        assert type(spec).__module__ == f"{model}.config_small" and spec.work_dir == f"work_dirs/{model}_small"
        assert (spec.backbone, spec.pretrained, spec.fpn_channels, spec.num_convs, spec.min_size, spec.optimizer,
                spec.scheduler, spec.ema, spec.time_budget) == ("resnet18", False, 64, 2, (320,), "adamw", "cosine",
                                                                0.98, 15.0)
        assert (spec.frozen_stages, spec.freeze_bn, spec.head_norm) == (0, False, "GN")   # from random init
        assert spec.source("ema") == "config.SmallDataSettings"
        demo = load_config(f"{model}/config_demo.py")
        assert (demo.ema, demo.time_budget, demo.min_size, demo.batch_size, demo.epochs) == (0.0, 0.0, (160,), 8, 24)


def test_measure_speed_times_the_steps_it_says_on_a_fake_clock(tmp_path, monkeypatch):
    """On a clock that only moves inside the model (1 s a training forward, 0.25 s an image at
    evaluation), the speed is exactly 1 s an iteration and 0.25 s a val image: the warmup steps
    are left out, TIMED_STEPS steps (each a forward, backward and optimizer step) and
    TIMED_VAL_BATCHES batches (each decoded) are timed, and the throwaway model is evaluated in
    eval mode."""
    from helpers import demo_subset
    from public.data.loaders import build_dataset
    from public.engine.train import budget

    images, annotations = demo_subset(tmp_path, 16, "train")     # 8 batches: more than the 6 steps
    spec = load_config("fcos/config_demo.py", [f"train_images={images}", f"train_annotations={annotations}",
                                               f"val_images={images}", f"val_annotations={annotations}",
                                               "fpn_channels=32", "num_convs=1", "min_size=(64,)", "max_size=64",
                                               "test_min_size=64", "batch_size=2", "num_workers=0"]).resolve()
    train_set, val_set = build_dataset(spec, train=True), build_dataset(spec, train=False)
    clock = {"now": 100.0, "train": 0, "eval": 0, "steps": 0, "decoded": 0, "epochs": []}
    monkeypatch.setattr(budget.time, "perf_counter", lambda: clock["now"])
    build_model, build_decoder, build_optimizer = type(spec).build_model, type(spec).build_decoder, budget.build_optimizer

    def timed_model(self, num_classes):
        model = build_model(self, num_classes)
        forward = model.forward

        def ticking(images):
            if model.training:
                clock["now"], clock["train"] = clock["now"] + 1.0, clock["train"] + 1
            else:
                clock["now"], clock["eval"] = clock["now"] + 0.25 * len(images), clock["eval"] + 1
            return forward(images)
        model.forward = ticking
        return model

    def counting_decoder(self):
        decoder = build_decoder(self)
        decode = decoder.forward

        def counted(*args):
            clock["decoded"] += 1
            return decode(*args)
        decoder.forward = counted
        return decoder

    def counting_optimizer(spec, model):
        optimizer = build_optimizer(spec, model)
        step = optimizer.step

        def counted(*args, **keywords):
            assert all(p.grad is not None for p in model.parameters() if p.requires_grad)   # after backward
            clock["steps"] += 1
            return step(*args, **keywords)
        optimizer.step = counted
        return optimizer

    monkeypatch.setattr(type(spec), "build_model", timed_model)
    monkeypatch.setattr(type(spec), "build_decoder", counting_decoder)
    monkeypatch.setattr(budget, "build_optimizer", counting_optimizer)
    speed = budget.measure_speed(spec, train_set, val_set, torch.device("cpu"))
    assert speed == budget.Speed(1.0, 0.25)
    assert (clock["train"], clock["steps"]) == (budget.WARMUP_STEPS + budget.TIMED_STEPS,) * 2 == (6, 6)
    assert (clock["eval"], clock["decoded"]) == (budget.TIMED_VAL_BATCHES,) * 2 == (2, 2)
