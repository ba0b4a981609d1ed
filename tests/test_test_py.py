"""test.py: evaluation numbers equal pycocotools', F-measure thresholds, box voting, TTA,
detection on images (drawn pixels and json), clear errors, and a CLI smoke run."""
import contextlib
import importlib.util
import io
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from config import load_config
from helpers import demo_subset
from public.data.coco import CocoDetection
from public.data.demo import DEMO_CATEGORY_IDS, DEMO_CLASSES
from public.engine.runs.checkpoint import load_for_inference, save_checkpoint
from public.engine.evaluate.evaluator import coco_evaluate
from public.engine.evaluate.inference import Predictor, to_original, tta_passes
from public.engine.evaluate.report import class_colour, f_measure_thresholds
from public.ops.voting import merge_detections

REPO = Path(__file__).resolve().parents[1]


def coco_from(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def pycocotools_stats(coco_gt: COCO, results: list[dict], cat_ids=None) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        if cat_ids is not None:
            coco_eval.params.catIds = cat_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


# ---- evaluation numbers ---------------------------------------------------------------------------
def hand_made_set():
    """3 images (image 3 has no boxes), 3 classes: "a" (id 1), "b" (id 5), "c" (id 9, no detections)."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 80} for i in (1, 2, 3)]
    gt = [  # (image, category, xywh)
        (1, 1, [10, 10, 20, 20]), (1, 1, [50, 40, 30, 30]), (1, 5, [5, 50, 15, 20]),
        (2, 5, [20, 10, 40, 40]), (2, 9, [60, 10, 30, 60]), (2, 1, [0, 0, 10, 10]),
    ]
    annotations = [{"id": n + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                   for n, (i, c, b) in enumerate(gt)]
    categories = [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}, {"id": 9, "name": "c"}]
    results = [  # good, shifted, duplicate, wrong-class and background detections
        {"image_id": 1, "category_id": 1, "bbox": [11, 10, 20, 21], "score": 0.95},
        {"image_id": 1, "category_id": 1, "bbox": [55, 45, 30, 30], "score": 0.7},
        {"image_id": 1, "category_id": 1, "bbox": [10, 11, 19, 20], "score": 0.4},
        {"image_id": 1, "category_id": 5, "bbox": [5, 52, 15, 18], "score": 0.8},
        {"image_id": 2, "category_id": 5, "bbox": [25, 10, 40, 35], "score": 0.6},
        {"image_id": 2, "category_id": 1, "bbox": [60, 10, 30, 60], "score": 0.5},
        {"image_id": 3, "category_id": 5, "bbox": [30, 30, 20, 20], "score": 0.9},
        {"image_id": 3, "category_id": 1, "bbox": [0, 0, 50, 50], "score": 0.3},
    ]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def test_evaluation_equals_pycocotools():
    dataset, results = hand_made_set()
    coco_gt = coco_from(dataset)
    ours = coco_evaluate(coco_gt, results)
    np.testing.assert_array_equal(ours.stats, pycocotools_stats(coco_gt, results))
    assert 0 < ours.stats[0] < 1
    for entry in ours.per_class:  # per class: COCOeval restricted to that category
        alone = pycocotools_stats(coco_gt, results, [entry["category_id"]])
        assert entry["AP"] == pytest.approx(max(alone[0], 0.0), abs=1e-12), entry["name"]
        assert entry["AP50"] == pytest.approx(max(alone[1], 0.0), abs=1e-12), entry["name"]
        assert entry["AP75"] == pytest.approx(max(alone[2], 0.0), abs=1e-12), entry["name"]
    by_name = {c["name"]: c for c in ours.per_class}
    assert by_name["c"]["AP"] == 0.0 and by_name["c"]["num_gt"] == 1          # no detections
    assert [by_name[n]["num_gt"] for n in "ab"] == [3, 2]
    # The mean of the per-class APs is the mAP (every class has ground truth here).
    assert np.mean([c["AP"] for c in ours.per_class]) == pytest.approx(ours.stats[0], abs=1e-12)


# ---- F-measure thresholds -------------------------------------------------------------------------
def test_thresholds_on_a_known_precision_recall_case():
    # Class "a": 4 ground-truth boxes; detections by decreasing score: 0.9 TP, 0.8 TP, 0.7 FP,
    # 0.6 TP, 0.5 FP. Keeping scores >= t:
    #   t=0.9: P=1/1, R=1/4, F = 2*1*.25/1.25 = 0.4
    #   t=0.8: P=2/2, R=2/4, F = 2*1*.5/1.5 = 0.667
    #   t=0.7: P=2/3, R=2/4, F = 0.571
    #   t=0.6: P=3/4, R=3/4, F = 0.75   <- best
    #   t=0.5: P=3/5, R=3/4, F = 2*.6*.75/1.35 = 0.667
    # Class "b" has one box and no detection; class "c" has neither.
    gt_boxes = [[0, 0, 10, 10], [20, 0, 10, 10], [40, 0, 10, 10], [60, 0, 10, 10]]
    dataset = {"images": [{"id": 1, "file_name": "1.png", "width": 100, "height": 100}],
               "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": 100, "iscrowd": 0}
                               for i, b in enumerate(gt_boxes)]
               + [{"id": 9, "image_id": 1, "category_id": 2, "bbox": [0, 50, 10, 10], "area": 100, "iscrowd": 0}],
               "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]}
    detections = [(gt_boxes[0], 0.9), (gt_boxes[1], 0.8), ([80, 80, 10, 10], 0.7), (gt_boxes[2], 0.6),
                  ([80, 40, 10, 10], 0.5)]
    results = [{"image_id": 1, "category_id": 1, "bbox": b, "score": s} for b, s in detections]
    result = coco_evaluate(coco_from(dataset), results)
    thresholds = f_measure_thresholds(result.coco_eval, ["a", "b", "c"], [1, 2, 3])
    assert thresholds[0]["threshold"] == pytest.approx(0.6)
    assert thresholds[0]["f_measure"] == pytest.approx(0.75)
    assert thresholds[1] == {"name": "b", "category_id": 2, "threshold": None, "f_measure": 0.0}
    assert thresholds[2]["threshold"] is None
    assert f_measure_thresholds(None, ["a"], [1])[0]["threshold"] is None     # no detections at all


# ---- merging ------------------------------------------------------------------------------------
def voting_case():
    """Class 0: A (best), B (IoU(A,B) = 80/120 = 0.667: suppressed by NMS at 0.6, votes at 0.66),
    F (IoU(A,F) = 100/160 = 0.625: suppressed, too far to vote), E (alone). Class 1: D, on top of
    A and B but another class."""
    boxes = torch.tensor([[0, 0, 10, 10], [2, 0, 12, 10], [0, 0, 10, 16], [20, 20, 30, 30], [1, 0, 11, 10]],
                         dtype=torch.float32)
    scores = torch.tensor([0.9, 0.3, 0.5, 0.4, 0.8])
    labels = torch.tensor([0, 0, 0, 0, 1])
    return boxes, scores, labels


def test_box_voting_by_hand():
    merged = merge_detections(*voting_case(), method="vote", nms_thresh=0.6, vote_iou=0.66)
    # A voted with B: x1 = (0.9*0 + 0.3*2) / 1.2 = 0.5, x2 = (0.9*10 + 0.3*12) / 1.2 = 10.5.
    torch.testing.assert_close(merged["boxes"], torch.tensor([[0.5, 0, 10.5, 10], [1, 0, 11, 10], [20, 20, 30, 30]]))
    torch.testing.assert_close(merged["scores"], torch.tensor([0.9, 0.8, 0.4]))
    assert merged["labels"].tolist() == [0, 1, 0]

    nms = merge_detections(*voting_case(), method="nms", nms_thresh=0.6)
    torch.testing.assert_close(nms["boxes"], torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]]))
    assert merge_detections(*voting_case(), method="vote", max_detections=2)["scores"].tolist() == pytest.approx([0.9, 0.8])


def test_soft_box_voting_by_hand():
    merged = merge_detections(*voting_case(), method="soft_vote", vote_iou=0.66, soft_min_score=0.05)
    # Clusters at IoU > 0.66: {A, B}, {F}, {E}, {D}. {A, B} -> the voted box with A's score,
    # plus B rescored 0.3 * (1 - 2/3) = 0.1 (>= 0.05); single clusters stay as they are.
    expected = {(0.5, 0, 10.5, 10, 0.9, 0), (1, 0, 11, 10, 0.8, 1), (0, 0, 10, 16, 0.5, 0),
                (20, 20, 30, 30, 0.4, 0), (2, 0, 12, 10, 0.1, 0)}
    rows = torch.cat([merged["boxes"], merged["scores"][:, None], merged["labels"][:, None].float()], 1)
    assert merged["scores"].tolist() == sorted(merged["scores"].tolist(), reverse=True)
    assert {tuple(round(v, 4) for v in row) for row in rows.tolist()} == expected
    empty = merge_detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), "soft_vote")
    assert empty["boxes"].shape == (0, 4)


# ---- TTA ----------------------------------------------------------------------------------------
def test_tta_passes_and_unflip():
    cfg = load_config("fcos/config_demo.py")
    passes = tta_passes(cfg)
    assert len(passes) == 2 * len(cfg.tta_scales) and [p[1] for p in passes[:2]] == [False, True]
    cfg.set("tta_scales", (100, 200))
    with pytest.raises(ValueError, match="tta_scale_ranges"):
        tta_passes(cfg)
    # A box found at x 10..30 of a flipped, 2x resized 50 px wide image is at x 50-15..50-5 in the original.
    from public.data.collate import Batch
    batch = Batch(images=torch.zeros(1, 3, 32, 32), targets=torch.zeros(1, 0, 5), image_sizes=torch.tensor([[40, 100]]),
                  scales=torch.tensor([[2.0, 2.0]]), orig_sizes=torch.tensor([[20, 50]]), image_ids=torch.tensor([1]))
    det = {"boxes": torch.tensor([[10.0, 4, 30, 8]]), "scores": torch.tensor([0.5]), "labels": torch.tensor([0])}
    torch.testing.assert_close(to_original([det], batch, flipped=True)[0]["boxes"], torch.tensor([[35.0, 2, 45, 4]]))


def fresh_checkpoint(path: Path, seed: int = 0) -> Path:
    """A randomly initialised demo FCOS saved with the metadata of a trained one."""
    cfg = load_config("fcos/config_demo.py")
    torch.manual_seed(seed)
    model = cfg.resolve().build_model(len(DEMO_CLASSES))
    save_checkpoint({"format": "densedet", "model": model.state_dict(), "config": cfg.to_dict(), "epoch": 0,
                     "best_map": 0.0, "classes": {"names": list(DEMO_CLASSES), "category_ids": list(DEMO_CATEGORY_IDS)}},
                    path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return fresh_checkpoint(tmp_path_factory.mktemp("ckpt") / "fresh.pth")


# Random init: class probabilities ~0.01, so the decoder must keep everything.
LOW = ["score_thresh=0.0", "num_workers=0", "test_min_size=128", "max_size=192"]


def test_single_pass_tta_equals_plain_inference(checkpoint, tmp_path):
    cfg = load_config("fcos/config_demo.py", LOW + ["tta_scales=(128,)", "tta_scale_ranges=()", "tta_flip=False",
                                                    "tta_merge=nms", "tta_max_size=192"])
    loaded = load_for_inference(cfg, str(checkpoint))
    predictor = Predictor(loaded.model, cfg.build_decoder(), cfg, "cpu")
    images_dir, annotations = demo_subset(tmp_path, 2, "val")
    dataset = CocoDetection(images_dir, annotations)
    samples = [dataset[0], dataset[1]]
    plain, tta = predictor(samples), predictor(samples, tta=True)
    for p, t in zip(plain, tta):
        assert p["boxes"].shape[0] == cfg.detections_per_img
        torch.testing.assert_close(t["boxes"], p["boxes"])
        torch.testing.assert_close(t["scores"], p["scores"])
    assert predictor.num_images == 4 and predictor.seconds > 0


# ---- detection ----------------------------------------------------------------------------------
def load_test_cli():
    spec = importlib.util.spec_from_file_location("densedet_test_cli", REPO / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_detect_images_draws_boxes_and_writes_json(checkpoint, tmp_path, capsys):
    images_dir, annotations = demo_subset(tmp_path, 2, "val")
    inputs = tmp_path / "in"
    inputs.mkdir()
    names = [im["file_name"] for im in json.loads(Path(annotations).read_text())["images"]]
    for name in names:
        (inputs / name).write_bytes((Path(images_dir) / name).read_bytes())
    (inputs / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    cli = load_test_cli()
    # One detection per image, so the drawn box is not painted over by others.
    args = ["--checkpoint", str(checkpoint), "--images", str(inputs), "--out", str(out), "--score-thresh", "0",
            *LOW, "detections_per_img=1", "--save-txt"]
    assert cli.main(args) == 0
    assert sorted(p.name for p in (out / "labels").iterdir()) == sorted(Path(n).stem + ".txt" for n in names)
    assert all(len((out / "labels" / f"{Path(n).stem}.txt").read_text().splitlines()) == 1 for n in names)
    assert re.search(r"cannot read image \S*broken\.png: skipped", capsys.readouterr().out)
    records = json.loads((out / "detections.json").read_text())
    assert [r["file_name"] for r in records] == sorted(names)

    cfg = load_config("fcos/config_demo.py", LOW + ["detections_per_img=1"])
    loaded = load_for_inference(cfg, str(checkpoint))
    predictor = Predictor(loaded.model, cfg.build_decoder(), cfg, "cpu")
    for record in records:
        image = cv2.imread(str(inputs / record["file_name"]))
        expected = predictor([cv2.cvtColor(image, cv2.COLOR_BGR2RGB)])[0]
        np.testing.assert_allclose(record["boxes"], expected["boxes"].numpy(), atol=0.01)
        np.testing.assert_allclose(record["scores"], expected["scores"].numpy(), atol=1e-4)
        label = int(expected["labels"][0])
        assert record["classes"] == [DEMO_CLASSES[label]] and record["category_ids"] == [DEMO_CATEGORY_IDS[label]]
        drawn = cv2.imread(str(out / record["file_name"]))
        assert drawn.shape == image.shape
        x1, y1, x2, y2 = np.round(expected["boxes"][0].numpy()).astype(int)
        x1, x2 = np.clip([x1, x2], 0, image.shape[1] - 1)
        middle = int(np.clip((y1 + y2) // 2, 0, image.shape[0] - 1))
        assert tuple(drawn[middle, x1]) == class_colour(label)            # left edge
        assert tuple(drawn[middle, x2]) == class_colour(label)            # right edge


def test_mismatched_checkpoint_is_a_clear_error(checkpoint, tmp_path, capsys):
    cli = load_test_cli()
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    assert cli.main(["--checkpoint", str(checkpoint), "--images", str(image), "backbone=resnet34"]) == 1
    assert "backbone 'resnet18' vs 'resnet34'" in capsys.readouterr().err      # named before anything is built
    images_dir, annotations = demo_subset(tmp_path, 2, "val")
    data = json.loads(Path(annotations).read_text())
    for c in data["categories"]:
        c["id"] += 1000
    for a in data["annotations"]:
        a["category_id"] += 1000
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    assert cli.main(["--checkpoint", str(checkpoint), f"val_images={images_dir}", f"val_annotations={other}",
                     "num_workers=0"]) == 1
    assert "category ids [3, 7, 12, 40, 90] vs [1003, 1007, 1012, 1040, 1090]" in capsys.readouterr().err


# ---- command line -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_evaluation_report(checkpoint, tmp_path, capsys):
    """python test.py --config ... --checkpoint ... --save-thresholds (test.py's main, in this
    process): the report's text, files and numbers."""
    images_dir, annotations = demo_subset(tmp_path, 4, "val")
    ckpt = tmp_path / "copy.pth"
    ckpt.write_bytes(checkpoint.read_bytes())
    work_dir = tmp_path / "eval"
    capsys.readouterr()
    code = load_test_cli().main(["--config", "fcos/config_demo.py", "--checkpoint", str(ckpt), f"val_images={images_dir}",
                                 f"val_annotations={annotations}", f"work_dir={work_dir}", "--save-thresholds", *LOW])
    out, err = capsys.readouterr()
    assert code == 0, out[-3000:] + err[-3000:]
    for text in ("AP @[IoU=0.50:0.95 | area=   all | maxDets=100]", "per-class AP (weakest first)",
                 "per-class score thresholds", "ms/image", "images/s"):
        assert text in out, text

    # The printed mAP is pycocotools' on the written detections.
    results = json.loads((work_dir / "detections.json").read_text())
    assert len(results) == 4 * 100 and {r["image_id"] for r in results} <= {im["id"] for im in
                                                                            json.loads(Path(annotations).read_text())["images"]}
    stats = pycocotools_stats(COCO(annotations), results)
    assert f"maxDets=100] = {stats[0]:.3f}" in out

    thresholds = json.loads((work_dir / "thresholds.json").read_text())
    assert list(thresholds) == list(DEMO_CLASSES)
    assert [t["category_id"] for t in thresholds.values()] == list(DEMO_CATEGORY_IDS)
    saved = torch.load(ckpt, weights_only=True)["score_thresholds"]
    assert saved == [t["threshold"] for t in thresholds.values()]
    with_gt = {a["category_id"] for a in json.loads(Path(annotations).read_text())["annotations"]}
    pngs = sorted((work_dir / "pr_curves").glob("[0-9]*.png"))
    assert len(pngs) == len(with_gt) and cv2.imread(str(pngs[0])).shape == (450, 500, 3)
    for name in ("pr_curves/all_classes.png", "confusion_matrix.png", "val_samples.png"):
        assert cv2.imread(str(work_dir / name)) is not None, name


def test_save_txt_writes_one_normalised_line_per_box(tmp_path):
    """--save-txt: labels/<stem>.txt with 'label cx cy w h score', centre and size as fractions
    of the image (checked by hand on a 200 x 100 image), an empty file for an image without boxes."""
    from public.engine.evaluate.tester import write_txt

    detections = {"boxes": np.array([[20, 10, 60, 50], [100, 0, 200, 100]], np.float32),
                  "scores": np.array([0.9, 0.25], np.float32), "labels": np.array([2, 0])}
    write_txt(tmp_path / "labels" / "a.txt", detections, width=200, height=100)
    lines = (tmp_path / "labels" / "a.txt").read_text().splitlines()
    assert lines == ["2 0.200000 0.300000 0.200000 0.400000 0.9000", "0 0.750000 0.500000 0.500000 1.000000 0.2500"]
    empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32), "labels": np.zeros(0, int)}
    write_txt(tmp_path / "labels" / "b.txt", empty, width=10, height=10)
    assert (tmp_path / "labels" / "b.txt").read_text() == ""


def test_detection_goes_beside_the_checkpoint_and_is_never_overwritten(tmp_path):
    """test.py --images without --out writes detect/ beside the checkpoint, then detect_2/,
    detect_3/...: an earlier detections.json is never overwritten."""
    from public.engine.evaluate.tester import free_output_dir

    run = tmp_path / "run"
    assert free_output_dir(run, "detect") == run / "detect"
    (run / "detect").mkdir(parents=True)
    assert free_output_dir(run, "detect") == run / "detect"            # an empty folder is free
    (run / "detect" / "detections.json").write_text("[]")
    assert free_output_dir(run, "detect") == run / "detect_2"
    (run / "detect_2").mkdir()
    (run / "detect_2" / "detections.json").write_text("[]")
    assert free_output_dir(run, "detect") == run / "detect_3" and free_output_dir(run, "eval") == run / "eval"
