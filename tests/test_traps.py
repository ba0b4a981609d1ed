"""Silent traps closed: torchvision class rows matched by COCO name, init_from matched by class
name, torchvision backbones recognised from their weights, no ImageNet download when a full
checkpoint is loaded, EXIF orientation ignored everywhere, impossible settings refused by key."""
import logging
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

import public.models.backbone as backbone_module
from atss.config import Config as ATSSConfig
from fcos.config import Config as FCOSConfig
from fcos.config_demo import Config as FCOSDemoConfig
from helpers import perturb_for_oracle
from public.engine.runs.checkpoint import load_for_inference, save_checkpoint
from public.engine.train.loop import init_weights_from
from public.models.torchvision_compat import backbone_of, class_rows
from retinanet.config import Config as RetinaNetConfig
from retinanet.config_demo import Config as RetinaNetDemoConfig

DEMO_NAMES = ["circle", "square", "triangle", "cross", "ring"]
DEMO_IDS = [3, 7, 12, 40, 90]


# ---- torchvision class rows -----------------------------------------------------------------
def test_coco_rows_are_matched_by_name(caplog):
    # small ids but other classes: not COCO's classes 3, 7, 12, 40, 90 (car, train, N/A, ...)
    with caplog.at_level(logging.WARNING, logger="densedet"):
        assert class_rows(91, DEMO_IDS, DEMO_NAMES) is None
    assert "'circle'" in caplog.text and "another class set" in caplog.text
    # COCO classes under the dataset's own ids (and spelling): the COCO rows of those names
    rows = class_rows(91, [1, 2, 3], ["Traffic_Light", "dog", "person"])
    assert rows.tolist() == [10, 18, 1]
    # COCO's own ids and names
    assert class_rows(91, [1, 3, 90], ["person", "car", "toothbrush"]).tolist() == [1, 3, 90]
    # one unknown name makes it another class set
    assert class_rows(91, [1, 2], ["person", "drone"]) is None
    # a model of another class count: by id, names unchecked (the file holds none)
    assert class_rows(6, [1, 5], ["a", "b"]).tolist() == [1, 5]
    assert class_rows(6, [1, 7], ["a", "b"]) is None


@pytest.fixture(scope="module")
def tv_fcos_r18():
    """torchvision's FCOS class on a ResNet-18 with random, perturbed weights (91 COCO classes)."""
    torch.manual_seed(0)
    body = torchvision.models.resnet18()
    backbone = _resnet_fpn_extractor(body, 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    model = FCOS(backbone, num_classes=91).eval()
    perturb_for_oracle(model)
    return model


def test_torchvision_coco_model_refused_for_other_classes(tv_fcos_r18, tmp_path):
    path = tmp_path / "tv.pth"
    torch.save(tv_fcos_r18.state_dict(), path)
    with pytest.raises(ValueError, match="cannot score them; fine-tune it on them with init_from"):
        load_for_inference(FCOSConfig(), str(path), DEMO_IDS, DEMO_NAMES)
    # init_from: the class layer is re-initialised, everything else loaded
    cfg = FCOSConfig(backbone="resnet18", pretrained=False)
    model = cfg.resolve().build_model(5)
    fresh = model.head.cls_logits.weight.clone()
    init_weights_from(model, cfg, str(path), DEMO_IDS, DEMO_NAMES)
    assert torch.equal(model.head.cls_logits.weight, fresh)
    assert torch.equal(model.head.bbox_pred.weight, tv_fcos_r18.head.regression_head.bbox_reg.weight)
    # COCO names under other ids pick the rows of those names
    model = cfg.resolve().build_model(2)
    init_weights_from(model, cfg, str(path), [1, 2], ["dog", "person"])
    assert torch.equal(model.head.cls_logits.weight, tv_fcos_r18.head.classification_head.cls_logits.weight[[18, 1]])


# ---- backbones of torchvision state dicts ---------------------------------------------------
@pytest.mark.parametrize("name", backbone_module.RESNETS)
def test_backbone_recognised_from_weights(name):
    with torch.device("meta"):  # shapes only: nothing allocated
        state = torchvision.models.get_model(name).state_dict()
    assert backbone_of(state, prefix="") == name


def test_unknown_backbone_is_named():
    with torch.device("meta"):
        state = torchvision.models.wide_resnet50_2().state_dict()
    with pytest.raises(ValueError, match=r"\(3, 4, 6, 3\) blocks per stage, bottleneck blocks, layer1 conv2 \(128, 128\)"):
        backbone_of(state, prefix="")


def test_torchvision_fcos_on_resnet18_evaluates_as_itself(tv_fcos_r18, tmp_path):
    """A torchvision FCOS on ResNet-18 with COCO classes: recognised, converted, same outputs."""
    path = tmp_path / "fcos_r18.pth"
    torch.save(tv_fcos_r18.state_dict(), path)
    coco_ids = [1, 3, 18]
    loaded = load_for_inference(FCOSConfig(), str(path), coco_ids, ["person", "car", "dog"])
    assert loaded.cfg.backbone == "resnet18" and loaded.overrides["backbone"] == "resnet18"
    images = torch.randn(1, 3, 128, 256)
    with torch.no_grad():
        expected = tv_fcos_r18.head(list(tv_fcos_r18.backbone(images).values()))
        got = loaded.model(images)
    torch.testing.assert_close(got["cls_logits"], expected["cls_logits"][..., coco_ids], atol=1e-4, rtol=0)
    torch.testing.assert_close(got["box_reg"], expected["bbox_regression"], atol=1e-4, rtol=0)


def test_torchvision_retinanet_on_resnet34_converts():
    torch.manual_seed(0)
    body = torchvision.models.resnet34()
    backbone = _resnet_fpn_extractor(body, 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    tv = RetinaNet(backbone, num_classes=91).eval()
    state, settings = RetinaNetConfig().convert_state_dict(tv.state_dict(), [1, 2], ["person", "bicycle"])
    assert settings["backbone"] == "resnet34" and settings["p6_from"] == "p5"
    cfg = RetinaNetConfig(pretrained=False)
    cfg.update(settings)
    missing, unexpected = cfg.resolve().build_model(2).load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)


# ---- no ImageNet download when a full checkpoint is loaded ----------------------------------
def test_no_imagenet_weights_fetched_to_evaluate_or_fine_tune(tv_fcos_r18, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("ImageNet weights requested")
    monkeypatch.setattr(backbone_module, "_load_imagenet_weights", refuse)
    path = tmp_path / "tv.pth"
    torch.save(tv_fcos_r18.state_dict(), path)
    cfg = FCOSConfig()                                         # pretrained=True, as users copy it
    assert cfg.pretrained
    load_for_inference(cfg, str(path), [1, 2], ["person", "bicycle"])
    assert cfg.pretrained                                      # the config itself is unchanged
    with pytest.raises(AssertionError, match="ImageNet weights requested"):
        FCOSConfig(backbone="resnet18").resolve().build_model(2)         # the guard is live

    from public.engine.runs.weights import without_imagenet
    run = FCOSConfig(work_dir=str(tmp_path / "run"), init_from=str(path))
    assert not without_imagenet(run.resolve()).pretrained and run.pretrained
    without_imagenet(run.resolve()).build_model(2)                       # what train() builds before init_from: no fetch


# ---- init_from a densedet checkpoint of other classes ---------------------------------------
@pytest.mark.parametrize("config", [FCOSDemoConfig, RetinaNetDemoConfig], ids=["fcos", "retinanet"])
def test_init_from_maps_classes_by_name(config, tmp_path, caplog):
    torch.manual_seed(0)
    cfg = config()
    source = cfg.resolve().build_model(3)
    with torch.no_grad():
        source.head.cls_logits.weight.normal_()
        source.head.cls_logits.bias.normal_()
    path = tmp_path / "ours.pth"
    save_checkpoint({"format": "densedet", "model": source.state_dict(), "config": {},
                     "classes": {"names": ["cat", "dog", "cow"], "category_ids": [1, 2, 3]}}, path)
    model = cfg.resolve().build_model(3)
    fresh_w, fresh_b = model.head.cls_logits.weight.clone(), model.head.cls_logits.bias.clone()
    with caplog.at_level(logging.WARNING, logger="densedet"):
        init_weights_from(model, cfg, str(path), [1, 2, 3], ["dog", "horse", "cat"])   # same count, other classes
    assert "matched by name" in caplog.text and "'horse'" in caplog.text and "re-initialised" in caplog.text
    C = 3
    A = source.head.cls_logits.bias.shape[0] // C
    old_w = source.head.cls_logits.weight.unflatten(0, (A, C))
    new_w = model.head.cls_logits.weight.unflatten(0, (A, C))
    assert torch.equal(new_w[:, 0], old_w[:, 1]) and torch.equal(new_w[:, 2], old_w[:, 0])   # dog, cat
    assert torch.equal(new_w[:, 1], fresh_w.unflatten(0, (A, C))[:, 1])                      # horse: fresh
    assert torch.equal(model.head.cls_logits.bias.view(A, C)[:, 1], fresh_b.view(A, C)[:, 1])
    assert torch.equal(model.head.bbox_pred.weight, source.head.bbox_pred.weight)
    # another architecture is an error, not a silent re-initialisation
    with pytest.raises(RuntimeError, match="beyond its class layer"):
        init_weights_from(config(fpn_channels=32).resolve().build_model(3), config(fpn_channels=32), str(path),
                          [1, 2, 3], ["cat", "dog", "cow"])


# ---- EXIF orientation -----------------------------------------------------------------------
def _rotated_jpeg(path):
    """A 40 x 64 JPEG (stored pixels, bright top-left) whose EXIF says "rotate 90° clockwise"."""
    from PIL import Image
    pixels = np.zeros((40, 64, 3), dtype=np.uint8)
    pixels[:10, :16] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return pixels


def test_exif_orientation_ignored_by_training_and_test_py(tmp_path, monkeypatch):
    import json
    import public.engine.evaluate.tester as tester
    from public.data.coco import CocoDetection
    _rotated_jpeg(tmp_path / "rotated.jpg")
    assert cv2.imread(str(tmp_path / "rotated.jpg")).shape == (64, 40, 3)     # OpenCV's default rotates
    stored = cv2.imread(str(tmp_path / "rotated.jpg"), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)[:, :, ::-1]
    assert stored.shape == (40, 64, 3)

    annotations = tmp_path / "a.json"
    annotations.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "rotated.jpg", "width": 64, "height": 40}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 16, 10], "area": 160, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}]}))
    trained_on = CocoDetection(str(tmp_path), str(annotations))[0]["image"]

    seen = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            self.predictor = SimpleNamespace(seconds=0.0, seconds_per_image=0.0)
            self.class_names = ["thing"]

        def __call__(self, rgb):
            seen.append(rgb)
            return {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, dtype=np.int64)}

        def record(self, detections, **where):
            return where

    monkeypatch.setattr(tester, "Detector", Recorder)
    records = tester.detect_images(SimpleNamespace(), "unused.pth", str(tmp_path / "rotated.jpg"), str(tmp_path / "out"))
    assert records[0]["width"] == 64 and records[0]["height"] == 40
    assert np.array_equal(seen[0], stored) and np.array_equal(np.asarray(trained_on), stored)


# ---- impossible settings --------------------------------------------------------------------
@pytest.mark.parametrize("config,build,override,key", [  # refused where the config is made, before any build
    (RetinaNetConfig, "build_loss", {"fg_iou_thresh": 0.3, "bg_iou_thresh": 0.4}, "bg_iou_thresh"),
    (RetinaNetConfig, "build_loss", {"fg_iou_thresh": 1.5}, "fg_iou_thresh"),
    (RetinaNetConfig, "build_loss", {"smooth_l1_beta": -0.1}, "smooth_l1_beta"),
    (ATSSConfig, "build_loss", {"positive_type": "IoU", "fg_iou_thresh": 0.3}, "bg_iou_thresh"),
    (ATSSConfig, "build_loss", {"topk": 0}, "topk"),
    (FCOSConfig, "build_loss", {"scale_boundaries": (64, 32, 256, 512)}, "scale_boundaries"),
    (FCOSConfig, "build_loss", {"center_sampling_radius": -1.0}, "center_sampling_radius"),
    (FCOSConfig, "build_loss", {"focal_gamma": -2.0}, "focal_gamma"),
    (FCOSConfig, "build_decoder", {"nms_thresh": 0.0}, "nms_thresh"),
    (RetinaNetConfig, "build_decoder", {"score_thresh": 1.0}, "score_thresh"),
    (ATSSConfig, "build_decoder", {"detections_per_img": 0}, "detections_per_img"),
    (FCOSConfig, "build_decoder", {"topk_candidates": 0}, "topk_candidates"),
])
def test_impossible_settings_name_the_key(config, build, override, key):
    with pytest.raises(ValueError, match=f"bad config value: {key}="):
        config(**override)
    getattr(config(), build)()                                  # the defaults are fine
