"""End to end against torchvision, through the data path: a torchvision FCOS / RetinaNet state
dict scored by ``--evaluate`` (files read by our loader, ``test_resize="torchvision"`` set by
the conversion, our model, decoder and COCO conversion) gives the boxes and COCO stats that
torchvision's own model gives on the same files (PIL + to_tensor, its GeneralizedRCNNTransform,
its postprocess), scored by pycocotools.

The models have random weights, perturbed so that they detect (up to 100 boxes per image,
overlapping, so NMS works), and the ground truth is built from the reference model's own
detections, each side moved by up to 10% of the box, so that every IoU threshold of COCO's is crossed and the
stats are neither 0 nor 1."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.transforms.functional import to_tensor

import fcos.convert
import retinanet.convert
from config import load_config
from helpers import perturb_for_oracle
from public.data.demo import ensure_demo_data
from public.engine.runs.checkpoint import load_for_inference
from public.engine.evaluate.inference import Predictor
from public.engine.evaluate.tester import evaluate_checkpoint

# A COCO-layout model (91 rows, row = category id) scored on five COCO classes.
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"},
              {"id": 44, "name": "bottle"}, {"id": 90, "name": "toothbrush"}]
CAT_IDS = [c["id"] for c in CATEGORIES]
NUM_IMAGES, BATCH = 6, 2
# Sizes off the demo images' ~150 px, so that the resize scale is not a whole number and
# torchvision's floored sizes differ from rounded ones.
MIN_SIZE, MAX_SIZE = 203, 229


def _torchvision_model(kind: str):
    torch.manual_seed(0)
    backbone = _resnet_fpn_extractor(torchvision.models.resnet18(), 5, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(256, 256))
    model_class = FCOS if kind == "fcos" else RetinaNet
    model = model_class(backbone, num_classes=91, min_size=MIN_SIZE, max_size=MAX_SIZE).eval()
    perturb_for_oracle(model)
    head = model.head
    anchors = 1 if kind == "fcos" else 9
    with torch.no_grad():
        # Scores spread around 0.5 (above the thresholds), only for the five classes.
        cls = head.classification_head.cls_logits
        cls.weight.normal_(0, 0.05)
        bias = torch.full((anchors, 91), -20.0)
        bias[:, CAT_IDS] = torch.linspace(-1.0, 1.0, len(CAT_IDS))
        cls.bias.copy_(bias.flatten())
        reg = head.regression_head.bbox_reg
        reg.weight.normal_(0, 0.05)
        if kind == "fcos":
            reg.bias.fill_(2.0)                              # sides of ~2 strides (relu'd)
        else:
            reg.bias.view(anchors, 4)[:, 2:] = -1.0          # boxes ~0.4 x their anchor: P6 boxes inside the image
            # Larger P6/P7 features, hence more extreme scores there: some of the 300 kept
            # detections come from the levels whose anchor spacing follows torchvision's rule.
            model.backbone.fpn.extra_blocks.p6.weight.mul_(4.0)
    return model


@pytest.fixture(scope="module")
def demo_images(tmp_path_factory):
    """The first NUM_IMAGES demo val images with a little pixel noise, as PNG (both readers give
    the same pixels). The demo's flat backgrounds give many locations exactly equal scores,
    whose order two correct decoders may break differently; photographs have texture."""
    paths = ensure_demo_data()
    source = json.loads(Path(paths["val_annotations"]).read_text())
    folder = tmp_path_factory.mktemp("images")
    images = source["images"][:NUM_IMAGES]
    rng = np.random.default_rng(0)
    for image in images:
        pixels = np.asarray(Image.open(Path(paths["val_images"]) / image["file_name"]).convert("RGB"), dtype=np.int16)
        noisy = np.clip(pixels + rng.integers(-6, 7, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / image["file_name"])
    return folder, images


def _reference(model, folder: Path, images: list[dict]) -> list[dict]:
    """torchvision's model on the files as its references read them, in our loader's batches."""
    results = []
    for start in range(0, len(images), BATCH):
        chunk = images[start:start + BATCH]
        tensors = [to_tensor(Image.open(folder / im["file_name"]).convert("RGB")) for im in chunk]
        with torch.no_grad():
            outputs = model(tensors)
        for image, out in zip(chunk, outputs):
            boxes = out["boxes"].numpy().astype(np.float64)
            boxes[:, 2:] -= boxes[:, :2]
            results += [{"image_id": image["id"], "category_id": int(label), "bbox": box.tolist(), "score": float(score)}
                        for box, label, score in zip(boxes, out["labels"].tolist(), out["scores"].tolist())]
    return results


def _ground_truth(reference: list[dict], images: list[dict], path: Path) -> None:
    """Every 4th detection of each image as an object, each side moved by up to 10% of the box."""
    rng = np.random.default_rng(0)
    annotations = []
    for image in images:
        dets = [r for r in reference if r["image_id"] == image["id"]][::4]
        for det in dets:
            x, y, w, h = det["bbox"]
            x1, y1, x2, y2 = np.array([x, y, x + w, y + h]) + rng.uniform(-0.1, 0.1, 4) * [w, h, w, h]
            x1, y1 = max(0.0, x1), max(0.0, y1)
            x2, y2 = min(float(image["width"]), x2), min(float(image["height"]), y2)
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": det["category_id"],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))


def _pycocotools_stats(annotations: Path, results: list[dict]) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
        coco_eval = COCOeval(gt, gt.loadRes(results), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


def _largest_box_difference(ours: list[dict], reference: list[dict]) -> float:
    """Match each of our detections to a reference one of the same image, class and score
    (one to one); the largest |difference| of a box coordinate (xywh px) over the matches.
    inf if the counts differ or a detection has no match."""
    if len(ours) != len(reference):
        return float("inf")
    worst = 0.0
    for key in {(r["image_id"], r["category_id"]) for r in reference}:
        theirs = [r for r in reference if (r["image_id"], r["category_id"]) == key]
        mine = [r for r in ours if (r["image_id"], r["category_id"]) == key]
        if len(mine) != len(theirs):
            return float("inf")
        t_boxes = np.array([r["bbox"] for r in theirs])        # [N, 4]
        t_scores = np.array([r["score"] for r in theirs])      # [N]
        free = np.ones(len(theirs), dtype=bool)
        for r in mine:
            diff = np.abs(t_boxes - np.array(r["bbox"])).max(axis=1)
            diff[~free | (np.abs(t_scores - r["score"]) > 2e-5)] = np.inf
            best = int(diff.argmin())
            free[best] = False
            worst = max(worst, float(diff[best]))
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fcos", "retinanet"])
def test_evaluate_torchvision_checkpoint_equals_torchvision(kind, demo_images, tmp_path, monkeypatch):
    folder, images = demo_images
    model = _torchvision_model(kind)
    reference = _reference(model, folder, images)
    assert len(reference) > 50 * len(images)  # each image: many overlapping boxes, NMS at work
    annotations = tmp_path / "gt.json"
    _ground_truth(reference, images, annotations)
    expected = _pycocotools_stats(annotations, reference)
    assert 0.05 < expected[0] < 0.9 and 0.05 < expected[2] < 0.95  # mAP and AP75: neither trivial

    checkpoint = tmp_path / f"torchvision_{kind}.pth"
    torch.save(model.state_dict(), checkpoint)

    def ours():
        cfg = load_config(f"{kind}/config.py", [
            f"val_images={folder}", f"val_annotations={annotations}", f"test_min_size={MIN_SIZE}",
            f"max_size={MAX_SIZE}", f"batch_size={BATCH}", "num_workers=0", "device=cpu",
            f"work_dir={tmp_path / 'eval'}"])
        return evaluate_checkpoint(cfg, str(checkpoint))

    result = ours()
    assert np.abs(np.array(result.stats) - expected).max() <= 1e-3, (result.stats, expected.tolist())
    assert _largest_box_difference(result.results, reference) <= 1e-3

    # test.py's Predictor (images as read, no dataset) gives the same boxes.
    cfg = load_config(f"{kind}/config.py", [f"test_min_size={MIN_SIZE}", f"max_size={MAX_SIZE}"])
    loaded = load_for_inference(cfg, str(checkpoint), CAT_IDS, [c["name"] for c in CATEGORIES])
    predictor = Predictor(loaded.model, loaded.cfg.build_decoder(), loaded.cfg, "cpu")
    predicted = []
    for start in range(0, len(images), BATCH):
        chunk = images[start:start + BATCH]
        pixels = [np.asarray(Image.open(folder / im["file_name"]).convert("RGB")) for im in chunk]
        for image, det in zip(chunk, predictor(pixels)):
            boxes = det["boxes"].numpy().astype(np.float64)
            boxes[:, 2:] -= boxes[:, :2]
            predicted += [{"image_id": image["id"], "category_id": CAT_IDS[label], "bbox": box.tolist(), "score": score}
                          for box, label, score in zip(boxes, det["labels"].tolist(), det["scores"].tolist())]
    assert _largest_box_difference(predicted, reference) <= 1e-3

    # The check can tell: our own resize (OpenCV on uint8, rounded sizes) moves the boxes.
    converter = fcos.convert if kind == "fcos" else retinanet.convert
    monkeypatch.setattr(converter, "TORCHVISION_PREPROCESSING", {})
    assert _largest_box_difference(ours().results, reference) > 1e-2
