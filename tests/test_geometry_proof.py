"""Points, anchors and strides of each model's DEFAULT config, against values computed here by
hand (not by public/ops/anchors.py), at a padded input size divisible by 128 and at one
divisible by 32 only.

Each config is loaded as a user gets it, with only the backbone made tiny
(backbone=resnet18 pretrained=False fpn_channels=32 num_convs=1): a default moved by half a
stride (location/anchor offset 0.5 -> 0.0) or a swapped ``p6_from`` fails here.

Feature sizes, derived from the conv arithmetic: a k x k conv with stride 2 and padding
p = (k - 1) // 2 maps a side n to floor((n + 2p - k) / 2) + 1 = ceil(n / 2) for k = 7, p = 3
(ResNet's conv1), k = 3, p = 1 (its max pool, the first 3x3 conv of layer2..4, FPN's P6 and
P7 convs) and k = 1, p = 0 (the downsample shortcuts). Everything else has stride 1 and keeps
the size; FPN's top-down path resizes to the lateral's size. Nested ceil-halvings compose:
ceil(ceil(n / a) / b) = ceil(n / (a b)), so level l (stride s = 8, 16, 32, 64, 128) is
ceil(H / s) x ceil(W / s). At 224 x 352 (a multiple of 32, not of 128) P5..P7 are 7 x 11,
4 x 6 and 2 x 3 cells, whose grids reach past the input: the locations still sit at
(x + 0.5) * stride, not at padded-size // cells (torchvision's steps).
"""
import math

import pytest
import torch

from config import load_config

TINY = ["backbone=resnet18", "pretrained=False", "fpn_channels=32", "num_convs=1"]
STRIDES = (8, 16, 32, 64, 128)
SIZES = [(256, 384), (224, 352)]          # divisible by 128; by 32 only (e.g. 200 x 328 padded)
NUM_CLASSES = 3


def ceil_div(n: int, d: int) -> int:
    return -(-n // d)


def hand_feature_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Halve (rounding up) once per stride-2 conv: conv1, max pool, layer2, layer3, layer4 -> C3 at
    /8 after three, then P6, P7 one more each."""
    sizes, side = [], (h, w)
    for step in range(7):                               # conv1, pool, layer2 -> /8, layer3, layer4, p6, p7
        side = (ceil_div(side[0], 2), ceil_div(side[1], 2))
        if step >= 2:
            sizes.append(side)
    assert sizes == [(ceil_div(h, s), ceil_div(w, s)) for s in STRIDES]
    return sizes


def hand_points(h: int, w: int) -> tuple[list, list, list]:
    """Cell centres ((x + 0.5) * s, (y + 0.5) * s), level by level, row-major (y outer)."""
    points, strides, counts = [], [], []
    for (fh, fw), s in zip(hand_feature_sizes(h, w), STRIDES):
        for y in range(fh):
            for x in range(fw):
                points.append(((x + 0.5) * s, (y + 0.5) * s))
                strides.append(float(s))
        counts.append(fh * fw)
    return points, strides, counts


def hand_retinanet_anchors(h: int, w: int) -> tuple[list, list]:
    """9 anchors per location, centred at the cell centre: for each ratio r = height / width in
    (0.5, 1, 2) (outer), each size 4 * s * 2^(k/3), k = 0, 1, 2 (inner), width size / sqrt(r),
    height size * sqrt(r) (area size^2)."""
    anchors, counts = [], []
    for (fh, fw), s in zip(hand_feature_sizes(h, w), STRIDES):
        for y in range(fh):
            for x in range(fw):
                cx, cy = (x + 0.5) * s, (y + 0.5) * s
                for r in (0.5, 1.0, 2.0):
                    for k in range(3):
                        size = 4 * s * 2 ** (k / 3)
                        bw, bh = size / math.sqrt(r), size * math.sqrt(r)
                        anchors.append((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2))
        counts.append(fh * fw * 9)
    return anchors, counts


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def models(one_thread):
    out = {}
    for name in ("fcos", "atss", "retinanet"):
        torch.manual_seed(0)
        cfg = load_config(f"{name}/config.py", TINY)
        out[name] = (cfg, cfg.resolve().build_model(NUM_CLASSES).eval())
    return out


def run(model, h, w):
    with torch.no_grad():
        return model(torch.zeros(1, 3, h, w))


@pytest.mark.parametrize("h, w", SIZES)
def test_fcos_default_points_are_cell_centres(models, h, w):
    cfg, model = models["fcos"]
    assert cfg.location_offset == 0.5 and cfg.location_steps == "stride"
    out = run(model, h, w)
    points, strides, counts = hand_points(h, w)
    assert out["feature_sizes"] == hand_feature_sizes(h, w)
    assert list(out["num_per_level"]) == counts
    torch.testing.assert_close(out["points"], torch.tensor(points), rtol=0, atol=0)
    torch.testing.assert_close(out["strides"], torch.tensor(strides), rtol=0, atol=0)
    assert out["cls_logits"].shape == (1, sum(counts), NUM_CLASSES)


@pytest.mark.parametrize("h, w", SIZES)
def test_atss_default_anchors_are_squares_of_8_strides_at_cell_centres(models, h, w):
    cfg, model = models["atss"]
    assert cfg.anchor_offset == 0.5 and cfg.octave_base_scale == 8.0
    out = run(model, h, w)
    points, strides, counts = hand_points(h, w)
    anchors = [(x - 4 * s, y - 4 * s, x + 4 * s, y + 4 * s) for (x, y), s in zip(points, strides)]
    assert out["feature_sizes"] == hand_feature_sizes(h, w)
    assert list(out["num_per_level"]) == counts and tuple(out["level_strides"]) == STRIDES
    torch.testing.assert_close(out["points"], torch.tensor(points), rtol=0, atol=0)
    torch.testing.assert_close(out["strides"], torch.tensor(strides), rtol=0, atol=0)
    torch.testing.assert_close(out["anchors"], torch.tensor(anchors), rtol=0, atol=0)


@pytest.mark.parametrize("h, w", SIZES)
def test_retinanet_default_anchors_9_per_cell_centre(models, h, w):
    cfg, model = models["retinanet"]
    assert cfg.anchor_offset == 0.5 and cfg.location_steps == "stride"
    out = run(model, h, w)
    anchors, counts = hand_retinanet_anchors(h, w)
    assert out["feature_sizes"] == hand_feature_sizes(h, w)
    assert list(out["num_per_level"]) == counts and tuple(out["level_strides"]) == STRIDES
    torch.testing.assert_close(out["anchors"], torch.tensor(anchors), rtol=0, atol=1e-4)
    assert out["cls_logits"].shape == (1, sum(counts), NUM_CLASSES)
    # the centres, exactly
    a = out["anchors"]
    centres = torch.tensor([((x1 + x2) / 2, (y1 + y2) / 2) for x1, y1, x2, y2 in anchors])
    torch.testing.assert_close((a[:, :2] + a[:, 2:]) / 2, centres, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name, p6_from", [("fcos", "p5"), ("atss", "p5"), ("retinanet", "c5")])
def test_default_p6_source(models, name, p6_from):
    """P6 is a 3x3/2 conv of P5 (fpn_channels = 32 in) for FCOS/ATSS, of C5 (512 channels of
    resnet18's layer4) for RetinaNet; checked on the weights' shape and on the values."""
    cfg, model = models[name]
    assert cfg.p6_from == p6_from
    extra = model.backbone.fpn.extra_blocks
    assert extra.p6.in_channels == (32 if p6_from == "p5" else 512)
    assert extra.p6.weight.shape == (32, 32 if p6_from == "p5" else 512, 3, 3)
    captured = {}
    hook = model.backbone.body.register_forward_hook(lambda m, i, o: captured.update(c5=o["c5"]))
    try:
        with torch.no_grad():
            image = torch.randn(1, 3, 224, 352, generator=torch.Generator().manual_seed(0))
            levels = list(model.backbone(image).values())              # P3..P7
            source = levels[2] if p6_from == "p5" else captured["c5"]
            torch.testing.assert_close(levels[3], extra.p6(source))
    finally:
        hook.remove()
