"""densedet RetinaNet against torchvision's RetinaNet (v1 and v2): same weights -> same outputs,
same inputs -> same losses, same decoder settings -> same detections; plus the shared pieces
it brought to public/ (anchors, box coder, max-IoU matcher) on cases checkable by eye."""
import math

import pytest
import torch
from torchvision.models.detection import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from public.ops import assign_max_iou as matcher_module
from public.ops.anchors import grid_anchors, retinanet_anchor_sizes
from public.ops.box_coder import decode_deltas, encode_deltas
from public.ops.assign_max_iou import max_iou_assign, max_iou_assign_sparse
from helpers import demo_subset, load_converted, perturb_for_oracle, random_targets, with_coco_names
from retinanet.config import Config
from retinanet.config_demo import Config as DemoConfig
from public.models.torchvision_compat import TORCHVISION_PREPROCESSING
from retinanet.convert import TORCHVISION_SETTINGS, TORCHVISION_V2_SETTINGS, from_torchvision

NUM_CLASSES = 91  # torchvision's COCO layout: class index = category id
STRIDES = (8, 16, 32, 64, 128)
BUILDERS = {"v1": retinanet_resnet50_fpn, "v2": retinanet_resnet50_fpn_v2}


@pytest.fixture(scope="module", params=["v1", "v2"])
def models(request):
    torch.manual_seed(0)
    tv = BUILDERS[request.param](weights=None, weights_backbone=None, num_classes=NUM_CLASSES).eval()
    perturb_for_oracle(tv)
    cfg = Config(pretrained=False)
    state, settings = from_torchvision(tv.state_dict(), list(range(NUM_CLASSES)))
    assert settings == {**(TORCHVISION_SETTINGS if request.param == "v1" else TORCHVISION_V2_SETTINGS),
                        **TORCHVISION_PREPROCESSING}
    cfg.update(settings)
    ours = load_converted(cfg, state, NUM_CLASSES)
    return tv, ours, cfg


def _targets(batch_size, image_size, counts, generator):
    return random_targets(batch_size, image_size, counts, NUM_CLASSES, generator)


def _tv_anchors(tv, batch_size, image_size, grid_sizes, image_sizes=None):
    feature_maps = [torch.zeros(batch_size, 1, h, w) for h, w in grid_sizes]
    images = ImageList(torch.zeros(batch_size, 3, *image_size), image_sizes or [image_size] * batch_size)
    return tv.anchor_generator(images, feature_maps)


def _random_outputs(tv, cfg, batch_size, image_size, generator):
    """Random raw outputs on the P3-P7 anchors of an image, in both layouts, plus tv's anchors."""
    h, w = image_size
    grid_sizes = [((h + s - 1) // s, (w + s - 1) // s) for s in STRIDES]
    sizes = retinanet_anchor_sizes(cfg.anchor_octave_base, cfg.anchor_scales_per_octave, STRIDES, cfg.anchor_int_sizes)
    anchors, num_per_level = grid_anchors(grid_sizes, STRIDES, sizes, cfg.aspect_ratios, cfg.anchor_offset,
                                          torch.device("cpu"), round_corners=cfg.anchor_round_corners)
    N = anchors.shape[0]
    head = {"cls_logits": torch.randn(batch_size, N, NUM_CLASSES, generator=generator) * 2 - 3,
            "bbox_regression": torch.randn(batch_size, N, 4, generator=generator) * 0.3}
    ours = {"cls_logits": head["cls_logits"], "box_reg": head["bbox_regression"], "anchors": anchors,
            "num_per_level": num_per_level, "feature_sizes": grid_sizes, "level_strides": STRIDES}
    tv_anchors = _tv_anchors(tv, batch_size, image_size, grid_sizes)
    assert torch.equal(tv_anchors[0], anchors)
    return head, ours, tv_anchors


def test_head_outputs_match(models):
    tv, ours, _ = models
    # Sides divisible by 128: torchvision derives each level's stride as image_size // grid_size,
    # which is not the level's true stride when P7 is rounded up (e.g. 320 // 3 = 106).
    images = torch.randn(1, 3, 128, 256)  # batching is exercised by the loss and decoder tests
    with torch.no_grad():
        features = list(tv.backbone(images).values())
        expected = tv.head(features)
        got = ours(images)
    N = (512 + 128 + 32 + 8 + 2) * 9
    assert got["cls_logits"].shape == expected["cls_logits"].shape == (1, N, NUM_CLASSES)
    assert got["box_reg"].shape == (1, N, 4) and got["anchors"].shape == (N, 4)
    assert got["num_per_level"] == [512 * 9, 128 * 9, 32 * 9, 8 * 9, 2 * 9]
    torch.testing.assert_close(got["cls_logits"], expected["cls_logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(got["box_reg"], expected["bbox_regression"], atol=1e-4, rtol=0)
    anchors = tv.anchor_generator(ImageList(images, [(128, 256)]), features)[0]
    assert torch.equal(got["anchors"], anchors)


@pytest.mark.parametrize("counts", [(60, 45, 200), (2, 1, 3), (0, 0, 0), (0, 7, 150)],
                         ids=["crowded", "sparse", "empty", "mixed"])
def test_loss_matches_torchvision(models, counts):
    tv, _, cfg = models
    generator = torch.Generator().manual_seed(sum(counts))
    image_size = (256, 384)
    head, outputs, anchors = _random_outputs(tv, cfg, len(counts), image_size, generator)
    tv_targets, targets = _targets(len(counts), image_size, counts, generator)
    expected = tv.compute_loss(tv_targets, head, anchors)
    got = cfg.build_loss()(outputs, targets)
    torch.testing.assert_close(got["loss_cls"], expected["classification"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got["loss_box"], expected["bbox_regression"], rtol=1e-5, atol=1e-7)
    if sum(counts) == 0:
        assert got["loss_box"].item() == 0.0
    else:
        assert got["loss_box"].item() > 0


def test_decoder_matches_torchvision(models):
    tv, _, cfg = models
    generator = torch.Generator().manual_seed(3)
    image_sizes = [(384, 512), (300, 390)]  # the second image is padded in the batch
    head, outputs, _ = _random_outputs(tv, cfg, 2, (384, 512), generator)
    head["cls_logits"] += 1.0  # in place, shared by both layouts: plenty of candidates above 0.05
    grid_sizes = [((384 + s - 1) // s, (512 + s - 1) // s) for s in STRIDES]
    anchors = _tv_anchors(tv, 2, (384, 512), grid_sizes, image_sizes)
    split = outputs["num_per_level"]
    split_head = {k: list(v.split(split, dim=1)) for k, v in head.items()}
    split_anchors = [list(a.split(split)) for a in anchors]
    expected = tv.postprocess_detections(split_head, split_anchors, image_sizes)
    got = cfg.build_decoder()(outputs, torch.tensor(image_sizes))
    for e, g in zip(expected, got):
        assert len(e["boxes"]) == cfg.detections_per_img == 300  # enough candidates to fill it
        # Sigmoids of large logits tie exactly in float32 (0.9960 for several classes); the
        # order of tied detections is arbitrary in both, so compare them sorted by label within a score.
        e, g = _by_score_then_label(e), _by_score_then_label(g)
        torch.testing.assert_close(g["boxes"], e["boxes"])
        torch.testing.assert_close(g["scores"], e["scores"])
        assert torch.equal(g["labels"], e["labels"])


def _by_score_then_label(detections):
    order = torch.sort(detections["labels"], stable=True).indices
    order = order[torch.sort(detections["scores"][order], descending=True, stable=True).indices]
    return {k: v[order] for k, v in detections.items()}


# ---- conversion ---------------------------------------------------------------------------

def test_convert_picks_class_rows_per_anchor(models):
    tv, _, _ = models
    ids = [1, 3, 90]
    state, _ = from_torchvision(tv.state_dict(), ids)
    weight = tv.head.classification_head.cls_logits.weight.detach()      # [9 * 91, 256, 3, 3]
    bias = tv.head.classification_head.cls_logits.bias.detach()
    assert state["head.cls_logits.weight"].shape == (9 * 3, 256, 3, 3)
    for anchor in range(9):
        for row, category in enumerate(ids):
            assert torch.equal(state["head.cls_logits.weight"][anchor * 3 + row], weight[anchor * 91 + category])
            assert state["head.cls_logits.bias"][anchor * 3 + row] == bias[anchor * 91 + category]
    # An id without a row: the class layer is left out for the caller to re-initialise.
    state, _ = from_torchvision(tv.state_dict(), [1, 200])
    assert "head.cls_logits.weight" not in state


def test_convert_legacy_layout_and_unknown_dicts():
    """The pre-0.13 v1 layout (the published COCO file) converts to the same tensors."""
    torch.manual_seed(0)
    current = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).state_dict()
    legacy = {}
    for key, value in current.items():  # conv.{i}.0.* -> conv.{2i}.* as in the published COCO v1 file
        for prefix in ("head.classification_head.conv.", "head.regression_head.conv."):
            if key.startswith(prefix):
                block, _, param = key[len(prefix):].split(".")
                key = f"{prefix}{2 * int(block)}.{param}"
        legacy[key] = value
    new_state, _ = from_torchvision(current, list(range(NUM_CLASSES)))
    old_state, settings = from_torchvision(legacy, list(range(NUM_CLASSES)))
    assert settings == {**TORCHVISION_SETTINGS, **TORCHVISION_PREPROCESSING} and new_state.keys() == old_state.keys()
    for key in new_state:
        if key.endswith("running_var") and key.startswith("backbone.body."):
            # torchvision runs the published COCO v1 weights with FrozenBatchNorm eps = 0
            torch.testing.assert_close(old_state[key] + 1e-5, new_state[key])
        else:
            assert torch.equal(old_state[key], new_state[key]), key
    assert from_torchvision({"backbone.body.conv1.weight": torch.zeros(1)}, [1]) is None
    fcos_like = dict(current, **{"head.regression_head.bbox_ctrness.weight": torch.zeros(1)})
    assert from_torchvision(fcos_like, [1]) is None


# ---- anchors and box coder -----------------------------------------------------------------

def test_anchor_sizes_and_order():
    assert retinanet_anchor_sizes()[0] == pytest.approx((32.0, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)))
    assert retinanet_anchor_sizes(integer=True) == [(32, 40, 50), (64, 80, 101), (128, 161, 203),
                                                    (256, 322, 406), (512, 645, 812)]
    anchors, num_per_level = grid_anchors([(2, 3)], [16], [(32.0, 64.0)], (0.5, 2.0), 0.5, torch.device("cpu"))
    assert num_per_level == [2 * 3 * 4] and anchors.shape == (24, 4)
    # Location (x=1, y=0) is the second; its centre is ((1 + 0.5) * 16, 0.5 * 16) = (24, 8).
    second = anchors[4:8]
    torch.testing.assert_close((second[:, :2] + second[:, 2:]) / 2, torch.tensor([[24.0, 8.0]] * 4))
    # Ratio major, size minor: (0.5, 32), (0.5, 64), (2, 32), (2, 64); ratio = height / width.
    w, h = second[:, 2] - second[:, 0], second[:, 3] - second[:, 1]
    torch.testing.assert_close(h / w, torch.tensor([0.5, 0.5, 2.0, 2.0]))
    torch.testing.assert_close((w * h).sqrt(), torch.tensor([32.0, 64.0, 32.0, 64.0]))


def test_encode_decode_round_trip():
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(3, 50, 2, generator=generator) * 300
    anchors = torch.cat([xy, xy + 8 + torch.rand(3, 50, 2, generator=generator) * 200], -1)  # [3, 50, 4]
    xy = torch.rand(3, 50, 2, generator=generator) * 300
    boxes = torch.cat([xy, xy + 2 + torch.rand(3, 50, 2, generator=generator) * 300], -1)
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        deltas = encode_deltas(anchors, boxes, weights)                       # [3, 50, 4]
        assert deltas.shape == (3, 50, 4)
        torch.testing.assert_close(decode_deltas(anchors, deltas, weights), boxes, atol=1e-3, rtol=1e-5)
        coder = BoxCoder(weights)
        flat_a, flat_b = anchors.reshape(-1, 4), boxes.reshape(-1, 4)
        torch.testing.assert_close(deltas.reshape(-1, 4), coder.encode_single(flat_b, flat_a))
        torch.testing.assert_close(decode_deltas(anchors, deltas, weights).reshape(-1, 4),
                                   coder.decode_single(deltas.reshape(-1, 4), flat_a))
    # Broadcast: one anchor set [N, 4] against a batch of boxes [B, N, 4].
    torch.testing.assert_close(encode_deltas(anchors[0], boxes), encode_deltas(anchors[0].expand(3, 50, 4), boxes))
    # Huge width deltas are clamped at log(1000 / 16) instead of overflowing.
    big = decode_deltas(torch.tensor([[0.0, 0.0, 16.0, 16.0]]), torch.tensor([[0.0, 0.0, 100.0, 100.0]]))
    torch.testing.assert_close(big, torch.tensor([[-492.0, -492.0, 508.0, 508.0]]))
    assert math.isclose(math.log(1000 / 16), 4.135166556742356)


# ---- matcher ---------------------------------------------------------------------------------

ANCHORS = torch.tensor([[0, 0, 10, 10],     # a0
                        [10, 0, 20, 10],    # a1
                        [0, 10, 10, 20],    # a2
                        [20, 20, 30, 30],   # a3
                        [4, 0, 14, 10]],    # a4
                       dtype=torch.float32)
TARGETS = torch.tensor([
    # image 0: a0 = g0 exactly (IoU 1); a4 overlaps g0 by 60 / 140 = 0.43 (ignored);
    #          g1's best anchor is a3 at IoU 100 / 400 = 0.25 < 0.4, which it still gets.
    [[0, 0, 10, 10, 1], [20, 20, 40, 40, 2], [-1, -1, -1, -1, -1]],
    # image 1: g = [0,0,20,20] overlaps a0, a1, a2, a4 at 0.25 each: a four-way tie of best anchors;
    #          h = [0,0,10,12] is a0's match (100 / 120 = 0.83) and a4's best box (60 / 160 = 0.375 > 0.25),
    #          so the tied anchors a0 and a4 take h (their own best box), a1 and a2 take g.
    [[0, 0, 20, 20, 0], [0, 0, 10, 12, 3], [-1, -1, -1, -1, -1]],
    # image 2: no boxes, only padding
    [[-1, -1, -1, -1, -1]] * 3,
], dtype=torch.float32)


def test_matcher_by_eye():
    matched = max_iou_assign(ANCHORS, TARGETS, 0.5, 0.4, allow_low_quality_matches=True)
    assert matched.dtype == torch.int64
    assert matched.tolist() == [[0, -1, -1, 1, -2],
                                [1, 0, 0, -1, 1],
                                [-1, -1, -1, -1, -1]]
    matched = max_iou_assign(ANCHORS, TARGETS, 0.5, 0.4, allow_low_quality_matches=False)
    assert matched.tolist() == [[0, -1, -1, -1, -2],
                                [1, -1, -1, -1, -1],
                                [-1, -1, -1, -1, -1]]
    # torchvision's Matcher agrees on the images that have boxes.
    for image, n in ((0, 2), (1, 2)):
        expected = Matcher(0.5, 0.4, True)(box_iou(TARGETS[image, :n, :4], ANCHORS))
        assert torch.equal(max_iou_assign(ANCHORS, TARGETS[image:image + 1, :n])[0], expected)
    # No box rows at all.
    assert max_iou_assign(ANCHORS, torch.zeros(2, 0, 5)).tolist() == [[-1] * 5] * 2


def test_matcher_chunked_equals_unchunked(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    sizes = [(16, 32), (8, 16), (4, 8), (2, 4), (1, 2)]
    anchors, _ = grid_anchors(sizes, STRIDES, retinanet_anchor_sizes(), (0.5, 1.0, 2.0), 0.5, torch.device("cpu"))
    _, targets = _targets(3, (128, 256), (500, 0, 37), generator)
    whole = max_iou_assign(anchors, targets)
    monkeypatch.setattr(matcher_module, "ASSIGN_CHUNK_ELEMENTS", 3 * 500 * 1000)  # 1000 anchors per block
    assert torch.equal(max_iou_assign(anchors, targets), whole)
    assert (whole[0] >= 0).sum() > 400 and (whole[1] == -1).all()
    expected = Matcher(0.5, 0.4, True)(box_iou(targets[2, :37, :4], anchors))
    assert torch.equal(whole[2], expected)


def _grid_case(image_size, torchvision_layout):
    """Anchors on the P3-P7 grids of an image: torchvision's (centres at x * stride, integer
    sizes, rounded corners) or the paper's (centres at (x + 0.5) * stride, exact sizes)."""
    grid_sizes = [(-(-image_size[0] // s), -(-image_size[1] // s)) for s in STRIDES]
    sizes = retinanet_anchor_sizes(integer=torchvision_layout)
    anchors, num_per_level = grid_anchors(grid_sizes, STRIDES, sizes, (0.5, 1.0, 2.0), 0.0 if torchvision_layout else 0.5,
                                          torch.device("cpu"), round_corners=torchvision_layout)
    return anchors, num_per_level, grid_sizes


def _boxes_of_kind(kind, batch_size, count, image_size, generator):
    """[B, M, 5] boxes that stress the sparse matcher's windows, a fifth of the rows padding."""
    h, w = image_size
    B, M = batch_size, count
    centre = torch.rand(B, M, 2, generator=generator) * torch.tensor([w, h])
    if kind == "mixed":      # 1 px to 60% of the image, mostly small
        size = 1 + torch.rand(B, M, 2, generator=generator) ** 2 * torch.tensor([w * 0.6, h * 0.6])
    elif kind == "tiny":     # far below the smallest anchor: best IoU tiny, many tied anchors
        size = torch.rand(B, M, 2, generator=generator) * 6
    elif kind == "thin":     # 1-11 px by up to the image side: long plateaus of tied anchors
        size = torch.stack([1 + torch.rand(B, M, generator=generator) * 10, torch.rand(B, M, generator=generator) * h], -1)
        size = torch.where(torch.rand(B, M, 1, generator=generator) < 0.5, size, size.flip(-1))
    else:                    # "aligned": corners on the P3 grid, exact ties everywhere
        centre = torch.randint(0, w // 8, (B, M, 2), generator=generator).float() * 8
        size = torch.randint(0, 12, (B, M, 2), generator=generator).float() * 8  # some of zero width
    corner = centre - size / 2
    boxes = torch.cat([corner, corner + size, torch.randint(0, 3, (B, M, 1), generator=generator).float()], -1)
    boxes[torch.rand(B, M, generator=generator) < 0.2] = -1
    return boxes


@pytest.mark.parametrize("torchvision_layout", [True, False], ids=["tv_anchors", "paper_anchors"])
@pytest.mark.parametrize("kind", ["mixed", "tiny", "thin", "aligned"])
def test_sparse_matcher_equals_dense(torchvision_layout, kind):
    """The sparse matcher gives exactly the dense rule's answer, thresholds and ties included."""
    generator = torch.Generator().manual_seed(len(kind) + torchvision_layout)
    low_quality = 0
    for image_size in ((128, 256), (200, 136)):
        anchors, num_per_level, grid_sizes = _grid_case(image_size, torchvision_layout)
        for count in (1, 9, 80):
            targets = _boxes_of_kind(kind, 3, count, image_size, generator)
            for fg, bg, low in ((0.5, 0.4, True), (0.5, 0.4, False), (0.6, 0.3, True), (0.5, 0.5, True)):
                dense = max_iou_assign(anchors, targets, fg, bg, low)
                sparse = max_iou_assign_sparse(anchors, targets, num_per_level, grid_sizes, STRIDES, fg, bg, low)
                assert torch.equal(sparse, dense), (image_size, count, fg, bg, low)
            low_quality += (max_iou_assign(anchors, targets, 0.5, 0.4, True) >= 0).sum() - \
                (max_iou_assign(anchors, targets, 0.5, 0.4, False) >= 0).sum()
    assert low_quality > 0   # the cases exercise low-quality matches


def test_sparse_matcher_against_torchvision_at_500_boxes(monkeypatch):
    generator = torch.Generator().manual_seed(5)
    image_size = (256, 384)
    anchors, num_per_level, grid_sizes = _grid_case(image_size, True)
    _, targets = _targets(2, image_size, (500, 230), generator)
    sparse = max_iou_assign_sparse(anchors, targets, num_per_level, grid_sizes, STRIDES)
    for image, n in ((0, 500), (1, 230)):
        assert torch.equal(sparse[image], Matcher(0.5, 0.4, True)(box_iou(targets[image, :n, :4], anchors)))
    # Own-best recomputation (low-quality anchors below 0.4) in blocks gives the same answer.
    recomputed, own_best = [], matcher_module._own_best_box
    monkeypatch.setattr(matcher_module, "_own_best_box", lambda *a: recomputed.append(a[-1].numel()) or own_best(*a))
    monkeypatch.setattr(matcher_module, "ASSIGN_CHUNK_ELEMENTS", 2 * 500 * 7)   # 7 anchors per image per block
    assert torch.equal(max_iou_assign_sparse(anchors, targets, num_per_level, grid_sizes, STRIDES), sparse)
    assert recomputed and recomputed[0] > 7
    with pytest.raises(ValueError, match="covers"):
        max_iou_assign_sparse(anchors[:-9], targets, num_per_level, grid_sizes, STRIDES)


# ---- loss edge cases -------------------------------------------------------------------------

@pytest.mark.parametrize("box_loss", ["smooth_l1", "l1", "giou"])
@pytest.mark.parametrize("normalizer", ["batch", "per_image"])
def test_images_without_boxes(box_loss, normalizer):
    cfg = Config(box_loss=box_loss, loss_normalizer=normalizer)
    generator = torch.Generator().manual_seed(0)
    anchors, num_per_level = grid_anchors([(4, 4), (2, 2)], (8, 16), [(32.0,), (64.0,)], (1.0,), 0.5, torch.device("cpu"))
    outputs = {"cls_logits": torch.randn(2, 20, 3, generator=generator, requires_grad=True),
               "box_reg": torch.randn(2, 20, 4, generator=generator, requires_grad=True),
               "anchors": anchors, "num_per_level": num_per_level}
    for targets in (torch.zeros(2, 0, 5), torch.full((2, 4, 5), -1.0)):
        losses = cfg.build_loss()(outputs, targets)
        assert set(losses) == {"loss_cls", "loss_box"}
        assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
        assert losses["loss_box"].item() == 0.0
        sum(losses.values()).backward()
        assert torch.isfinite(outputs["cls_logits"].grad).all()


def test_batch_normalizer_counts_positives_over_the_batch():
    """Two images, 1 and 3 foreground anchors: "batch" divides by 4, "per_image" by 1 and 3."""
    anchors = ANCHORS
    targets = torch.tensor([[[0, 0, 10, 10, 0], [-1] * 5],
                            [[0, 0, 10, 10, 0], [10, 0, 20, 10, 1]]], dtype=torch.float32)
    targets[1, 0] = torch.tensor([0, 10, 10, 20, 0])                   # a2
    outputs = {"cls_logits": torch.full((2, 5, 2), -4.0), "box_reg": torch.zeros(2, 5, 4),
               "anchors": anchors, "num_per_level": [5]}
    outputs["box_reg"][1, 1, 0] = 0.5                                  # a1's dx off by 0.5 in image 1
    matched = max_iou_assign(anchors, targets)
    assert (matched >= 0).sum(1).tolist() == [1, 2]
    batch = Config(box_loss="l1", loss_normalizer="batch").build_loss()(outputs, targets)
    per_image = Config(box_loss="l1", loss_normalizer="per_image").build_loss()(outputs, targets)
    torch.testing.assert_close(batch["loss_box"], torch.tensor(0.5 / 3))
    torch.testing.assert_close(per_image["loss_box"], torch.tensor((0.0 / 1 + 0.5 / 2) / 2))
    # one foreground anchor in the batch: divided by 1 (the floor of 1 is not reached)
    one = {**outputs, "cls_logits": outputs["cls_logits"][1:], "box_reg": outputs["box_reg"][1:]}
    single = Config(box_loss="l1", loss_normalizer="batch").build_loss()(one, targets[1:, 1:])
    torch.testing.assert_close(single["loss_box"], torch.tensor(0.5))


def test_decoder_threshold_is_strict():
    """A probability equal to score_thresh (0.5: logit 0) is not a candidate; above it is: a1."""
    outputs = {"cls_logits": torch.full((1, 5, 2), -10.0), "box_reg": torch.zeros(1, 5, 4),
               "anchors": ANCHORS, "num_per_level": [5]}
    outputs["cls_logits"][0, 0, 0] = 0.0
    outputs["cls_logits"][0, 1, 1] = 0.5
    result = Config(score_thresh=0.5).build_decoder()(outputs, torch.tensor([[40, 40]]))[0]
    assert result["labels"].tolist() == [1]
    torch.testing.assert_close(result["boxes"], ANCHORS[1:2].float())


# ---- the demo model end to end ----------------------------------------------------------------

def test_demo_model_shapes_and_empty_batch():
    cfg = DemoConfig()
    model = cfg.resolve().build_model(5)
    outputs = model(torch.randn(2, 3, 64, 96))
    # Octave base 2: P3 anchors of 16, 20.2 and 25.4 px; 9 per location of 8x12 + 4x6 + 2x3 + 1x2 + 1x1.
    N = (96 + 24 + 6 + 2 + 1) * 9
    assert outputs["cls_logits"].shape == (2, N, 5) and outputs["box_reg"].shape == (2, N, 4)
    assert outputs["anchors"].shape == (N, 4) and sum(outputs["num_per_level"]) == N
    first = outputs["anchors"][:3]                                     # ratio 0.5, the three sizes
    torch.testing.assert_close(((first[:, 2] - first[:, 0]) * (first[:, 3] - first[:, 1])).sqrt(),
                               torch.tensor([16.0, 16 * 2 ** (1 / 3), 16 * 2 ** (2 / 3)]))
    losses = cfg.build_loss()(outputs, torch.zeros(2, 0, 5))
    assert losses["loss_box"].item() == 0.0
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"].item() > 0
    # Background only: the classification loss still trains (gradient reaches the classifier).
    sum(losses.values()).backward()
    assert model.head.cls_logits.weight.grad.abs().sum() > 0
    detections = cfg.build_decoder().eval()(outputs, torch.tensor([[64, 96], [50, 70]]))
    assert len(detections) == 2 and all(d["boxes"].shape[1] == 4 for d in detections)


@pytest.mark.slow
def test_overfit_small_retinanet(tmp_path):
    """The demo RetinaNet overfits 4 demo images (``helpers.overfit_demo``)."""
    from helpers import overfit_demo
    ap, seconds = overfit_demo("retinanet", tmp_path)
    print(f"RetinaNet overfit: AP {ap:.3f} in {seconds:.0f}s")
    assert ap >= 0.9, ap


@pytest.mark.slow
def test_cli_trains_and_evaluates_a_torchvision_file(tmp_path, capsys):
    """train.py runs RetinaNet end to end, and --evaluate converts torchvision's v2 file (train.py's
    main, in this process)."""
    import json

    import train as train_cli

    def run(args):
        capsys.readouterr()
        code = train_cli.main(args)
        out, err = capsys.readouterr()
        assert code == 0, out[-3000:] + err[-3000:]
        return out

    train_images, train_json = demo_subset(tmp_path, 8, "train")
    val_images, val_json = demo_subset(tmp_path, 4, "val")
    common = [f"train_images={train_images}", f"train_annotations={train_json}", f"val_images={val_images}",
              f"val_annotations={val_json}", "batch_size=4", "num_workers=0", "min_size=(128,)",
              "test_min_size=128", "flops=False", "warmup_iters=2", "log_interval=1"]
    work_dir = tmp_path / "run"
    out = run(["--config", "retinanet/config_demo.py", *common, f"work_dir={work_dir}", "epochs=1"])
    records = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1] and "loss_cls" in records[0] and "loss_box" in records[0]
    assert (work_dir / "best.pth").is_file() and "epoch 1: mAP" in out

    path = tmp_path / "retinanet_resnet50_fpn_v2_coco.pth"
    torch.save(retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None).state_dict(), path)
    coco_named = [f"val_annotations={with_coco_names(val_json, tmp_path)}" if c.startswith("val_annotations=") else c
                  for c in common]
    out = run(["--config", "retinanet/config.py", *coco_named, f"work_dir={tmp_path / 'tv'}", "--evaluate", str(path)])
    assert "converted foreign checkpoint" in out and "'head_norm': 'GN'" in out and "'box_loss': 'giou'" in out
    assert "AP @[IoU=0.50:0.95 | area=   all | maxDets=100]" in out and "per-class AP" in out
