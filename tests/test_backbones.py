"""Backbones beyond ResNet: MobileNetV3, EfficientNet, RegNet and ConvNeXt as FPN backbones.

Per family (random init, 128 x 160 inputs): C3-C5 at strides 8/16/32 with the channels torchvision's
network has there, the FPN's P3-P7, the parameters ``frozen_stages`` freezes (listed by hand from
each architecture), ``freeze_bn``, one FCOS training step, and checkpoints that name their backbone.
"""
import io

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from fcos.config import Config
from public.engine.runs.checkpoint import load_model_weights
from public.engine.runs.identity import check_checkpoint, model_type
from public.models.backbone import BACKBONES, build_backbone

FAMILIES = ("mobilenet_v3_large", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf", "regnet_y_400mf",
            "convnext_tiny")

# Per family, read from torchvision's architectures: the body's children whose output is at
# stride 2 (stem), 4 (stage 1), 8, 16 and 32 (stages 2-4), and the channels of C3, C4, C5 (the
# output of the last child at stride 8, 16, 32).
STAGES = {
    # features[0] stem conv s2; [1] 16 s1; [2-3] 24 (s4); [4-6] 40 (s8); [7-12] 80-112 (s16);
    # [13-15] 160 (s32); [16] the 1x1 conv to 960.
    "mobilenet_v3_large": ([["0", "1"], ["2", "3"], ["4", "5", "6"], [str(i) for i in range(7, 13)],
                            ["13", "14", "15", "16"]], (40, 112, 960)),
    # [0] stem s2; [1] 16 s2 (s4); [2-3] 24 (s8); [4-8] 40-48 (s16); [9-11] 96 (s32); [12] conv to 576.
    "mobilenet_v3_small": ([["0"], ["1"], ["2", "3"], ["4", "5", "6", "7", "8"], ["9", "10", "11", "12"]],
                           (24, 48, 576)),
    # [0] stem s2; [1] MBConv1 16 s1; [2] 24 (s4); [3] 40 (s8); [4-5] 80, 112 (s16);
    # [6-7] 192, 320 (s32); [8] the 1x1 conv to 1280.
    "efficientnet_b0": ([["0", "1"], ["2"], ["3"], ["4", "5"], ["6", "7", "8"]], (40, 112, 1280)),
    # stem s2; trunk_output.block1..block4 at s4..s32 (widths 32, 64, 160, 400).
    "regnet_x_400mf": ([["stem"], ["block1"], ["block2"], ["block3"], ["block4"]], (64, 160, 400)),
    "regnet_y_400mf": ([["stem"], ["block1"], ["block2"], ["block3"], ["block4"]], (104, 208, 440)),
    # [0] stem 4x4/4 (s4); [1] stage 1; [2] downsample (s8); [3] stage 2; ... [6] (s32); [7] stage 4.
    "convnext_tiny": ([[], ["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]], (192, 384, 768)),
}

# Parameters (elements) that frozen_stages=1 freezes, counted by hand for MobileNetV3-Small:
# features[0]: conv 3->16 3x3 (432) + BN (32) = 464; features[1] (16 -> 16, no expansion,
# depthwise 3x3 s2, squeeze-excitation to 8): depthwise 144 + BN 32, SE fc1 16*8+8 = 136,
# fc2 8*16+16 = 144, project 16*16 = 256 + BN 32 -> 744; total 1208.
MOBILENET_V3_SMALL_STAGE1 = 464 + 744


def cfg_for(name: str, **overrides) -> Config:
    return Config(backbone=name, pretrained=False, fpn_channels=32, num_convs=1, **overrides).resolve()


def torchvision_body(name: str) -> dict[str, nn.Module]:
    """The children of torchvision's own network, by the names our body gives them."""
    net = torchvision.models.get_model(name)
    if name.startswith("regnet"):
        return {"stem": net.stem, **dict(net.trunk_output.named_children())}
    return dict(net.features.named_children())


def frozen_names(backbone) -> set[str]:
    return {n for n, p in backbone.body.named_parameters() if not p.requires_grad}


def test_every_family_is_a_config_choice():
    for name in FAMILIES:
        assert name in BACKBONES
    assert Config(backbone="mobilenet_v3_large").backbone == "mobilenet_v3_large"


@pytest.mark.parametrize("name", FAMILIES)
def test_feature_maps_strides_and_channels(name):
    torch.manual_seed(0)
    backbone = build_backbone(cfg_for(name)).eval()
    stages, channels = STAGES[name]
    assert list(backbone.body.return_layers.values()) == ["c3", "c4", "c5"]
    assert list(backbone.body.return_layers) == [stages[2][-1], stages[3][-1], stages[4][-1]]
    # the FPN's lateral 1x1 convs take C3-C5's channels
    assert tuple(block[0].in_channels for block in backbone.fpn.inner_blocks) == channels
    images = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        body = backbone.body(images)
        out = backbone(images)
    assert [tuple(v.shape) for v in body.values()] == [(2, c, 128 // s, 160 // s) for c, s in zip(channels, (8, 16, 32))]
    # P3-P7 at strides 8..128 (P6, P7 by a stride-2 conv: ceil), fpn_channels each
    assert [(k, tuple(v.shape)) for k, v in out.items()] == [
        ("c3", (2, 32, 16, 20)), ("c4", (2, 32, 8, 10)), ("c5", (2, 32, 4, 5)), ("p6", (2, 32, 2, 3)),
        ("p7", (2, 32, 1, 2))]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("frozen_stages", [0, 1, 2, 4])
def test_frozen_stages_freeze_the_stem_and_the_first_stages(name, frozen_stages):
    stages, _ = STAGES[name]
    backbone = build_backbone(cfg_for(name, frozen_stages=frozen_stages, freeze_bn=False))
    children = [c for stage in stages[:frozen_stages + 1] for c in stage] if frozen_stages else []
    expected = {n for n, _ in backbone.body.named_parameters() if n.split(".")[0] in children}
    assert frozen_names(backbone) == expected
    own = torchvision_body(name)
    assert sum(p.numel() for n, p in backbone.body.named_parameters() if not p.requires_grad) == \
        sum(p.numel() for c in children for p in own[c].parameters())
    # the FPN, P6/P7 and the rest of the body train
    assert all(p.requires_grad for p in backbone.fpn.parameters())
    assert (frozen_stages == 4) == all(not p.requires_grad for p in backbone.body.parameters())


def test_frozen_stage_one_of_mobilenet_v3_small_counted_by_hand():
    backbone = build_backbone(cfg_for("mobilenet_v3_small", frozen_stages=1, freeze_bn=False))
    assert sum(p.numel() for p in backbone.body.parameters() if not p.requires_grad) == MOBILENET_V3_SMALL_STAGE1


def _perturbed_state(name: str) -> dict:
    """torchvision's network with BatchNorm statistics and affine away from their defaults."""
    generator = torch.Generator().manual_seed(1)
    state = torchvision.models.get_model(name).state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var")) or (value.dim() == 1 and value.is_floating_point()):
            state[key] = value + 0.5 * torch.rand(value.shape, generator=generator)
    return state


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "efficientnet_b0", "regnet_x_400mf"])
def test_freeze_bn_keeps_statistics_affine_and_eps(name, tmp_path):
    """Frozen BN from a weights file: the same features as torchvision's network in eval mode
    (MobileNetV3's eps 0.001 kept: with 1e-5 they differ), no BatchNorm2d left, nothing of it trains."""
    path = tmp_path / "weights.pth"
    state = _perturbed_state(name)
    torch.save(state, path)
    backbone = build_backbone(cfg_for(name, backbone_weights=str(path), freeze_bn=True, frozen_stages=0))
    reference = torchvision.models.get_model(name)
    reference.load_state_dict(state)
    reference.eval()
    norms = [m for m in backbone.body.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    own_norms = [m for m in reference.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    assert [m.eps for m in norms] == [m.eps for m in own_norms]
    if name.startswith("mobilenet"):
        assert norms[0].eps == 0.001
    # frozen BN ignores the mode (EfficientNet's stochastic depth does not: eval for it)
    backbone.train(not name.startswith("efficientnet"))
    images = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        got = backbone.body(images)["c5"]
        expected = (reference.features if hasattr(reference, "features") else
                    nn.Sequential(reference.stem, reference.trunk_output))(images)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert all(p.requires_grad for p in backbone.body.parameters())   # frozen_stages=0: the convs train


def test_freeze_bn_fixes_convnext_layer_norms():
    """ConvNeXt has LayerNorms (no statistics): frozen means their affine does not train."""
    backbone = build_backbone(cfg_for("convnext_tiny", freeze_bn=True, frozen_stages=0))
    norms = [m for m in backbone.body.modules() if "LayerNorm" in type(m).__name__]
    assert len(norms) == 1 + 3 + 18   # stem, 3 downsamples, one per block (3 + 3 + 9 + 3)
    frozen = frozen_names(backbone)
    assert frozen == {n for n, m in backbone.body.named_modules() if m in norms for n in
                      (f"{n}.weight", f"{n}.bias")}
    assert len(frozen) == 2 * len(norms)
    trained = build_backbone(cfg_for("convnext_tiny", freeze_bn=False, frozen_stages=0))
    assert not frozen_names(trained)


def test_dcn_needs_a_resnet():
    with pytest.raises(ValueError, match=r"dcn_stages=.*needs a ResNet backbone \(backbone='mobilenet_v3_large'"):
        build_backbone(cfg_for("mobilenet_v3_large", dcn_stages=(False, True, True, True)))


@pytest.mark.parametrize("name", FAMILIES)
def test_one_fcos_training_step(name):
    torch.manual_seed(0)
    cfg = cfg_for(name)
    model, loss_fn = cfg.build_model(3).train(), cfg.build_loss()
    images = torch.randn(2, 3, 128, 160)
    targets = torch.tensor([[[10, 20, 60, 70, 0], [70, 30, 150, 100, 1]],
                            [[30, 30, 90, 110, 2], [-1, -1, -1, -1, -1]]], dtype=torch.float)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = loss_fn(model(images), targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    stem = next(n for n in before if n.startswith("backbone.body."))
    assert stem in changed and "backbone.fpn.inner_blocks.0.0.weight" in changed
    assert "head.cls_logits.weight" in changed


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "regnet_x_400mf"])
def test_state_dict_round_trip_and_refusal_under_another_backbone(name):
    torch.manual_seed(0)
    cfg = cfg_for(name)
    model = cfg.build_model(3).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    torch.manual_seed(1)
    again = cfg.build_model(3).eval()
    load_model_weights(again, state)
    images = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        assert torch.equal(model(images)["cls_logits"], again(images)["cls_logits"])
    # the weights do not fit another backbone, and the checkpoint's settings say why first
    other = cfg_for("resnet18")
    with pytest.raises(RuntimeError, match="different backbone"):
        load_model_weights(other.build_model(3), state)
    checkpoint = {"config": cfg.to_dict(), "model_type": model_type(cfg), "model": state}
    with pytest.raises(ValueError, match=f"backbone '{name}' vs 'resnet18'.*backbone={name}"):
        check_checkpoint(checkpoint, other, "c.pth")
    check_checkpoint(checkpoint, cfg_for(name), "c.pth")   # the same config loads it
