"""Settings resolved at the start of a run: freezing, warmup, lr steps and lr follow the run,
an explicit value always wins, and a resumed run keeps the values it started with."""
import json

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from atss.config import Config as ATSSConfig
from config import load_config
from fcos.config import Config as FCOSConfig
from public.engine.train.optim import LRScheduler, build_optimizer
from public.engine.train.resolve import resolve, resolve_for_run, step_epochs
from public.models.backbone import build_backbone
from retinanet.config import Config as RetinaNetConfig


def scratch(**overrides):
    return FCOSConfig(backbone="resnet18", pretrained=False, **overrides)


# ---- freezing ----------------------------------------------------------------------------
@pytest.mark.parametrize("weights, expected", [
    ({"pretrained": False}, (0, False)),
    ({"pretrained": True}, (1, True)),
    ({"pretrained": False, "backbone_weights": "r18.pth"}, (1, True)),
    ({"pretrained": False, "init_from": "coco.pth"}, (1, True)),
])
def test_freezing_follows_the_weights(weights, expected):
    cfg = FCOSConfig(backbone="resnet18", **weights)
    values = resolve(cfg, 64).values
    assert (values["frozen_stages"], values["freeze_bn"]) == expected


def test_explicit_freezing_wins_and_warns_on_random_weights():
    resolution = resolve(scratch(frozen_stages=2, freeze_bn=True), 64)
    assert (resolution.values["frozen_stages"], resolution.values["freeze_bn"]) == (2, True)
    assert any("freeze random weights" in w for w in resolution.warnings)
    resolution = resolve(FCOSConfig(pretrained=True, frozen_stages=0, freeze_bn=False), 118287)
    assert (resolution.values["frozen_stages"], resolution.values["freeze_bn"]) == (0, False)
    assert resolution.warnings == []


def test_plain_head_from_scratch_is_advised_against():
    advice = resolve(RetinaNetConfig(pretrained=False, head_norm="none"), 240).advice
    assert len(advice) == 1 and "head_norm='none'" in advice[0] and "set head_norm=GN" in advice[0]
    assert resolve(RetinaNetConfig(pretrained=False, head_norm="GN"), 240).advice == []
    assert resolve(RetinaNetConfig(pretrained=False), 240).advice == []    # "auto": GN from scratch
    assert resolve(RetinaNetConfig(pretrained=True), 240).advice == []
    assert resolve(scratch(), 240).advice == []           # FCOS: GN towers


@pytest.mark.parametrize("overrides, expected", [
    ({"pretrained": False}, "GN"),
    ({"pretrained": True}, "none"),
    ({"pretrained": False, "backbone_weights": "r50.pth"}, "none"),
    ({"pretrained": False, "head_norm": "none"}, "none"),   # an explicit value wins
    ({"pretrained": True, "head_norm": "GN"}, "GN"),
])
def test_retinanet_head_norm_follows_the_weights(overrides, expected):
    cfg = RetinaNetConfig(**overrides)
    assert cfg.resolve().head_norm == expected
    resolution = resolve(cfg, 240)
    assert resolution.values["head_norm"] == expected
    if cfg.head_norm == "auto":
        assert any(line.startswith("head towers") and "head_norm=auto" in line for line in resolution.lines)
    else:
        assert not any(line.startswith("head towers") for line in resolution.lines)


def test_retinanet_from_scratch_builds_groupnorm_towers():
    head = RetinaNetConfig(backbone="resnet18", pretrained=False).resolve().build_model(3).head
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in head.modules()) == 8    # 4 per tower
    head = RetinaNetConfig(backbone="resnet18", pretrained=False, head_norm="none").resolve().build_model(3).head
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in head.modules())


@pytest.mark.slow
def test_auto_head_norm_takes_the_checkpoint_value(tmp_path, capsys, no_results_figure):
    """A RetinaNet trained from scratch (auto: GN) stores GN; scoring it with the stock config
    (pretrained=True, auto: plain) builds GN towers from the checkpoint; resuming it keeps GN
    without a warning; an explicit other value is refused, naming the key."""
    from helpers import demo_subset
    from public.engine.evaluate.tester import evaluate_checkpoint
    from public.engine.train.loop import train
    images, annotations = demo_subset(tmp_path, 4, "train")
    common = [f"train_images={images}", f"train_annotations={annotations}", f"val_images={images}",
              f"val_annotations={annotations}", f"work_dir={tmp_path / 'run'}", "backbone=resnet18",
              "fpn_channels=32", "num_convs=1", "min_size=(64,)", "max_size=96", "test_min_size=64",
              "batch_size=2", "num_workers=0", "flops=False"]
    train(load_config("retinanet/config.py", common + ["pretrained=False", "epochs=1"]))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["head_norm"] == "GN"
    checkpoint = torch.load(tmp_path / "run" / "latest.pth", weights_only=True)
    assert checkpoint["resolved"]["values"]["head_norm"] == "GN"
    assert checkpoint["resolved"]["requested"]["head_norm"] == "auto"
    assert "head.cls_tower.1.weight" in checkpoint["model"]      # the GroupNorm after the first conv
    assert "head towers with GroupNorm" in (tmp_path / "run" / "train.log").read_text()

    cfg = load_config("retinanet/config.py", common + ["pretrained=True"])
    capsys.readouterr()
    result = evaluate_checkpoint(cfg, str(tmp_path / "run" / "latest.pth"))
    assert cfg.head_norm == "auto" and result.stats is not None   # the spec took GN: its weights loaded
    assert "was trained and evaluated with" not in capsys.readouterr().out
    # Scored at another size than its run's: said, with the values to add.
    evaluate_checkpoint(load_config("retinanet/config.py", common + ["test_min_size=96", "max_size=128"]),
                        str(tmp_path / "run" / "latest.pth"))
    assert ("was trained and evaluated with test_min_size=64 max_size=96; this config resizes with "
            "test_min_size=96 max_size=128: add test_min_size=64 max_size=96" in capsys.readouterr().out)

    train(load_config("retinanet/config.py", common + ["pretrained=False", "epochs=2", "resume=auto"]))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "resuming keeps" not in log
    assert torch.load(tmp_path / "run" / "latest.pth", weights_only=True)["config"]["head_norm"] == "GN"

    with pytest.raises(ValueError, match="head_norm 'GN' vs 'none'"):
        evaluate_checkpoint(load_config("retinanet/config.py", common + ["head_norm=none"]),
                            str(tmp_path / "run" / "latest.pth"))

    # From ImageNet-like weights (a local backbone file): plain towers, and the checkpoint
    # is scored as such by a config that trains from scratch (where "auto" alone would mean GN).
    import torchvision
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    plain = [c for c in common if not c.startswith("work_dir=")] + [f"work_dir={tmp_path / 'plain'}"]
    train(load_config("retinanet/config.py", plain + [f"backbone_weights={weights}", "pretrained=False", "epochs=1"]))
    checkpoint = torch.load(tmp_path / "plain" / "latest.pth", weights_only=True)
    assert checkpoint["config"]["head_norm"] == "none" and "head.cls_tower.1.weight" not in checkpoint["model"]
    cfg = load_config("retinanet/config.py", plain + ["pretrained=False"])
    evaluate_checkpoint(cfg, str(tmp_path / "plain" / "latest.pth"))
    assert cfg.head_norm == "auto"   # unchanged: the spec took the checkpoint's plain towers (its weights loaded)

    # Fine-tuning (init_from: trained weights, so "auto" alone would mean plain) from the GN run.
    tuned = [c for c in common if not c.startswith("work_dir=")] + [f"work_dir={tmp_path / 'tuned'}"]
    train(load_config("retinanet/config.py", tuned + [f"init_from={tmp_path / 'run' / 'latest.pth'}", "epochs=1"]))
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["head_norm"] == "GN"


def test_backbone_built_from_scratch_trains_every_layer():
    net = build_backbone(scratch().resolve()).body
    assert all(p.requires_grad for p in net.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in net.modules())
    assert isinstance(net.bn1, torch.nn.BatchNorm2d)
    net = build_backbone(scratch(frozen_stages=1, freeze_bn=True).resolve()).body
    assert not net.conv1.weight.requires_grad and not net.layer1[0].conv1.weight.requires_grad
    assert net.layer2[0].conv1.weight.requires_grad and isinstance(net.bn1, FrozenBatchNorm2d)


def test_auto_is_a_valid_override_and_other_strings_are_not():
    cfg = load_config("fcos/config_demo.py", ["frozen_stages=auto", "freeze_bn=True"])
    assert cfg.frozen_stages == "auto" and cfg.freeze_bn is True
    with pytest.raises(TypeError, match="frozen_stages.*'auto'"):
        load_config("fcos/config_demo.py", ["frozen_stages=all"])


# ---- schedule ----------------------------------------------------------------------------
@pytest.mark.parametrize("epochs, steps", [(12, (8, 11)), (24, (16, 22)), (36, (24, 33)), (1, (1, 1))])
def test_default_lr_steps_are_fractions_of_the_run(epochs, steps):
    assert step_epochs(FCOSConfig.lr_steps, epochs) == steps
    assert resolve(scratch(epochs=epochs), 640).values["lr_steps"] == steps


def test_explicit_lr_steps_are_epochs():
    assert resolve(scratch(epochs=24, lr_steps=(8, 11)), 640).values["lr_steps"] == (8, 11)
    with pytest.raises(ValueError, match="mixes"):              # checked where the key is declared
        scratch(lr_steps=(0.5, 11))
    with pytest.raises(ValueError, match="positive"):
        scratch(lr_steps=(0, 0.5))
    with pytest.raises(ValueError, match="whole numbers"):
        scratch(lr_steps=(8.5, 11))
    resolution = resolve(scratch(epochs=6, lr_steps=(8, 11)), 640)
    assert any("not before the end" in w for w in resolution.warnings)


@pytest.mark.parametrize("images, epochs, batch, expected_warmup", [
    (36, 24, 4, 54),          # 9 iterations x 24 = 216: a quarter is 54
    (240, 24, 8, 180),        # the demo at batch 8: 720 iterations
    (640, 12, 16, 120),       # 40 x 12 = 480
    (118287, 12, 16, 500),    # COCO 1x: 88704 iterations, the user's 500 fits
    (118287, 36, 16, 500),
])
def test_warmup_is_at_most_a_quarter_of_the_run(images, epochs, batch, expected_warmup):
    resolution = resolve(scratch(epochs=epochs, batch_size=batch), images)
    assert resolution.values["warmup_iters"] == expected_warmup
    shortened = expected_warmup < 500
    assert any("warmup shortened" in w for w in resolution.warnings) == shortened


def test_warmup_cap_can_be_lifted():
    assert resolve(scratch(epochs=24, batch_size=4, warmup_max_fraction=1.0), 36).values["warmup_iters"] == 216
    assert resolve(scratch(epochs=24, batch_size=4, warmup_iters=20), 36).values["warmup_iters"] == 20


def test_resolved_schedule_reaches_the_set_lr_and_drops_at_fractions():
    """The issue's small run: 36 images, batch 4, 24 epochs. The lr reaches its value after the
    warmup and drops at epochs 16 and 22, instead of never exceeding 10% of it."""
    cfg = scratch(epochs=24, batch_size=4, lr=0.01)
    cfg.update(resolve(cfg, 36).values)
    sched = LRScheduler(build_optimizer(cfg, torch.nn.Linear(2, 2)), cfg, iters_per_epoch=9)
    lrs = []
    for _ in range(216):
        lrs.append(sched.get_lr())
        sched.step()
    assert max(lrs) == pytest.approx(0.0025)
    assert lrs[54] == pytest.approx(0.0025) and lrs[16 * 9 - 1] == pytest.approx(0.0025)
    assert lrs[16 * 9] == pytest.approx(0.00025) and lrs[22 * 9] == pytest.approx(0.000025)


# ---- lr scaling ------------------------------------------------------------------------------
@pytest.mark.parametrize("batch, world, expected", [(2, 1, 0.00125), (16, 1, 0.01), (64, 1, 0.04),
                                                    (8, 2, 0.01), (4, 2, 0.005)])
def test_lr_scales_with_the_total_batch(batch, world, expected):
    resolution = resolve(scratch(batch_size=batch, lr=0.01), 10000, world_size=world)
    assert resolution.values["lr"] == pytest.approx(expected)
    assert resolution.values["scale_lr"] is False    # the stored lr is the one used: not scaled again
    assert f"total batch of {batch * world}" in resolution.lines[1]


def test_lr_scaling_can_be_switched_off_or_referenced_elsewhere():
    assert resolve(scratch(batch_size=4, lr=0.01, scale_lr=False), 1000).values["lr"] == 0.01
    assert resolve(scratch(batch_size=4, lr=0.01, reference_batch=8), 1000).values["lr"] == pytest.approx(0.005)


def test_fewer_images_than_a_batch():
    resolution = resolve(scratch(batch_size=16, lr=0.01), 6)
    assert resolution.values["batch_size"] == 6
    assert resolution.values["lr"] == pytest.approx(0.01 * 6 / 16)
    assert any("only 6 training images" in w for w in resolution.warnings)


def test_num_workers_capped_at_the_cpus(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert resolve(scratch(num_workers=8), 100).values["num_workers"] == 2
    assert resolve(scratch(num_workers=1), 100).values["num_workers"] == 1


def test_eval_interval_longer_than_the_run_warns():
    assert any("eval_interval=5" in w for w in resolve(scratch(epochs=3, eval_interval=5), 100).warnings)


@pytest.mark.parametrize("config", [FCOSConfig, ATSSConfig, RetinaNetConfig])
def test_every_model_config_means_lr_at_batch_16(config):
    cfg = config()
    assert (cfg.lr, cfg.reference_batch, cfg.scale_lr) == (0.01, 16, True)
    assert cfg.frozen_stages == "auto" and cfg.freeze_bn == "auto"


def test_demo_configs_keep_their_effective_lr():
    for path, lr in (("fcos/config_demo.py", 2e-3), ("atss/config_demo.py", 2e-3), ("retinanet/config_demo.py", 1e-3)):
        cfg = load_config(path)
        assert resolve(cfg, 240).values["lr"] == pytest.approx(lr), path


# ---- a run stores what it used; a resumed run keeps it ------------------------------------------
class ListLog:
    """Stands in for the logger: keeps what resolve_for_run logs."""

    def __init__(self):
        self.lines = []

    def info(self, message, *args):
        self.lines.append(("info", message % args))

    def warning(self, message, *args):
        self.lines.append(("warning", message % args))


def test_resume_takes_the_stored_values_not_a_new_resolution():
    cfg = scratch(epochs=24, batch_size=4, lr=0.01)
    spec, stored = resolve_for_run(cfg, 36, 1, ListLog())
    assert spec.lr == pytest.approx(0.0025) and spec.warmup_iters == 54 and spec.lr_steps == (16, 22)
    assert (cfg.lr, cfg.warmup_iters) == (0.01, 500)            # the config itself is not changed
    # The same command on more data (or another batch) would resolve differently; a resumed run must not.
    again, log = scratch(epochs=24, batch_size=8, lr=0.01), ListLog()
    kept_spec, kept = resolve_for_run(again, 3600, 1, log, resumed={"resolved": stored, "config": spec.to_dict()})
    assert kept == stored
    assert (kept_spec.lr, kept_spec.warmup_iters, kept_spec.lr_steps, kept_spec.batch_size) == (spec.lr, 54, (16, 22), 4)
    assert kept_spec.source("lr") == "the checkpoint resumed"
    assert "stored in the checkpoint" in log.lines[0][1]
    assert log.lines[1] == ("warning", "resuming keeps the settings the run started with: batch_size=4 "
                                       "(this command asks for batch_size=8)")


def test_a_run_logs_and_stores_the_resolved_values(tmp_path, no_results_figure):
    from helpers import demo_subset
    from public.engine.train.loop import train
    images, annotations = demo_subset(tmp_path, 6, "train")
    cfg = load_config("fcos/config.py", [
        f"train_images={images}", f"train_annotations={annotations}", f"val_images={images}",
        f"val_annotations={annotations}", f"work_dir={tmp_path / 'run'}", "backbone=resnet18", "pretrained=False",
        "fpn_channels=32", "num_convs=1", "min_size=(64,)", "max_size=96", "test_min_size=64", "batch_size=4",
        "epochs=2", "num_workers=0", "flops=False"])
    train(cfg)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "resolved:" in log and "backbone trained from scratch: frozen_stages=0" in log
    assert "lr 0.0025 for a total batch of 4 (0.01 at 16" in log
    assert "warmup shortened to 0" in log          # 2 iterations: a quarter is 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["frozen_stages"], saved["freeze_bn"], saved["lr"], saved["scale_lr"]) == (0, False, 0.0025, False)
    assert saved["lr_steps"] == [1, 2] and saved["warmup_iters"] == 0
    checkpoint = torch.load(tmp_path / "run" / "latest.pth", weights_only=True)
    assert checkpoint["resolved"]["values"]["lr"] == 0.0025
    assert checkpoint["resolved"]["requested"]["frozen_stages"] == "auto"
    assert checkpoint["config"]["lr"] == 0.0025
