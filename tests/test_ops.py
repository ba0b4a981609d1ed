"""Shared ops: the sparse-target focal loss against torchvision's dense one; NMS in calls of
whole groups against torchvision's batched_nms."""
import pytest
import torch
from torchvision.ops import batched_nms, generalized_box_iou_loss, sigmoid_focal_loss

from public.ops import decoder as postprocess
from public.ops.losses import box_iou_loss, focal_loss_per_location, official_fcos_iou_loss
from public.ops.decoder import grouped_nms


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 1.5), (0.0, 2.0)])
def test_focal_loss_per_location_equals_torchvision(alpha, gamma):
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 500, 7, generator=generator) * 4 - 1).requires_grad_()
    batch_idx = torch.tensor([0, 0, 1, 2, 2, 2])
    loc_idx = torch.tensor([3, 499, 0, 10, 11, 250])
    labels = torch.tensor([6, 0, 3, 3, 3, 1])
    target = torch.zeros_like(logits)
    target[batch_idx, loc_idx, labels] = 1.0
    expected = sigmoid_focal_loss(logits, target, alpha, gamma, reduction="none").sum(dim=2)   # [B, N]
    got = focal_loss_per_location(logits, batch_idx, loc_idx, labels, alpha, gamma)
    assert got.shape == (3, 500)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    weights = torch.rand(3, 500, generator=generator)
    grad_expected, = torch.autograd.grad((expected * weights).sum(), logits)
    grad_got, = torch.autograd.grad((got * weights).sum(), logits)
    torch.testing.assert_close(grad_got, grad_expected, rtol=1e-4, atol=1e-6)


def test_focal_loss_defaults_are_the_papers():
    """alpha 0.25, gamma 2 when not given: torchvision's defaults, the RetinaNet paper's."""
    logits = torch.tensor([[[-1.0, 0.5, 3.0], [2.0, -2.0, 0.0]]])                  # [1, 2, 3]
    idx = torch.tensor([0])
    target = torch.zeros_like(logits)
    target[0, 1, 2] = 1.0
    expected = sigmoid_focal_loss(logits, target, reduction="none").sum(dim=2)
    torch.testing.assert_close(focal_loss_per_location(logits, idx, torch.tensor([1]), torch.tensor([2])), expected)


def test_focal_loss_without_positives_is_all_negative():
    logits = torch.tensor([[[0.0, 2.0]]])
    empty = torch.zeros(0, dtype=torch.long)
    got = focal_loss_per_location(logits, empty, empty, empty, alpha=0.25, gamma=2.0)
    # p = 0.5: 0.75 * 0.25 * ln 2;  p = sigmoid(2): 0.75 * p^2 * softplus(2)
    p = torch.sigmoid(torch.tensor(2.0))
    expected = 0.75 * 0.25 * torch.log(torch.tensor(2.0)) + 0.75 * p ** 2 * torch.nn.functional.softplus(torch.tensor(2.0))
    torch.testing.assert_close(got, expected.reshape(1, 1))


def test_box_iou_loss_by_hand():
    """kind "iou": -log(inter / union), areas and overlap clamped at 0 (sub-pixel sides stay
    sub-pixel); "giou" is torchvision's; the eps is added to the union (tiny pairs stay finite)."""
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 0.5, 2.0], [0.0, 0.0, 1.0, 1.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [1.5, 1.5, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [2.0, 2.0, 3.0, 3.0]])
    # inter / union: 1 / 7; 0.25 / (4 + 2.25 - 0.25); 1 / 4; 0 -> clamped to eps
    expected = -torch.log(torch.tensor([1 / 7, 0.25 / 6, 1 / 4, 1e-7]))
    torch.testing.assert_close(box_iou_loss(pred, target, "iou"), expected)
    torch.testing.assert_close(box_iou_loss(pred, target), generalized_box_iou_loss(pred, target))
    side = 2.0 ** -12                                                      # area 2^-24 ~ 6e-8, near eps
    tiny = torch.tensor([[0.0, 0.0, side, side]], dtype=torch.float64)
    torch.testing.assert_close(box_iou_loss(tiny, tiny, "iou"),
                               -torch.log(torch.tensor([2.0 ** -24 / (2.0 ** -24 + 1e-7)], dtype=torch.float64)))
    with pytest.raises(ValueError, match="box loss must be 'giou' or 'iou', got 'l1'"):
        box_iou_loss(pred, target, "l1")


def test_official_iou_loss_of_a_tiny_pair_and_bad_kind():
    """The official GIoU's 1e-7 is added to the enclosing area: a zero-size prediction against a
    2e-4 x 1e-4 target (areas ~1e-8) gives 1 - (IoU - (E - U) / E) with E = 2e-8 + 1e-7."""
    pred = torch.zeros(1, 4, dtype=torch.float64)
    target = torch.tensor([[1e-4, 0.0, 1e-4, 1e-4]], dtype=torch.float64)
    union, enclosing = 2e-8, 2e-8 + 1e-7
    expected = 1 - (1 / (union + 1) - (enclosing - union) / enclosing)
    torch.testing.assert_close(official_fcos_iou_loss(pred, target, "giou"), torch.tensor([expected], dtype=torch.float64))
    with pytest.raises(ValueError, match="official FCOS IoU loss kind must be 'giou' or 'iou', got 'l1'"):
        official_fcos_iou_loss(pred, target, "l1")


@pytest.mark.parametrize("max_boxes_per_call", [0, 40, 300, 5000])
def test_grouped_nms_in_calls_equals_batched_nms(monkeypatch, max_boxes_per_call):
    """Split into calls of whole groups (renumbered from 0), NMS keeps the same boxes, by score."""
    generator = torch.Generator().manual_seed(3)
    K = 3000
    corner = torch.rand(K, 2, generator=generator) * 300
    boxes = torch.cat([corner, corner + 5 + torch.rand(K, 2, generator=generator) * 60], dim=1)
    scores = torch.rand(K, generator=generator)
    groups = torch.randint(0, 8 * 91, (K,), generator=generator)        # (image, class) pairs
    groups[:200] = 7                                                     # one group larger than a call
    expected = batched_nms(boxes, scores, groups, 0.5)
    calls = []
    monkeypatch.setattr(postprocess, "batched_nms", lambda *a: calls.append(a[0].shape[0]) or batched_nms(*a))
    got = grouped_nms(boxes, scores, groups, 0.5, max_boxes_per_call)
    assert torch.equal(got.sort().values, expected.sort().values)
    assert torch.equal(scores[got], scores[expected])                  # decreasing score
    assert 100 < got.numel() < K
    if 0 < max_boxes_per_call < K:
        assert len(calls) > 1 and sum(calls) == K
        assert max(calls) < max_boxes_per_call + 200                    # whole groups: under the limit + one group
    else:
        assert calls == [K]


def test_class_agnostic_nms_keeps_one_box_per_object():
    """Two classes claim one object (IoU 0.9): per-class NMS keeps both boxes, class-agnostic
    NMS the better one; a box elsewhere stays either way. The ONNX graph's NMS agrees."""
    from public.engine.export.exporter import padded_nms

    boxes = torch.tensor([[[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30]]], dtype=torch.float32)  # [1, 3, 4]
    scores = torch.tensor([[0.9, 0.8, 0.7]])
    labels = torch.tensor([[0, 1, 1]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    per_class = postprocess.nms_per_image(boxes, scores, labels, valid, 2, 0.5, 100)[0]
    agnostic = postprocess.nms_per_image(boxes, scores, labels, valid, 2, 0.5, 100, class_agnostic=True)[0]
    assert per_class["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert agnostic["scores"].tolist() == pytest.approx([0.9, 0.7]) and agnostic["labels"].tolist() == [0, 1]
    out_boxes, out_scores, out_labels, counts = padded_nms(boxes, scores, labels, valid, 2, 0.5, 4, True)
    assert counts.tolist() == [2] and out_labels[0].tolist() == [0, 1, -1, -1]


def test_centerness_target_of_any_leading_shape():
    """[..., 4] ltrb -> [...]: sqrt(min(l,r)/max(l,r) x min(t,b)/max(t,b)), here on [2, 2, 4]."""
    from public.ops.boxes import centerness_target
    distances = torch.tensor([[[1.0, 4, 1, 1], [2, 2, 2, 2]], [[3, 1, 1, 3], [1, 1, 4, 9]]])
    expected = torch.tensor([[(1 / 4) ** 0.5, 1.0], [(1 / 9) ** 0.5, (1 / 36) ** 0.5]])
    torch.testing.assert_close(centerness_target(distances), expected)
