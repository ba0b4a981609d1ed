"""densedet FCOS against torchvision's FCOS: same weights -> same outputs, same inputs -> same
losses, same decoder settings -> same detections."""
import pytest
import torch
from torchvision.models.detection import fcos_resnet50_fpn
from torchvision.models.detection.image_list import ImageList

from fcos.config import Config
from fcos.convert import from_torchvision
from helpers import load_converted, perturb_for_oracle, random_targets

NUM_CLASSES = 91  # torchvision's COCO layout: class index = category id


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    tv = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).eval()
    perturb_for_oracle(tv)
    cfg = Config(pretrained=False)
    state, settings = from_torchvision(tv.state_dict(), list(range(NUM_CLASSES)))
    cfg.update(settings)
    ours = load_converted(cfg, state, NUM_CLASSES)
    return tv, ours, cfg


def _targets(batch_size, image_size, counts, generator):
    return random_targets(batch_size, image_size, counts, NUM_CLASSES, generator)


def test_head_outputs_match(models):
    tv, ours, _ = models
    # Sides divisible by 128: torchvision derives each level's stride as image_size // grid_size,
    # which is not the level's true stride when P7 is rounded up (e.g. 320 // 3 = 106).
    images = torch.randn(2, 3, 256, 384)
    with torch.no_grad():
        features = list(tv.backbone(images).values())
        expected = tv.head(features)
        got = ours(images)
    assert got["cls_logits"].shape == expected["cls_logits"].shape == (2, 1536 + 384 + 96 + 24 + 6, NUM_CLASSES)
    torch.testing.assert_close(got["cls_logits"], expected["cls_logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(got["box_reg"], expected["bbox_regression"], atol=1e-4, rtol=0)
    torch.testing.assert_close(got["centerness"], expected["bbox_ctrness"].squeeze(-1), atol=1e-4, rtol=0)
    # torchvision's anchors are centred on our points; their size is the stride.
    anchors = tv.anchor_generator(ImageList(images, [(256, 384)] * 2), features)[0]
    torch.testing.assert_close((anchors[:, :2] + anchors[:, 2:]) / 2, got["points"])
    torch.testing.assert_close(anchors[:, 2] - anchors[:, 0], got["strides"])


def _random_outputs(batch_size, image_size, generator):
    """Random raw outputs on the P3-P7 grid of an image, in both layouts, plus tv's anchors."""
    h, w = image_size
    sizes = [((h + s - 1) // s, (w + s - 1) // s) for s in (8, 16, 32, 64, 128)]
    N = sum(a * b for a, b in sizes)
    head = {
        "cls_logits": torch.randn(batch_size, N, NUM_CLASSES, generator=generator) * 2 - 3,
        "bbox_regression": torch.rand(batch_size, N, 4, generator=generator) * 6,
        "bbox_ctrness": torch.randn(batch_size, N, 1, generator=generator),
    }
    from public.ops.anchors import grid_points
    points, strides, num_per_level = grid_points(sizes, (8, 16, 32, 64, 128), 0.0, torch.device("cpu"))
    ours = {"cls_logits": head["cls_logits"], "box_reg": head["bbox_regression"],
            "centerness": head["bbox_ctrness"].squeeze(-1), "points": points, "strides": strides,
            "num_per_level": num_per_level, "feature_sizes": sizes}
    feature_maps = [torch.zeros(batch_size, 1, a, b) for a, b in sizes]
    return head, ours, feature_maps


@pytest.mark.parametrize("counts", [(60, 45, 80), (2, 1, 3), (0, 0, 0), (0, 7, 150)],
                         ids=["crowded", "sparse", "empty", "mixed"])
def test_loss_matches_torchvision(models, counts):
    tv, _, cfg = models
    generator = torch.Generator().manual_seed(sum(counts))
    image_size = (384, 512)
    head, outputs, feature_maps = _random_outputs(len(counts), image_size, generator)
    tv_targets, targets = _targets(len(counts), image_size, counts, generator)
    anchors = tv.anchor_generator(ImageList(torch.zeros(len(counts), 3, *image_size), [image_size] * len(counts)), feature_maps)
    expected = tv.compute_loss(tv_targets, head, anchors, outputs["num_per_level"])
    got = cfg.build_loss()(outputs, targets)
    for ours_key, tv_key in (("loss_cls", "classification"), ("loss_box", "bbox_regression"),
                             ("loss_centerness", "bbox_ctrness")):
        torch.testing.assert_close(got[ours_key], expected[tv_key], rtol=1e-5, atol=1e-7)
    if sum(counts) == 0:
        assert got["loss_box"].item() == 0.0 and got["loss_centerness"].item() == 0.0
    else:
        assert got["loss_box"].item() > 0


def test_decoder_matches_torchvision(models):
    tv, _, cfg = models
    generator = torch.Generator().manual_seed(3)
    image_sizes = [(384, 512), (300, 390)]  # the second image is padded in the batch
    head, outputs, feature_maps = _random_outputs(2, (384, 512), generator)
    head["cls_logits"] += 1.5  # in place, shared by both layouts: plenty of candidates above 0.2
    anchors = tv.anchor_generator(ImageList(torch.zeros(2, 3, 384, 512), image_sizes), feature_maps)
    split = outputs["num_per_level"]
    split_head = {k: list(v.split(split, dim=1)) for k, v in head.items()}
    split_anchors = [list(a.split(split)) for a in anchors]
    expected = tv.postprocess_detections(split_head, split_anchors, image_sizes)
    got = cfg.build_decoder()(outputs, torch.tensor(image_sizes))
    for e, g in zip(expected, got):
        assert len(e["boxes"]) == 100  # enough candidates to fill detections_per_img
        torch.testing.assert_close(g["boxes"], e["boxes"])
        torch.testing.assert_close(g["scores"], e["scores"])
        assert torch.equal(g["labels"], e["labels"])
