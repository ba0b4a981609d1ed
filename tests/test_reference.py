"""The default settings users train and test with, against slow references (tests/reference.py)
written from the papers and the official code: FCOS imprv losses and decoder, RetinaNet's
box losses and normalisers, ATSS's BOX / POINT losses and its decoder.

Inputs are random batches on real grids; the decoder inputs are built so that many same-class
candidates overlap above and below the NMS threshold, and every decoder test first checks
that its input tells the default apart from NMS at +-0.1, no NMS and class-agnostic NMS.
"""
import math
from types import SimpleNamespace

import pytest
import torch

import reference as ref
from atss.config import Config as ATSSConfig
from fcos.config import Config as FCOSConfig
from retinanet.config import Config as RetinaNetConfig
from test_atss import reference_atss_image

# The official settings, written here from the papers / official configs rather than read from
# the config files, so that a changed default fails a test as surely as changed code does.
OFFICIAL = {
    "fcos": dict(center_sampling_radius=1.5, scale_boundaries=(64, 128, 256, 512), focal_alpha=0.25,
                 focal_gamma=2.0, box_loss="giou", box_loss_weighting="centerness", norm_reg_targets=True,
                 score_thresh=0.05, score_thresh_on="cls", topk_candidates=1000, nms_thresh=0.6,
                 detections_per_img=100),
    "retinanet": dict(fg_iou_thresh=0.5, bg_iou_thresh=0.4, allow_low_quality_matches=True, focal_alpha=0.25,
                      focal_gamma=2.0, box_loss="smooth_l1", smooth_l1_beta=0.11,
                      box_coder_weights=(1.0, 1.0, 1.0, 1.0), loss_normalizer="batch", score_thresh=0.05,
                      topk_candidates=1000, nms_thresh=0.5, detections_per_img=100),
    "atss": dict(topk=9, regression_type="BOX", octave_base_scale=8.0, focal_alpha=0.25, focal_gamma=2.0,
                 box_loss_weight=2.0, score_thresh=0.05, topk_candidates=1000, nms_thresh=0.6,
                 detections_per_img=100),
}


def official(kind, **changes):
    """The official settings of ``kind`` with ``changes``, as attributes."""
    return SimpleNamespace(**{**OFFICIAL[kind], **changes})


IMAGE = (128, 160)        # h, w of the padded batch
SMALL = dict(backbone="resnet18", pretrained=False, fpn_channels=32, num_convs=1)  # only the geometry is used
NUM_CLASSES = 3


_GEOMETRY = {}


def geometry(cfg, batch_size=2, image=IMAGE):
    """The model's raw outputs on a zero batch: its points / anchors, levels and shapes
    (one model per config class and batch: the head settings under test do not change them)."""
    key = (type(cfg), batch_size, image)
    if key not in _GEOMETRY:
        torch.manual_seed(0)
        model = type(cfg)(**SMALL).resolve().build_model(NUM_CLASSES).eval()
        with torch.no_grad():
            _GEOMETRY[key] = model(torch.zeros(batch_size, 3, *image))
    return dict(_GEOMETRY[key])


def random_boxes(counts, generator, image=IMAGE, integer=False):
    """[B, M, 5] targets, pad rows -1; integer corners make distances hit the level bounds exactly."""
    h, w = image
    targets = torch.full((len(counts), max(counts), 5), -1.0)
    for i, n in enumerate(counts):
        xy = torch.rand(n, 2, generator=generator) * torch.tensor([w * 0.7, h * 0.7])
        wh = 6 + torch.rand(n, 2, generator=generator) ** 1.5 * torch.tensor([w * 0.7, h * 0.7])
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w - 1.0, h - 1.0]))], dim=1)
        targets[i, :n, :4] = boxes.round() if integer else boxes
        targets[i, :n, 4] = torch.randint(0, NUM_CLASSES, (n,), generator=generator).float()
    return targets


def valid_boxes(targets, i):
    return [(row[:4], int(row[4])) for row in targets[i].tolist() if row[4] >= 0]


# ==== FCOS loss ==============================================================================
def reference_fcos_assign(points, strides, level_of, bounds, boxes, radius):
    """FCOS (paper Sec. 3.1-3.2, imprv center sampling) for one image, one location at a time.

    Positive for a box: strictly inside it; within radius * stride of its centre along x and y
    (if radius > 0); max(l, t, r, b) strictly inside its level's (lower, upper); smallest box
    area wins, first box on ties. -> list of box index or -1 per location.
    """
    out = []
    for (x, y), stride, level in zip(points, strides, level_of):
        best, best_area = -1, math.inf
        lower, upper = bounds[level], bounds[level + 1]
        for j, (b, _) in enumerate(boxes):
            l, t, r, btm = x - b[0], y - b[1], b[2] - x, b[3] - y
            if min(l, t, r, btm) <= 0 or not lower < max(l, t, r, btm) < upper:
                continue
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            if radius > 0 and not (abs(x - cx) < radius * stride and abs(y - cy) < radius * stride):
                continue
            area = (b[2] - b[0]) * (b[3] - b[1])
            if area < best_area:
                best, best_area = j, area
        out.append(best)
    return out


def official_iou_loss(pred, target, kind):
    """fcos_core's IOULoss for one pair of (l, t, r, b) from the same point, in regression units."""
    pred_area = (pred[0] + pred[2]) * (pred[1] + pred[3])
    target_area = (target[0] + target[2]) * (target[1] + target[3])
    inter = (min(pred[0], target[0]) + min(pred[2], target[2])) * (min(pred[1], target[1]) + min(pred[3], target[3]))
    enclosing = (max(pred[0], target[0]) + max(pred[2], target[2])) * (max(pred[1], target[1]) + max(pred[3], target[3]))
    union = pred_area + target_area - inter
    iou = (inter + 1) / (union + 1)
    return -math.log(iou) if kind == "iou_official" else 1 - (iou - (enclosing - union) / enclosing)


def test_official_iou_loss_by_hand():
    """pred (1, 1, 1, 1), target (2, 1, 1, 1) strides: areas 4 and 6, intersection 2 x 2 = 4,
    union 6, IoU (4 + 1) / (6 + 1) = 5/7; the enclosing box 3 x 2 = 6 equals the union, so
    GIoU = IoU. Plain IoU would be 4/6."""
    from public.ops.losses import official_fcos_iou_loss
    pred, target = torch.tensor([[1.0, 1.0, 1.0, 1.0]]), torch.tensor([[2.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(official_fcos_iou_loss(pred, target, "iou"), torch.tensor([-math.log(5 / 7)]))
    torch.testing.assert_close(official_fcos_iou_loss(pred, target, "giou"), torch.tensor([2 / 7]))
    # disjoint sides: pred (0.5, 0.5, 3, 0.5), target (2, 1, 1, 1): inter 1.5 x 1 = 1.5, union 3.5 + 6 - 1.5 = 8,
    # enclosing 5 x 2 = 10: GIoU = 2.5 / 9 - 2 / 10
    pred = torch.tensor([[0.5, 0.5, 3.0, 0.5]])
    torch.testing.assert_close(official_fcos_iou_loss(pred, target, "giou"), torch.tensor([1 - (2.5 / 9 - 0.2)]))
    torch.testing.assert_close(official_fcos_iou_loss(pred, target, "iou"), torch.tensor([-math.log(2.5 / 9)]))


def reference_fcos_loss(outputs, targets, cfg):
    """The FCOS loss of the official code (imprv) / torchvision, by cases of ``cfg``."""
    points = outputs["points"].tolist()
    strides = outputs["strides"].tolist()
    level_of = sum(([level] * n for level, n in enumerate(outputs["num_per_level"])), [])
    bounds = [0.0] + list(cfg.scale_boundaries) + [math.inf]
    cls_sum, box_terms, ctr_sum, num_pos = 0.0, [], 0.0, 0
    for i in range(targets.shape[0]):
        boxes = valid_boxes(targets, i)
        matched = reference_fcos_assign(points, strides, level_of, bounds, boxes, cfg.center_sampling_radius)
        positives = {n: boxes[j][1] for n, j in enumerate(matched) if j >= 0}
        cls_sum += ref.focal_sum(outputs["cls_logits"][i], positives, cfg.focal_alpha, cfg.focal_gamma)
        for n, j in enumerate(matched):
            if j < 0:
                continue
            num_pos += 1
            gt = boxes[j][0]
            (x, y), unit = points[n], (strides[n] if cfg.norm_reg_targets else 1.0)
            l, t, r, b = (v * unit for v in outputs["box_reg"][i, n].tolist())
            pred = [x - l, y - t, x + r, y + b]
            if cfg.box_loss.endswith("_official"):
                loss = official_iou_loss([l / unit, t / unit, r / unit, b / unit],
                                         [(x - gt[0]) / unit, (y - gt[1]) / unit, (gt[2] - x) / unit, (gt[3] - y) / unit],
                                         cfg.box_loss)
            else:
                loss = 1 - ref.giou_xyxy(pred, gt) if cfg.box_loss == "giou" else -math.log(ref.iou_xyxy(pred, gt))
            weight = ref.centerness(points[n], gt)
            box_terms.append((loss, weight))
            ctr_sum += ref.bce_with_logits(outputs["centerness"][i, n].item(), weight)
    num_pos = max(num_pos, 1)
    if cfg.box_loss_weighting == "centerness":
        loss_box = sum(l * w for l, w in box_terms) / max(sum(w for _, w in box_terms), 1e-6)
    else:
        loss_box = sum(l for l, _ in box_terms) / num_pos
    return {"loss_cls": cls_sum / num_pos, "loss_box": loss_box, "loss_centerness": ctr_sum / num_pos}, len(box_terms)


FCOS_CASES = {
    "defaults": {},
    "iou": {"box_loss": "iou"},
    "giou_official": {"box_loss": "giou_official"},
    "iou_official": {"box_loss": "iou_official"},
    "iou_official_pixels": {"box_loss": "iou_official", "norm_reg_targets": False},
    "unweighted": {"box_loss_weighting": "none"},
    "pixels": {"norm_reg_targets": False},                       # exp() head, distances in pixels
    "no_center_sampling": {"center_sampling_radius": 0.0},
    "small_ranges": {"scale_boundaries": (16, 32, 48, 64)},      # every level gets positives
    "sampling_under_a_stride": {"center_sampling_radius": 0.9},  # a radius in (0, 1) still samples
}


@pytest.mark.parametrize("case", list(FCOS_CASES))
def test_fcos_loss_against_reference(case):
    cfg = FCOSConfig(**SMALL, **FCOS_CASES[case])
    outputs = dict(geometry(cfg))
    generator = torch.Generator().manual_seed(len(case))
    targets = random_boxes((9, 0, 14), generator, integer=True)
    N = outputs["points"].shape[0]
    outputs["cls_logits"] = torch.randn(3, N, NUM_CLASSES, generator=generator) * 1.5 - 2
    outputs["centerness"] = torch.randn(3, N, generator=generator)
    # Distances in strides (imprv) or pixels; a location lies inside its box and its prediction
    # spans it, so every IoU is positive.
    reg = 0.3 + torch.rand(3, N, 4, generator=generator) * 4
    outputs["box_reg"] = reg if cfg.norm_reg_targets else reg * outputs["strides"][None, :, None]
    expected, num_pos = reference_fcos_loss(outputs, targets, official("fcos", **FCOS_CASES[case]))
    got = cfg.build_loss()(outputs, targets)
    assert num_pos > 25
    for key, value in expected.items():
        torch.testing.assert_close(got[key].double(), torch.tensor(value, dtype=torch.float64), rtol=2e-5, atol=1e-6)
    if case == "defaults":
        # the inputs reach a level bound exactly, so strict vs inclusive bounds is decided here
        points, strides = outputs["points"], outputs["strides"]
        boxes = targets[targets[..., 4] >= 0][:, :4]
        x, y = points[:, None, 0], points[:, None, 1]
        side = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], -1)
        inside = side.min(-1).values > 0
        assert (inside & torch.isin(side.max(-1).values, torch.tensor([64.0, 128.0]))).any()
        assert strides.unique().numel() == 5


def test_fcos_loss_of_one_off_centre_positive():
    """One box around one location, off centre (l, t, r, b = 1, 1, 3, 1 px): the only positive,
    centerness sqrt(1/3) < 1. The centerness-weighted box loss is then that location's loss
    (sum of weights 0.577 divides, not a floor of 1)."""
    cfg = FCOSConfig(**SMALL)
    outputs = dict(geometry(cfg))
    N = outputs["points"].shape[0]
    x, y = outputs["points"][40].tolist()
    targets = torch.tensor([[[x - 1, y - 1, x + 3, y + 1, 2.0]], [[-1.0] * 5]])
    generator = torch.Generator().manual_seed(5)
    outputs["cls_logits"] = torch.randn(2, N, NUM_CLASSES, generator=generator)
    outputs["centerness"] = torch.randn(2, N, generator=generator)
    outputs["box_reg"] = 0.05 + torch.rand(2, N, 4, generator=generator) * 0.5   # strides of 8
    expected, num_pos = reference_fcos_loss(outputs, targets, official("fcos"))
    got = cfg.build_loss()(outputs, targets)
    assert num_pos == 1
    l, t, r, b = (v * 8 for v in outputs["box_reg"][0, 40].tolist())
    by_hand = 1 - ref.giou_xyxy([x - l, y - t, x + r, y + b], [x - 1, y - 1, x + 3, y + 1])
    assert expected["loss_box"] == pytest.approx(by_hand)
    for key, value in expected.items():
        torch.testing.assert_close(got[key].double(), torch.tensor(value, dtype=torch.float64), rtol=2e-5, atol=1e-6)


def test_fcos_head_variants_wired_as_named():
    """centerness_on_reg picks the tower the centerness conv reads; norm_reg_targets picks
    relu(Scale(x)) in strides or exp(Scale(x)) in pixels."""
    from fcos.model import FCOSHead
    torch.manual_seed(0)
    features = [torch.randn(1, 32, s, s) for s in (8, 4, 2, 2, 2)]
    for on_reg in (True, False):
        for norm_reg in (True, False):
            head = FCOSHead(32, 3, num_convs=1, norm="GN", norm_reg_targets=norm_reg, centerness_on_reg=on_reg)
            with torch.no_grad():
                for scale in head.scales:
                    scale.scale.fill_(0.7)
                _, box, ctr = head(features)
                x = features[1]
                tower = head.reg_tower(x) if on_reg else head.cls_tower(x)
                expected_ctr = head.centerness(tower).flatten(2).transpose(1, 2).reshape(1, -1)
                raw = head.bbox_pred(head.reg_tower(x)) * 0.7
                expected_box = (raw.relu() if norm_reg else raw.exp()).flatten(2).transpose(1, 2)
            level = slice(64, 64 + 16)
            torch.testing.assert_close(ctr[:, level], expected_ctr)
            torch.testing.assert_close(box[:, level], expected_box)
            other = head.centerness(head.cls_tower(x) if on_reg else head.reg_tower(x)).flatten(1)
            assert not torch.allclose(ctr[:, level], other, atol=1e-3)


# ==== RetinaNet loss =========================================================================
def reference_max_iou_assign(anchors, boxes, fg, bg, low_quality):
    """Max-IoU matching (RetinaNet paper Sec. 4; torchvision / Detectron Matcher) for one image:
    -> list per anchor of box index, -1 background, -2 ignored."""
    if not boxes:
        return [-1] * anchors.shape[0]
    iou = ref.iou_matrix_f32(anchors, torch.tensor([b for b, _ in boxes]))   # [N, M]
    rows = iou.tolist()
    out = []
    for row in rows:
        best = max(row)
        j = row.index(best)
        out.append(j if best >= fg else (-1 if best < bg else -2))
    if low_quality:  # each box also takes every anchor at its own highest IoU (the anchor's best box)
        for j in range(len(boxes)):
            column = [row[j] for row in rows]
            top = max(column)
            for n, value in enumerate(column):
                if value == top:
                    out[n] = rows[n].index(max(rows[n]))
    return out


def reference_retinanet_loss(outputs, targets, cfg):
    anchors = outputs["anchors"]
    anchor_list = anchors.tolist()
    per_image, total_cls, total_box, total_pos = [], 0.0, 0.0, 0
    for i in range(targets.shape[0]):
        boxes = valid_boxes(targets, i)
        matched = reference_max_iou_assign(anchors, boxes, cfg.fg_iou_thresh, cfg.bg_iou_thresh,
                                           cfg.allow_low_quality_matches)
        positives = {n: boxes[j][1] for n, j in enumerate(matched) if j >= 0}
        counted = torch.tensor([j != -2 for j in matched])
        cls = ref.focal_sum(outputs["cls_logits"][i], positives, cfg.focal_alpha, cfg.focal_gamma, counted)
        box = 0.0
        for n, j in enumerate(matched):
            if j < 0:
                continue
            pred = outputs["box_reg"][i, n].tolist()
            if cfg.box_loss == "giou":
                box += 1 - ref.giou_xyxy(ref.decode_deltas(anchor_list[n], pred, cfg.box_coder_weights), boxes[j][0])
                continue
            target = ref.encode_deltas(anchor_list[n], boxes[j][0], cfg.box_coder_weights)
            if cfg.box_loss == "l1":
                box += sum(abs(p - t) for p, t in zip(pred, target))
            else:
                box += sum(ref.smooth_l1(p - t, cfg.smooth_l1_beta) for p, t in zip(pred, target))
        per_image.append((cls / max(len(positives), 1), box / max(len(positives), 1)))
        total_cls, total_box, total_pos = total_cls + cls, total_box + box, total_pos + len(positives)
    if cfg.loss_normalizer == "batch":
        return {"loss_cls": total_cls / max(total_pos, 1), "loss_box": total_box / max(total_pos, 1)}, total_pos
    return {"loss_cls": sum(c for c, _ in per_image) / len(per_image),
            "loss_box": sum(b for _, b in per_image) / len(per_image)}, total_pos


@pytest.mark.parametrize("normalizer", ["batch", "per_image"])
@pytest.mark.parametrize("box_loss", ["smooth_l1", "l1", "giou"])
def test_retinanet_loss_against_reference(box_loss, normalizer):
    cfg = RetinaNetConfig(**SMALL, box_loss=box_loss, loss_normalizer=normalizer)
    outputs = dict(geometry(cfg))
    generator = torch.Generator().manual_seed(7)
    targets = random_boxes((6, 0, 3), generator)
    N = outputs["anchors"].shape[0]
    outputs["cls_logits"] = torch.randn(3, N, NUM_CLASSES, generator=generator) * 1.5 - 2
    # deltas of the size of the targets' (|d| below and above beta = 0.11 alike)
    outputs["box_reg"] = torch.randn(3, N, 4, generator=generator) * 0.2
    expected, num_pos = reference_retinanet_loss(outputs, targets, official("retinanet", box_loss=box_loss,
                                                                            loss_normalizer=normalizer))
    got = cfg.build_loss()(outputs, targets)
    assert num_pos > 20
    for key, value in expected.items():
        torch.testing.assert_close(got[key].double(), torch.tensor(value, dtype=torch.float64), rtol=2e-5, atol=1e-6)


# ==== ATSS loss ==============================================================================
def atss_decode(anchor, reg, regression_type, octave_base_scale):
    """BOX: deltas with the official coder's weights (10, 10, 5, 5). POINT: l, t, r, b from the
    anchor centre in units of anchor side / octave_base_scale (one stride)."""
    if regression_type == "BOX":
        return ref.decode_deltas(anchor, reg, (10.0, 10.0, 5.0, 5.0))
    cx, cy = (anchor[0] + anchor[2]) / 2, (anchor[1] + anchor[3]) / 2
    ux, uy = (anchor[2] - anchor[0]) / octave_base_scale, (anchor[3] - anchor[1]) / octave_base_scale
    return [cx - reg[0] * ux, cy - reg[1] * uy, cx + reg[2] * ux, cy + reg[3] * uy]


def reference_atss_loss(outputs, targets, cfg):
    anchors = outputs["anchors"]
    anchor_list = anchors.tolist()
    cls_sum, weighted, weights, ctr_sum, num_pos = 0.0, 0.0, 0.0, 0.0, 0
    for i in range(targets.shape[0]):
        matched = reference_atss_image(anchors, outputs["num_per_level"], targets[i], cfg.topk)
        boxes = targets[i].tolist()
        positives = {n: int(boxes[j][4]) for n, j in enumerate(matched) if j >= 0}
        cls_sum += ref.focal_sum(outputs["cls_logits"][i], positives, cfg.focal_alpha, cfg.focal_gamma)
        for n, j in enumerate(matched):
            if j < 0:
                continue
            num_pos += 1
            a, gt = anchor_list[n], boxes[j][:4]
            pred = atss_decode(a, outputs["box_reg"][i, n].tolist(), cfg.regression_type, cfg.octave_base_scale)
            w = ref.centerness(((a[0] + a[2]) / 2, (a[1] + a[3]) / 2), gt)
            weighted += w * (1 - ref.giou_xyxy(pred, gt))
            weights += w
            ctr_sum += ref.bce_with_logits(outputs["centerness"][i, n].item(), w)
    num_pos = max(num_pos, 1)
    return {"loss_cls": cls_sum / num_pos, "loss_box": cfg.box_loss_weight * weighted / max(weights, 1e-6),
            "loss_centerness": ctr_sum / num_pos}, num_pos


@pytest.mark.parametrize("regression_type", ["BOX", "POINT"])
def test_atss_loss_against_reference(regression_type):
    cfg = ATSSConfig(**SMALL, regression_type=regression_type)
    outputs = dict(geometry(cfg))
    generator = torch.Generator().manual_seed(11)
    targets = random_boxes((7, 0, 5), generator)
    N = outputs["anchors"].shape[0]
    outputs["cls_logits"] = torch.randn(3, N, NUM_CLASSES, generator=generator) * 1.5 - 2
    outputs["centerness"] = torch.randn(3, N, generator=generator)
    outputs["box_reg"] = (torch.randn(3, N, 4, generator=generator) * 0.5 if regression_type == "BOX"
                          else 0.5 + torch.rand(3, N, 4, generator=generator) * 4)
    expected, num_pos = reference_atss_loss(outputs, targets, official("atss", regression_type=regression_type))
    got = cfg.build_loss()(outputs, targets)
    assert num_pos > 30
    for key, value in expected.items():
        torch.testing.assert_close(got[key].double(), torch.tensor(value, dtype=torch.float64), rtol=2e-5, atol=1e-6)


# ==== decoders with suppression ==============================================================
def clustered_outputs(cfg, kind, generator, batch_size=2, image=IMAGE):
    """Raw outputs where a few objects each draw many candidates of one class whose boxes are
    the object's box jittered (pairwise IoUs spread over 0.3-1), with same-class objects
    overlapping each other near the NMS threshold and a different-class object on top of
    another; background pairs sit between the 0.05 class threshold and just above it, some
    with a low centerness (a combined score below 0.05)."""
    outputs = dict(geometry(cfg, batch_size, image))
    h, w = image
    if kind == "fcos":
        centres = outputs["points"]
        N = centres.shape[0]
    else:
        anchors = outputs["anchors"]
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        N = anchors.shape[0]
    logits = torch.full((batch_size, N, NUM_CLASSES), -6.0)
    background = torch.rand(batch_size, N, NUM_CLASSES, generator=generator) < 0.02
    logits[background] = -2.8 + torch.rand(int(background.sum()), generator=generator) * 1.0  # p ~ 0.06-0.14
    ctr = torch.randn(batch_size, N, generator=generator) - 1.0
    boxes = torch.zeros(batch_size, N, 4)
    boxes[..., :2] = centres - 8
    boxes[..., 2:] = centres + 8
    for i in range(batch_size):
        x0, y0 = 20.0 + 10 * i, 16.0
        objects = [([x0, y0, x0 + 60, y0 + 56], 0),
                   ([x0 + 18, y0 + 6, x0 + 78, y0 + 62], 0),      # same class, IoU ~0.45 with the first
                   ([x0 + 4, y0 + 2, x0 + 64, y0 + 56], 1),        # another class on top of the first
                   ([x0 + 70, y0 + 60, x0 + 118, y0 + 104], 2),
                   ([x0 + 74, y0 + 62, x0 + 122, y0 + 106], 2)]    # same class, IoU ~0.75
        for box, label in objects:
            b = torch.tensor(box)
            size = b[2:] - b[:2]
            lo, hi = b[:2] + 0.2 * size, b[2:] - 0.2 * size
            near = ((centres >= lo) & (centres <= hi)).all(1).nonzero()[:, 0]
            jitter = torch.randn(len(near), 4, generator=generator) * 0.09 * torch.cat([size, size])
            boxes[i, near] = b + jitter
            logits[i, near, label] = torch.rand(len(near), generator=generator) * 4 - 1
            ctr[i, near] = torch.rand(len(near), generator=generator) * 3 - 1
    boxes[..., 2:] = torch.maximum(boxes[..., 2:], boxes[..., :2] + 2)
    outputs["cls_logits"], outputs["centerness"] = logits, ctr
    return outputs, boxes


def encode_for(kind, cfg, outputs, boxes):
    """The head outputs that decode to ``boxes`` [B, N, 4], written with the reference coders."""
    reg = torch.zeros_like(boxes)
    B, N = boxes.shape[:2]
    for i in range(B):
        for n in range(N):
            box = boxes[i, n].tolist()
            if kind == "fcos":
                (x, y), s = outputs["points"][n].tolist(), outputs["strides"][n].item()
                d = [max(x - box[0], 0.0), max(y - box[1], 0.0), max(box[2] - x, 0.0), max(box[3] - y, 0.0)]
                reg[i, n] = torch.tensor(d) / (s if cfg.norm_reg_targets else 1.0)
            elif kind == "retinanet":
                reg[i, n] = torch.tensor(ref.encode_deltas(outputs["anchors"][n].tolist(), box, cfg.box_coder_weights))
            else:
                reg[i, n] = torch.tensor(ref.encode_deltas(outputs["anchors"][n].tolist(), box, (10.0, 10.0, 5.0, 5.0)))
    return reg


def reference_decode(kind, cfg, outputs, image_sizes, **changes):
    """Per image: the references' candidates, top-k per level, clipping, greedy NMS, max_det."""
    nms_thresh = changes.get("nms_thresh", cfg.nms_thresh)
    agnostic = changes.get("class_agnostic", False)
    results = []
    for i, size in enumerate(image_sizes):
        cls_prob = outputs["cls_logits"][i].double().sigmoid()
        if kind == "retinanet":
            scores, candidate = cls_prob, cls_prob > cfg.score_thresh
        else:
            scores = (cls_prob * outputs["centerness"][i].double().sigmoid()[:, None]).sqrt()
            on = "cls" if kind == "atss" else changes.get("score_thresh_on", cfg.score_thresh_on)
            candidate = (cls_prob if on == "cls" else scores) > cfg.score_thresh
        reg = outputs["box_reg"][i].tolist()

        def box_of(n):
            if kind == "fcos":
                (x, y), s = outputs["points"][n].tolist(), outputs["strides"][n].item()
                unit = s if cfg.norm_reg_targets else 1.0
                l, t, r, b = (v * unit for v in reg[n])
                return [x - l, y - t, x + r, y + b]
            if kind == "retinanet":
                return ref.decode_deltas(outputs["anchors"][n].tolist(), reg[n], cfg.box_coder_weights)
            return atss_decode(outputs["anchors"][n].tolist(), reg[n], cfg.regression_type, cfg.octave_base_scale)

        topk = changes.get("topk_candidates", cfg.topk_candidates)
        results.append(ref.decode_image(scores, candidate, outputs["num_per_level"], topk, box_of,
                                        size, nms_thresh, cfg.detections_per_img, agnostic))
    return results


def assert_same_detections(got, expected):
    for g, (boxes, scores, labels) in zip(got, expected):
        assert g["labels"].tolist() == labels
        torch.testing.assert_close(g["scores"].double(), torch.tensor(scores, dtype=torch.float64), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g["boxes"].double(), torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
                                   rtol=0, atol=1e-3)


DECODER_CASES = [
    ("fcos", FCOSConfig, {}),
    ("fcos", FCOSConfig, {"norm_reg_targets": False}),
    ("fcos", FCOSConfig, {"score_thresh_on": "combined"}),
    ("fcos", FCOSConfig, {"topk_candidates": 12, "detections_per_img": 7}),
    ("retinanet", RetinaNetConfig, {}),
    ("retinanet", RetinaNetConfig, {"topk_candidates": 12, "detections_per_img": 7}),
    ("atss", ATSSConfig, {}),
    ("atss", ATSSConfig, {"regression_type": "POINT"}),
    ("atss", ATSSConfig, {"topk_candidates": 12, "detections_per_img": 7}),
]


@pytest.mark.parametrize("kind,config,changes", DECODER_CASES,
                         ids=[f"{k}-{'-'.join(f'{a}={b}' for a, b in c.items()) or 'defaults'}" for k, _, c in DECODER_CASES])
def test_decoder_against_reference(kind, config, changes):
    cfg, settings = config(**SMALL, **changes), official(kind, **changes)
    generator = torch.Generator().manual_seed(5)
    outputs, boxes = clustered_outputs(cfg, kind, generator)
    if kind == "atss" and cfg.regression_type == "POINT":
        anchors = outputs["anchors"]
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        unit = ((anchors[:, 2:] - anchors[:, :2]) / settings.octave_base_scale).repeat(1, 2)
        outputs["box_reg"] = torch.cat([centres - boxes[..., :2], boxes[..., 2:] - centres], -1).clamp(min=0) / unit
    else:
        outputs["box_reg"] = encode_for(kind, settings, outputs, boxes)
    image_sizes = [IMAGE, (112, 150)]                 # the second image is padded in the batch
    expected = reference_decode(kind, settings, outputs, image_sizes)
    got = cfg.build_decoder()(outputs, torch.tensor(image_sizes))
    # the input decides every rule the decoder is made of
    assert sum(len(e[0]) for e in expected) >= min(30, settings.detections_per_img)
    for change in ({"nms_thresh": settings.nms_thresh - 0.1}, {"nms_thresh": settings.nms_thresh + 0.1},
                   {"nms_thresh": 1.0}, {"class_agnostic": True}):
        assert reference_decode(kind, settings, outputs, image_sizes, **change) != expected, change
    if settings.detections_per_img < 100:  # the per-level top-k and the per-image cap both bind
        assert any(len(e[0]) == settings.detections_per_img for e in expected)
        assert reference_decode(kind, settings, outputs, image_sizes, topk_candidates=1000) != expected
    if kind == "fcos" and settings.detections_per_img >= 100:  # low scores are not cut by the cap
        other = "combined" if settings.score_thresh_on == "cls" else "cls"
        assert reference_decode(kind, settings, outputs, image_sizes, score_thresh_on=other) != expected
    assert_same_detections(got, expected)
