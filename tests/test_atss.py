"""ATSS: the fast assignment against a slow reference written from the paper, hand-checked
cases, the SSC / IoU options against FCOS's rule and torchvision's Matcher, deformable convs
that equal plain convs at init, and losses / decoding on cases computed by hand."""
import math

import pytest
import torch
import torchvision
from torchvision.models.detection._utils import Matcher

from atss.assign import atss_assign, topk_assign
from atss.config_demo import Config as DemoConfig
from atss.decoder import ATSSDecoder
from atss.loss import ATSSLoss
from atss.model import FPN_STRIDES, ATSSHead, square_anchors
from fcos.loss import fcos_assign, level_size_bounds
from public.models.backbone import build_backbone
from public.models.dcn import DeformConv
from public.ops.anchors import grid_points
from public.ops.box_coder import BOX_WEIGHTS, decode_boxes, encode_deltas

LN2 = math.log(2)


# ---- a slow reference, straight from the paper ----------------------------------------------
def reference_atss_image(anchors, num_per_level, targets, topk):
    """ATSS (paper, Algorithm 1) for one image with a loop per box and per level.

    anchors [N, 4], targets [M, 5] (pad rows label -1) -> list of N ints, -1 background.
    """
    N = anchors.shape[0]
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    claims = [[] for _ in range(N)]                       # (-IoU, box) of every box claiming an anchor
    for j in range(targets.shape[0]):
        box, label = targets[j, :4], targets[j, 4].item()
        if label < 0:
            continue
        iou = torchvision.ops.box_iou(anchors, box[None])[:, 0].tolist()
        box_centre = (box[:2] + box[2:]) / 2
        # lines 3-6: the k anchors of each level closest to the box centre (lower index on ties)
        candidates, start = [], 0
        for count in num_per_level:
            d = (centres[start:start + count] - box_centre).pow(2).sum(1).sqrt().tolist()
            order = sorted(range(count), key=lambda i: (d[i], i))
            candidates += [start + i for i in order[:min(topk, count)]]
            start += count
        # lines 7-10: threshold = mean + std of the candidates' IoUs (float64, as atss_assign)
        cand_iou = torch.tensor([iou[c] for c in candidates], dtype=torch.float64)
        threshold = (cand_iou.mean() + cand_iou.std()).item()
        # lines 11-15: IoU >= threshold and centre inside the box
        x1, y1, x2, y2 = box.tolist()
        for c in candidates:
            cx, cy = centres[c].tolist()
            if iou[c] >= threshold and min(cx - x1, cy - y1, x2 - cx, y2 - cy) > 0.01:
                claims[c].append((-iou[c], j))
    # several claims: highest IoU, then lowest box index
    return [min(c)[1] if c else -1 for c in claims]


def grid_sizes_for(image_size):
    h, w = image_size
    return [((h + s - 1) // s, (w + s - 1) // s) for s in FPN_STRIDES]


def grid_anchors_for(image_size, octave_base_scale=8.0, offset=0.5):
    points, strides, num_per_level = grid_points(grid_sizes_for(image_size), FPN_STRIDES, offset, torch.device("cpu"))
    return square_anchors(points, strides, octave_base_scale), points, strides, num_per_level


def random_targets(counts, image_size, generator, snap=False):
    """[B, M, 5] random boxes (some snapped to a 4-px grid so that centre distances tie, some
    duplicated, one tiny, one covering the image), pad rows -1."""
    h, w = image_size
    M = max(counts) if counts else 0
    targets = torch.full((len(counts), M, 5), -1.0)
    for i, n in enumerate(counts):
        if n == 0:
            continue
        xy = torch.rand(n, 2, generator=generator) * torch.tensor([w * 0.9, h * 0.9])
        wh = 2 + torch.rand(n, 2, generator=generator) * torch.tensor([w * 0.5, h * 0.5])
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w, h]))], dim=1)
        if snap:
            boxes = (boxes / 4).round() * 4
            boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 4)
        if n >= 4:
            boxes[1] = boxes[0]                                       # duplicate box
            boxes[2] = torch.tensor([w / 2 - 1, h / 2 - 1, w / 2 + 1, h / 2 + 1])  # smaller than every anchor
            boxes[3] = torch.tensor([0.0, 0.0, w, h])                  # covers the image
        targets[i, :n, :4] = boxes
        targets[i, :n, 4] = torch.randint(0, 5, (n,), generator=generator).float()
    return targets


def assert_matches_reference(anchors, num_per_level, targets, topk=9):
    got = atss_assign(anchors, num_per_level, targets, topk)
    assert got.shape == (targets.shape[0], anchors.shape[0]) and got.dtype == torch.int64
    for i in range(targets.shape[0]):
        expected = torch.tensor(reference_atss_image(anchors, num_per_level, targets[i], topk))
        assert torch.equal(got[i], expected), f"image {i}: {(got[i] != expected).sum()} anchors differ"
    return got


# ---- ATSS assignment -----------------------------------------------------------------------
def test_atss_hand_case():
    """4 anchors of side 10 on level 0 (centres x = 5, 15, 25, 35), 2 of side 20 on level 1
    (x = 10, 30), all at y = 5; k = 3.

    Box A [10, 0, 30, 10], centre x 20:
      candidates a1, a2 (distance 5), a0 (15; ties with a3, lower index), a4, a5 (10, level 1 has 2)
      IoUs 0.5, 0.5, 0, 0.2, 0.2 -> mean 0.28, std sqrt(0.188 / 4) = 0.2168, threshold 0.4968
      -> a1, a2 (centres 15, 25 inside A).
    Box B [18, 0, 36, 10], centre x 27:
      candidates a2 (2), a3 (8), a1 (12), a5 (3), a4 (17)
      IoUs 100/180, 60/220, 20/260, 160/420, 20/560 -> mean 0.2644, std 0.2156, threshold 0.4799
      -> a2 (0.5556) only.
    a2 is claimed by A (0.5) and B (0.5556): B wins. Pad row never matches.
    """
    anchors = torch.tensor([[0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10], [30, 0, 40, 10],
                            [0, -5, 20, 15], [20, -5, 40, 15]], dtype=torch.float32)
    targets = torch.tensor([[[10, 0, 30, 10, 0], [18, 0, 36, 10, 1], [-1, -1, -1, -1, -1]]], dtype=torch.float32)
    got = atss_assign(anchors, [4, 2], targets, topk=3)
    assert got.tolist() == [[-1, 0, 1, -1, -1, -1]]
    # Box C [0, 0, 4, 4]: a0 passes the IoU threshold (0.16 >= 0.04 + 0.0693) but its centre
    # (5, 5) is outside C, so C gets no anchor.
    tiny = torch.tensor([[[0, 0, 4, 4, 2]]], dtype=torch.float32)
    assert atss_assign(anchors, [4, 2], tiny, topk=3).tolist() == [[-1] * 6]
    assert torch.equal(got, assert_matches_reference(anchors, [4, 2], targets, topk=3))


@pytest.mark.parametrize("counts,snap", [((5, 0, 12), False), ((7, 9), True), ((300, 300), False),
                                         ((300, 17), True), ((0, 0), False)],
                         ids=["mixed", "ties", "crowded", "crowded-ties", "empty"])
def test_atss_matches_reference(counts, snap):
    generator = torch.Generator().manual_seed(sum(counts) + snap)
    image_size = (128, 160)
    anchors, _, _, num_per_level = grid_anchors_for(image_size, octave_base_scale=4.0)
    targets = random_targets(counts, image_size, generator, snap)
    got = assert_matches_reference(anchors, num_per_level, targets)
    if sum(counts):
        assert (got >= 0).sum() > 0


def test_atss_duplicate_anchors_and_m_zero():
    """Every anchor twice (equal distances and IoUs): both copies are candidates or neither."""
    generator = torch.Generator().manual_seed(1)
    anchors, _, _, num_per_level = grid_anchors_for((64, 96), octave_base_scale=8.0)
    starts = [sum(num_per_level[:i]) for i in range(len(num_per_level))]
    doubled = torch.cat([anchors[s:s + n].repeat(2, 1) for s, n in zip(starts, num_per_level)])
    targets = random_targets((6, 3), (64, 96), generator, snap=True)
    got = assert_matches_reference(doubled, [2 * n for n in num_per_level], targets)
    assert (got >= 0).sum() > 0
    empty = atss_assign(anchors, num_per_level, torch.zeros(3, 0, 5))
    assert empty.shape == (3, anchors.shape[0]) and (empty == -1).all()


def test_atss_equal_ious_keep_their_positives():
    """9 candidates with the same IoU: threshold = mean + 0 = that IoU, so all are positives.
    In float32 the mean of 9 copies of 0.41208115 rounds up to 0.41208121 and the box would get
    no anchor at all (the reason atss_assign takes the mean and std in float64)."""
    anchors = torch.tensor([[-1.0, -1.0, 30.0, 30.0]]).repeat(9, 1)
    targets = torch.tensor([[[0.0, 0.0, 19.9, 19.9, 0.0]]])
    iou = torchvision.ops.box_iou(anchors, targets[0, :, :4])[:, 0]
    assert not (iou >= iou.mean() + iou.std()).any()              # the float32 rule loses them
    assert atss_assign(anchors, [9], targets).tolist() == [[0] * 9]


# ---- the other positive types ---------------------------------------------------------------
def _outputs_for(image_size, batch_size, num_classes=5, octave_base_scale=8.0):
    anchors, points, strides, num_per_level = grid_anchors_for(image_size, octave_base_scale)
    N = anchors.shape[0]
    return {"cls_logits": torch.zeros(batch_size, N, num_classes), "box_reg": torch.zeros(batch_size, N, 4),
            "centerness": torch.zeros(batch_size, N), "anchors": anchors, "points": points,
            "strides": strides, "num_per_level": num_per_level, "feature_sizes": grid_sizes_for(image_size),
            "level_strides": FPN_STRIDES}


def test_ssc_is_fcos_rule():
    generator = torch.Generator().manual_seed(5)
    outputs = _outputs_for((256, 320), 3)
    targets = random_targets((20, 0, 40), (256, 320), generator)
    got = ATSSLoss(DemoConfig(positive_type="SSC", scale_boundaries=(64, 128, 256, 512))).assign(outputs, targets)
    lower, upper = level_size_bounds(outputs["num_per_level"], (64, 128, 256, 512), torch.device("cpu"))
    expected = fcos_assign(outputs["points"], outputs["strides"], lower, upper, targets, center_sampling_radius=0.0)
    assert torch.equal(got, expected) and (got >= 0).sum() > 50


def test_iou_is_torchvision_matcher():
    generator = torch.Generator().manual_seed(6)
    outputs = _outputs_for((256, 320), 3, octave_base_scale=4.0)
    targets = random_targets((20, 1, 40), (256, 320), generator)
    got = ATSSLoss(DemoConfig(positive_type="IoU")).assign(outputs, targets)
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)
    for i in range(targets.shape[0]):
        valid = targets[i, :, 4] >= 0
        expected = matcher(torchvision.ops.box_iou(targets[i, valid, :4], outputs["anchors"]))
        assert torch.equal(got[i], expected)
    assert (got >= 0).sum() > 20 and (got == -2).sum() > 0


def test_topk_hand_case():
    """TOPK (k = 2): box A [10, 0, 30, 10] has IoUs 0, 0.5, 0.5, 0, 0.2, 0.2 -> a1, a2.
    Box B [18, 0, 36, 10]: a2 (0.556), a5 (0.381); a2 goes to B (higher IoU)."""
    anchors = torch.tensor([[0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10], [30, 0, 40, 10],
                            [0, -5, 20, 15], [20, -5, 40, 15]], dtype=torch.float32)
    targets = torch.tensor([[[10, 0, 30, 10, 0], [18, 0, 36, 10, 1], [-1, -1, -1, -1, -1]]], dtype=torch.float32)
    assert topk_assign(anchors, targets, topk=2).tolist() == [[-1, 0, 1, -1, -1, 1]]


def test_centers_inside_by_more_than_a_hundredth():
    """Official ATSS: a centre counts as inside when min(l, t, r, b) > 0.01 px, strictly."""
    from atss.assign import centers_inside
    box = torch.tensor([0.0, 0.0, 10.0, 10.0])
    centers = torch.tensor([[0.01, 5.0], [0.02, 5.0], [5.0, 0.01], [5.0, 5.0], [-1.0, 5.0]])   # 0.01 in float32 exactly
    assert centers_inside(centers, box).tolist() == [False, True, False, True, False]


def test_closest_anchors_by_distance_then_index():
    """Candidates are the nearest centres, even by a few ulps (4.999999 beats 5.000001 at a
    higher index); only an exact tie goes to the lower index."""
    from atss.assign import _closest_anchors
    centres = torch.tensor([[0.0, 0.0], [100.0, 0.0], [200.0, 0.0], [10.0, 0.0]])
    assert _closest_anchors(centres, torch.tensor([[[5.000001, 0.0]]]), 1).tolist() == [[[3]]]
    assert _closest_anchors(centres, torch.tensor([[[5.0, 0.0]]]), 2).tolist() == [[[0, 3]]]


def test_atss_level_of_one_anchor():
    """Levels [4, 1, 1] (k = 3): box B = anchor 4 [0, -5, 20, 15] has candidates 0, 1, 2 (level 0)
    and 4, 5 with IoUs 0.25, 0.25, 0, 1, 0: mean 0.3 + std 0.411 -> only anchor 4. On any device
    (the answer on the anchors' device: here "meta")."""
    anchors = torch.tensor([[0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10], [30, 0, 40, 10],
                            [0, -5, 20, 15], [20, -5, 40, 15]], dtype=torch.float32)
    targets = torch.tensor([[[0, -5, 20, 15, 1]]], dtype=torch.float32)
    assert atss_assign(anchors, [4, 1, 1], targets, topk=3).tolist() == [[-1, -1, -1, -1, 0, -1]]
    for got in (atss_assign(anchors.to("meta"), [4, 1, 1], targets.to("meta"), 3),
                atss_assign(anchors.to("meta"), [4, 1, 1], targets[:, :0].to("meta"), 3),
                topk_assign(anchors.to("meta"), targets.to("meta"), 3),
                topk_assign(anchors.to("meta"), targets[:, :0].to("meta"), 3)):
        assert got.device.type == "meta" and got.dtype == torch.int64 and got.shape == (1, 6)


def test_topk_ties_go_to_the_nearer_centre():
    """Box [0, 0, 20, 10], k = 1: anchors 1 [0, 0, 10, 10] and 2 [5.5, 0, 15.5, 10] both have IoU
    0.5; 2's centre is nearer (0.5 px vs 5): 2. Anchor 4, a 2 x 2 box on the centre (IoU 0.02),
    is nearest but not the best IoU. A single anchor is its box's top 1 when its centre is
    inside, and never when it is not."""
    anchors = torch.tensor([[10, 0, 30, 10], [0, 0, 10, 10], [5.5, 0, 15.5, 10], [-20, -20, 60, 30], [9, 4, 11, 6]])
    box = torch.tensor([[[0, 0, 20, 10, 0]]], dtype=torch.float32)
    assert topk_assign(anchors, box, topk=1).tolist() == [[-1, -1, 0, -1, -1]]
    assert topk_assign(anchors[2:3], box, topk=1).tolist() == [[0]]
    assert topk_assign(torch.tensor([[15.0, 0, 35, 10]]), box, topk=1).tolist() == [[-1]]


def test_chunked_candidates_equal_one_block(monkeypatch):
    """Boxes taken a few at a time (a tiny CANDIDATE_CHUNK_ELEMENTS) give the same assignment."""
    import atss.assign as assign_module
    generator = torch.Generator().manual_seed(7)
    outputs = _outputs_for((128, 160), 2)
    targets = random_targets((7, 3), (128, 160), generator)
    whole = (atss_assign(outputs["anchors"], outputs["num_per_level"], targets), topk_assign(outputs["anchors"], targets))
    monkeypatch.setattr(assign_module, "CANDIDATE_CHUNK_ELEMENTS", 2 * outputs["anchors"].shape[0] * 2)
    assert torch.equal(atss_assign(outputs["anchors"], outputs["num_per_level"], targets), whole[0])
    assert torch.equal(topk_assign(outputs["anchors"], targets), whole[1])
    assert (whole[0] >= 0).sum() > 10 and (whole[1] >= 0).sum() > 10


def test_assign_defaults_are_the_papers():
    """topk 9 (ATSS paper) and FCOS's ranges (64, 128, 256, 512) when not given."""
    import inspect
    from atss.assign import ssc_assign
    assert inspect.signature(atss_assign).parameters["topk"].default == 9
    assert inspect.signature(topk_assign).parameters["topk"].default == 9
    assert inspect.signature(ssc_assign).parameters["scale_boundaries"].default == (64, 128, 256, 512)


# ---- deformable convs -----------------------------------------------------------------------
def test_dcn_backbone_equals_plain_at_init():
    torch.manual_seed(0)
    plain = build_backbone(DemoConfig().resolve()).eval()
    dcn = build_backbone(DemoConfig(dcn_stages=(False, False, True, True)).resolve()).eval()
    missing, unexpected = dcn.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".conv_offset." in k for k in missing)
    deform = [m for m in dcn.modules() if isinstance(m, DeformConv)]
    assert len(deform) == 4 and all(m.modulated for m in deform)   # layer3, layer4: 2 BasicBlocks each
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = plain(images)
    got = dcn(images)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-4, rtol=1e-4)
    sum(v.sum() for v in got.values()).backward()                 # the offset branch is wired
    assert all(m.conv_offset.weight.grad.abs().sum() > 0 for m in deform)


def test_dcn_head_equals_plain_at_init():
    torch.manual_seed(0)
    plain = ATSSHead(32, 3, num_convs=2, dcn=False)
    dcn = ATSSHead(32, 3, num_convs=2, dcn=True)
    missing, unexpected = dcn.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and len(missing) == 4 and all(".conv_offset." in k for k in missing)
    assert isinstance(dcn.cls_tower[3], DeformConv) and isinstance(dcn.reg_tower[3], DeformConv)
    features = [torch.randn(2, 32, s, s) for s in (16, 8, 4, 2, 1)]
    for a, b in zip(dcn(features), plain(features)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---- losses and decoding --------------------------------------------------------------------
def _hand_outputs():
    """The hand case's 6 anchors, 2 classes, zero logits."""
    anchors = torch.tensor([[0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10], [30, 0, 40, 10],
                            [0, -5, 20, 15], [20, -5, 40, 15]], dtype=torch.float32)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    return {"cls_logits": torch.zeros(1, 6, 2), "box_reg": torch.zeros(1, 6, 4), "centerness": torch.zeros(1, 6),
            "anchors": anchors, "points": centres, "strides": torch.tensor([8.0] * 4 + [16.0] * 2),
            "num_per_level": [4, 2]}


@pytest.mark.parametrize("regression_type,box_reg", [("BOX", 0.0), ("POINT", 4.0)])
def test_loss_hand_case(regression_type, box_reg):
    """Box A [10, 0, 30, 10] label 1, k = 3 -> positives a1 [10, 0, 20, 10], a2 [20, 0, 30, 10].

    cls: p = 0.5 everywhere: positives 0.25 * 0.5^2 * ln2, the other 10 pairs 0.75 * 0.5^2 * ln2;
         sum = 2 ln2, / 2 positives = ln2.
    box: zero deltas (BOX) or l=t=r=b = 4 units of side/8 (POINT) reproduce the anchors:
         IoU with A 0.5, the enclosing box is A, GIoU 0.5, loss 0.5 each; both centerness
         targets sqrt(5/15 * 5/5) -> weighted mean 0.5, x box_loss_weight 2 = 1.0.
    centerness: BCE(0, sqrt(1/3)) = ln2 each, / 2 positives = ln2.
    """
    outputs = _hand_outputs()
    outputs["box_reg"] += box_reg
    targets = torch.tensor([[[10, 0, 30, 10, 1]]], dtype=torch.float32)
    loss = ATSSLoss(DemoConfig(topk=3, regression_type=regression_type, octave_base_scale=8.0))(outputs, targets)
    torch.testing.assert_close(loss["loss_cls"], torch.tensor(LN2))
    torch.testing.assert_close(loss["loss_box"], torch.tensor(1.0))
    torch.testing.assert_close(loss["loss_centerness"], torch.tensor(LN2))


def test_loss_iou_rule_hand_case():
    """positive_type "IoU" (fg >= 0.5, bg < 0.4), box B [10, 0, 28, 10] label 1: anchor 1 IoU 5/9
    (foreground), anchor 2 IoU 0.4 (ignored: no classification loss), the rest background.
    cls (p = 0.5): anchor 1 (0.25 + 0.75) x 0.25 ln2, 4 background anchors 2 x 0.75 x 0.25 ln2
    -> 1.75 ln2 / 1 positive. box: zero deltas give anchor 1, GIoU = IoU = 5/9 (B encloses it),
    x 2, weighted by its one centerness target sqrt(5/13) and / that same sum -> 8/9.
    centerness: BCE(0, t) = ln2."""
    outputs = _hand_outputs()
    targets = torch.tensor([[[10, 0, 28, 10, 1]]], dtype=torch.float32)
    loss = ATSSLoss(DemoConfig(positive_type="IoU", fg_iou_thresh=0.5, bg_iou_thresh=0.4,
                               octave_base_scale=8.0))(outputs, targets)
    torch.testing.assert_close(loss["loss_cls"], torch.tensor(1.75 * LN2))
    torch.testing.assert_close(loss["loss_box"], torch.tensor(8 / 9))
    torch.testing.assert_close(loss["loss_centerness"], torch.tensor(LN2))


def test_decoder_threshold_is_strict():
    """A class probability equal to score_thresh (0.5: logit 0) is not a candidate; above is."""
    outputs = _hand_outputs()
    outputs["cls_logits"] -= 10
    outputs["cls_logits"][0, 0, 0] = 0.0
    outputs["cls_logits"][0, 2, 1] = 0.5
    result = ATSSDecoder(DemoConfig(score_thresh=0.5))(outputs, torch.tensor([[10, 40]]))[0]
    assert result["labels"].tolist() == [1]
    torch.testing.assert_close(result["boxes"], torch.tensor([[20.0, 0.0, 30.0, 10.0]]))


def test_loss_against_independent_formula():
    """Random logits on a real grid: focal, weighted GIoU and BCE recomputed from their formulas."""
    generator = torch.Generator().manual_seed(9)
    outputs = _outputs_for((128, 160), 2, num_classes=5, octave_base_scale=4.0)
    for key in ("cls_logits", "box_reg", "centerness"):
        outputs[key] = torch.randn(outputs[key].shape, generator=generator) * 0.5
    targets = random_targets((6, 3), (128, 160), generator)
    cfg = DemoConfig()
    loss = ATSSLoss(cfg)(outputs, targets)
    matched = atss_assign(outputs["anchors"], outputs["num_per_level"], targets, cfg.topk)
    b, n = (matched >= 0).nonzero(as_tuple=True)
    gt = targets[b, matched[b, n]]
    p = outputs["cls_logits"].sigmoid()
    y = torch.zeros_like(p)
    y[b, n, gt[:, 4].long()] = 1
    focal = -(0.25 * y * (1 - p) ** 2 * p.log() + 0.75 * (1 - y) * p ** 2 * (1 - p).log())
    torch.testing.assert_close(loss["loss_cls"], focal.sum() / len(b))
    anchors = outputs["anchors"][n]
    pred = decode_boxes(anchors, outputs["box_reg"][b, n], "BOX", cfg.octave_base_scale)
    giou = torchvision.ops.generalized_box_iou(pred, gt[:, :4]).diagonal()
    cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    l, t, r, btm = cx - gt[:, 0], cy - gt[:, 1], gt[:, 2] - cx, gt[:, 3] - cy
    ctr = torch.sqrt(torch.minimum(l, r) / torch.maximum(l, r) * torch.minimum(t, btm) / torch.maximum(t, btm))
    torch.testing.assert_close(loss["loss_box"], 2 * ((1 - giou) * ctr).sum() / ctr.sum())
    c = outputs["centerness"][b, n].sigmoid()
    torch.testing.assert_close(loss["loss_centerness"], -(ctr * c.log() + (1 - ctr) * (1 - c).log()).sum() / len(b))


@pytest.mark.parametrize("positive_type", ["ATSS", "SSC", "IoU", "TOPK"])
def test_loss_without_boxes(positive_type):
    outputs = _outputs_for((64, 96), 2)
    outputs["cls_logits"].requires_grad_(True)
    for targets in (torch.zeros(2, 0, 5), torch.full((2, 3, 5), -1.0)):
        loss = ATSSLoss(DemoConfig(positive_type=positive_type))(outputs, targets)
        assert all(torch.isfinite(v) for v in loss.values())
        assert loss["loss_box"].item() == 0.0 and loss["loss_centerness"].item() == 0.0
        # every pair is a negative: 0.75 * 0.5^2 * ln2 each, / max(positives, 1)
        torch.testing.assert_close(loss["loss_cls"], torch.tensor(outputs["cls_logits"].numel() * 0.1875 * LN2))


@pytest.mark.parametrize("regression_type", ["BOX", "POINT"])
def test_encode_decode_round_trip(regression_type):
    anchors = torch.tensor([[0.0, 0.0, 32.0, 32.0], [40.0, 8.0, 72.0, 40.0]])
    boxes = torch.tensor([[4.0, 6.0, 20.0, 30.0], [50.0, 0.0, 70.0, 50.0]])
    if regression_type == "BOX":
        reg = encode_deltas(anchors, boxes, BOX_WEIGHTS)
    else:  # distances from the centre in units of side / 8 = 4 px
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        reg = torch.cat([centres - boxes[:, :2], boxes[:, 2:] - centres], dim=1) / 4
    torch.testing.assert_close(decode_boxes(anchors, reg, regression_type, 8.0), boxes)


def test_decoder_hand_case():
    """One confident anchor: [0, 0, 10, 10] with deltas (1, 0, 5 ln2, 0) / weights (10, 10, 5, 5)
    -> centre x 5 + 0.1 * 10 = 6, width 20 -> [-4, 0, 16, 10], clipped to [0, 0, 16, 10];
    score sqrt(0.9 * 0.4). The other anchors are under the 0.05 class threshold."""
    outputs = _hand_outputs()
    outputs["cls_logits"] -= 10
    outputs["cls_logits"][0, 0, 1] = math.log(0.9 / 0.1)
    outputs["centerness"][0, 0] = math.log(0.4 / 0.6)
    outputs["box_reg"][0, 0] = torch.tensor([1.0, 0.0, 5 * LN2, 0.0])
    cfg = DemoConfig()
    result = ATSSDecoder(cfg)(outputs, torch.tensor([[10, 40]]))
    assert len(result) == 1 and result[0]["labels"].tolist() == [1]
    torch.testing.assert_close(result[0]["boxes"], torch.tensor([[0.0, 0.0, 16.0, 10.0]]))
    torch.testing.assert_close(result[0]["scores"], torch.tensor([math.sqrt(0.9 * 0.4)]))


def test_model_shapes():
    torch.manual_seed(0)
    cfg = DemoConfig(head_dcn=True)
    model = cfg.resolve().build_model(3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 128, 160))
    N = 320 + 80 + 20 + 6 + 2
    assert out["cls_logits"].shape == (2, N, 3) and out["box_reg"].shape == (2, N, 4)
    assert out["centerness"].shape == (2, N) and out["anchors"].shape == (N, 4) and out["points"].shape == (N, 2)
    assert out["num_per_level"] == [320, 80, 20, 6, 2]
    # first P3 anchor: cell centre (4, 4), side 4 x 8 = 32 (demo octave_base_scale 4)
    assert out["anchors"][0].tolist() == [-12.0, -12.0, 20.0, 20.0]
    assert out["anchors"][-1].tolist() == [192.0 - 256.0, 64.0 - 256.0, 192.0 + 256.0, 64.0 + 256.0]


# ---- end to end -----------------------------------------------------------------------------
@pytest.mark.slow
def test_overfit_small_atss(tmp_path):
    """The demo ATSS overfits 4 demo images (``helpers.overfit_demo``)."""
    from helpers import overfit_demo
    ap, seconds = overfit_demo("atss", tmp_path)
    print(f"ATSS overfit: AP {ap:.3f} in {seconds:.0f}s")
    assert ap >= 0.9, ap


@pytest.mark.slow
def test_cli_trains_and_evaluates_atss(tmp_path, capsys):
    """python train.py --config atss/config_demo.py (train.py's main, in this process): one short
    epoch writes the run's files, and --evaluate of its best.pth reproduces the logged mAP."""
    import json

    import train as train_cli
    from helpers import demo_subset
    train_images, train_json = demo_subset(tmp_path, 8, "train")
    val_images, val_json = demo_subset(tmp_path, 4, "val")
    work_dir = tmp_path / "run"
    common = ["--config", "atss/config_demo.py", f"train_images={train_images}", f"train_annotations={train_json}",
              f"val_images={val_images}", f"val_annotations={val_json}", f"work_dir={work_dir}", "batch_size=4",
              "num_workers=0", "min_size=(128,)", "test_min_size=128", "flops=False", "warmup_iters=2",
              "log_interval=1", "epochs=1", "head_dcn=True"]
    for extra in ([], ["--evaluate", str(work_dir / "best.pth")]):
        capsys.readouterr()
        code = train_cli.main([*common, *extra])
        out, err = capsys.readouterr()
        assert code == 0, out[-3000:] + err[-3000:]
        if not extra:
            for name in ("train.log", "metrics.jsonl", "latest.pth", "best.pth", "config.json"):
                assert (work_dir / name).is_file(), name
            record = json.loads((work_dir / "metrics.jsonl").read_text().splitlines()[-1])
            assert record["epoch"] == 1 and all(k in record for k in ("mAP", "loss_cls", "loss_box", "loss_centerness"))
            assert json.loads((work_dir / "config.json").read_text())["positive_type"] == "ATSS"
    assert f"mAP {record['mAP']:.4f}" in out
