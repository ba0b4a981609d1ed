"""FCOS assignment, loss and overfit tests (the torchvision oracle is test_fcos_oracle.py)."""
import pytest
import torch

from fcos.config_demo import Config as DemoConfig
from fcos.loss import FCOSLoss, fcos_assign, level_size_bounds


def test_assignment_by_hand():
    """Two levels, stride 8 and 16, locations at cell centres of a 32 x 32 image:
    level 0: x,y in {4, 12, 20, 28} (16 points), level 1: x,y in {8, 24} (4 points).
    Box A (0, 0, 16, 16), max side distance <= 16 -> level 0 range (0, 20).
    Box B (0, 0, 32, 32) reaches 28 from (4, 4) -> level 1 range (20, inf), and at level 0
    only its centre-near points (within 1.5 * 8 of (16, 16)) fall in range... but their max
    distance is 20 or more (> 20 is not < 20), so B has no level-0 locations.
    """
    from public.ops.anchors import grid_points
    points, strides, counts = grid_points([(4, 4), (2, 2)], [8, 16], 0.5, torch.device("cpu"))
    lower, upper = level_size_bounds(counts, (20,), points.device)
    targets = torch.tensor([[[0, 0, 16, 16, 1], [0, 0, 32, 32, 0], [-1, -1, -1, -1, -1]]], dtype=torch.float)
    matched = fcos_assign(points, strides, lower, upper, targets, center_sampling_radius=1.5)
    expected = torch.full((1, 20), -1)
    # Box A, centre (8, 8), radius 12: level-0 points (4,4), (12,4), (4,12), (12,12) are inside
    # A; their max distances are 12 < 20. (20, *) and (*, 20) lie outside A.
    for idx in (0, 1, 4, 5):
        expected[0, idx] = 0
    # Box B, centre (16, 16), radius 24 at level 1: all four level-1 points (8|24, 8|24) are
    # inside B with max distance 24 > 20.
    expected[0, 16:] = 1
    assert torch.equal(matched, expected)
    # Without center sampling nothing changes here; with radius 0.4 only points within
    # 0.4 * 8 = 3.2 px of A's centre (8, 8) would qualify: none.
    none_near = fcos_assign(points, strides, lower, upper, targets[:, :1], center_sampling_radius=0.4)
    assert (none_near[0, :16] == -1).all()


def test_min_area_wins_on_overlap():
    from public.ops.anchors import grid_points
    points, strides, counts = grid_points([(8, 8)], [8], 0.5, torch.device("cpu"))
    lower, upper = level_size_bounds(counts, (), points.device)
    big = [0, 0, 64, 64, 2]
    small = [16, 16, 48, 48, 3]
    matched = fcos_assign(points, strides, lower, upper, torch.tensor([[big, small]], dtype=torch.float), 0.0)
    inside_small = ((points > 16) & (points < 48)).all(1)
    assert (matched[0, inside_small] == 1).all() and (matched[0, ~inside_small] == 0).all()
    assert inside_small.sum() == 16


def test_empty_batch_gives_zero_box_loss():
    cfg = DemoConfig()
    model = cfg.resolve().build_model(5)
    outputs = model(torch.randn(2, 3, 64, 96))
    targets = torch.zeros(2, 0, 5)
    losses = FCOSLoss(cfg)(outputs, targets)
    assert losses["loss_box"].item() == 0.0 and losses["loss_centerness"].item() == 0.0
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"].item() > 0
    # Background only: the classification loss still trains (gradient reaches the classifier).
    sum(losses.values()).backward()
    assert model.head.cls_logits.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_overfit_small_fcos(tmp_path):
    """The demo FCOS overfits 4 demo images (``helpers.overfit_demo``)."""
    from helpers import overfit_demo
    ap, seconds = overfit_demo("fcos", tmp_path)
    print(f"FCOS overfit: AP {ap:.3f} in {seconds:.0f}s")
    assert ap >= 0.9, ap


@pytest.mark.parametrize("offset", [0.0, 0.5])
@pytest.mark.parametrize("counts", [(0, 0), (3, 0), (40, 200), (500, 7)])
def test_sparse_assignment_equals_dense(offset, counts):
    """The patch-gathering assignment gives exactly the dense answer, ties and borders included."""
    from public.ops.anchors import grid_points
    from public.ops.assign_fcos import fcos_assign_sparse
    generator = torch.Generator().manual_seed(sum(counts) + int(offset * 10))
    h, w = 200, 264
    sizes = [((h + s - 1) // s, (w + s - 1) // s) for s in (8, 16, 32, 64, 128)]
    points, strides, counts_per_level = grid_points(sizes, [8, 16, 32, 64, 128], offset, torch.device("cpu"))
    lower, upper = level_size_bounds(counts_per_level, (64, 128, 256, 512), points.device)
    M = max(counts)
    targets = torch.full((len(counts), M, 5), -1.0)
    for i, n in enumerate(counts):
        xy = torch.rand(n, 2, generator=generator) * torch.tensor([w - 4.0, h - 4.0])
        wh = 2 + torch.rand(n, 2, generator=generator) ** 2 * torch.tensor([w * 0.8, h * 0.8])
        boxes = torch.cat([xy, xy + wh], dim=1).round()           # integer corners: ties on grid lines
        boxes[: n // 4] = boxes[n // 8: n // 8 + n // 4].clone()   # duplicated boxes: equal-area ties
        boxes[n // 4: n // 4 + 3, :] = torch.tensor([-20.0, -20.0, w + 20.0, h + 20.0])  # beyond the image
        targets[i, :n, :4] = boxes
        targets[i, :n, 4] = torch.randint(0, 5, (n,), generator=generator).float()
    dense = fcos_assign(points, strides, lower, upper, targets, 1.5)
    sparse = fcos_assign_sparse(points, strides, lower, upper, targets, 1.5, sizes)
    assert torch.equal(sparse, dense)
    if sum(counts):
        assert (dense >= 0).sum() > 0


@pytest.mark.parametrize("bias, alive", [(1.0, True), (0.0, False)])
def test_relu_regression_starts_alive_from_scratch(bias, alive):
    """From random init, every distance of the relu regression starts above 0 (so the GIoU loss
    has a gradient) with the default reg_bias_init; with the official 0 most boxes start with
    a side at exactly 0, which gives a GIoU loss of 1 and no gradient."""
    from fcos.config import Config
    torch.manual_seed(0)
    cfg = Config(backbone="resnet18", pretrained=False, fpn_channels=64, num_convs=2, reg_bias_init=bias)
    model = cfg.resolve().build_model(3).train()
    images = torch.randn(2, 3, 128, 128)
    targets = torch.tensor([[[10, 20, 60, 70, 0], [70, 30, 120, 100, 1]],
                            [[30, 30, 90, 110, 2], [-1, -1, -1, -1, -1]]], dtype=torch.float)
    outputs = model(images)
    all_sides = (outputs["box_reg"] > 0).all(dim=-1).float().mean().item()     # fraction of live boxes
    loss_box = FCOSLoss(cfg)(outputs, targets)["loss_box"]
    if alive:
        assert all_sides > 0.99
        assert loss_box.item() < 0.95
        loss_box.backward()
        assert model.head.bbox_pred.weight.grad.abs().sum() > 0
    else:
        assert all_sides < 0.5


def test_decoder_threshold_is_strict():
    """score_thresh_on "cls" (the FCOS code's pre-NMS threshold): a class probability equal to
    score_thresh (0.5: logit 0) is not a candidate, one above it is. Its box: point (20, 4),
    stride 8, distances (1, 0.5, 1, 0.5) strides -> [12, 0, 28, 8]; score sqrt(sigmoid(0.5) x 0.5)."""
    from fcos.decoder import FCOSDecoder
    cfg = DemoConfig(score_thresh=0.5, score_thresh_on="cls", norm_reg_targets=True)
    outputs = {"cls_logits": torch.full((1, 3, 2), -5.0), "centerness": torch.zeros(1, 3),
               "box_reg": torch.tensor([[[1.0, 0.5, 1.0, 0.5]] * 3]),
               "points": torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0]]), "strides": torch.full((3,), 8.0),
               "num_per_level": [3]}
    outputs["cls_logits"][0, 0, 0] = 0.0          # probability 0.5 exactly: not above the threshold
    outputs["cls_logits"][0, 2, 1] = 0.5
    result = FCOSDecoder(cfg)(outputs, torch.tensor([[32, 32]]))[0]
    assert result["labels"].tolist() == [1]
    torch.testing.assert_close(result["boxes"], torch.tensor([[12.0, 0.0, 28.0, 8.0]]))
    torch.testing.assert_close(result["scores"], torch.sigmoid(torch.tensor([0.5])).mul(0.5).sqrt())
