"""A corpus of broken datasets: each one stops with a message naming the file / id, or is
repaired with one warning; evaluation scores the repaired ground truth (a perfect detector
scores 1.000); the dataset check command reports the same and counts boxes per FPN level."""
from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from config import load_config
from helpers import CapturedLog
from public.data.levels import level_spread_hint, level_warnings
from tools.check_dataset import check, main as check_main
from public.data.coco import CocoDetection
from public.data.validate import DatasetError, check_same_classes, validate_coco
from public.engine.evaluate.evaluator import coco_evaluate

SIDE = 32
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def write(root: Path, images: list[dict], annotations: list, categories=CATEGORIES, ext: str = "jpg",
          name: str = "instances.json") -> tuple[str, str]:
    """Write 32x32 images (a white square on grey, so each file differs) for every image entry
    and the json; return (images dir, json path)."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for im in images:
        path = images_dir / im["file_name"]
        if not path.exists():
            pixels = np.full((SIDE, SIDE, 3), 100, np.uint8)
            shift = int(im["id"]) % 16
            pixels[4:12, 4 + shift:12 + shift] = 255
            cv2.imwrite(str(path), pixels)
    ann_file = root / name
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(images_dir), str(ann_file)


def image(image_id: int, ext: str = "jpg", **extra) -> dict:
    return {"id": image_id, "file_name": f"{image_id:03d}.{ext}", "width": SIDE, "height": SIDE, **extra}


def ann(ann_id, image_id, category_id, bbox, **extra) -> dict:
    out = {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
           "area": float(bbox[2] * bbox[3]) if all(isinstance(v, (int, float)) for v in bbox) else 1.0,
           "iscrowd": 0}
    out.update(extra)
    return out


def good_images(n: int = 3, ext: str = "jpg") -> list[dict]:
    return [image(i, ext) for i in range(1, n + 1)]


def good_annotations() -> list[dict]:
    return [ann(1, 1, 1, [2, 3, 10, 12]), ann(2, 2, 2, [5, 5, 20, 8]), ann(3, 3, 1, [0, 0, 16, 16])]


def stops(images_dir: str, ann_file: str, pattern: str) -> str:
    """CocoDetection stops with a DatasetError matching ``pattern`` (dot matches newlines)."""
    with pytest.raises(DatasetError, match="(?s)" + pattern) as error:
        CocoDetection(images_dir, ann_file)
    return str(error.value)


# ---------------------------------------------------------------------------- fatal problems

def test_clean_dataset_loads_without_a_word(tmp_path):
    paths = write(tmp_path, good_images(), good_annotations())
    with CapturedLog() as log:
        dataset = CocoDetection(*paths)
    assert log.warnings == [] and dataset.validation.groups == []
    np.testing.assert_array_equal(dataset[0]["boxes"], [[2, 3, 12, 15]])


def test_zero_annotations_stop(tmp_path):
    stops(*write(tmp_path, good_images(), []), r"instances\.json.*no usable boxes: nothing to train on or score "
                                                r"against \(1\): .*instances\.json: the json has no annotations")


def test_all_annotations_dropped_stop(tmp_path):
    stops(*write(tmp_path, good_images(), [ann(1, 1, 1, [0, 0, 0, 5]), ann(2, 9, 1, [0, 0, 5, 5])]),
          r"no usable boxes.*all 2 annotations were dropped or are crowd")


def test_same_file_under_two_ids_stops(tmp_path):
    images = good_images() + [dict(image(4), file_name="002.jpg")]
    stops(*write(tmp_path, images, good_annotations()),
          r"files listed under more than one image id \(1\): 002\.jpg \(image ids \[2, 4\]\)")


def test_duplicate_image_ids_are_named(tmp_path):
    images = good_images() + [dict(image(2), file_name="other.jpg")]
    stops(*write(tmp_path, images, good_annotations()), r"duplicate image ids \(1\): image id 2 \(002\.jpg, other\.jpg\)")


def test_truncated_jpeg_stops(tmp_path):
    images_dir, ann_file = write(tmp_path, good_images(), good_annotations())
    path = Path(images_dir) / "002.jpg"
    path.write_bytes(path.read_bytes()[:-100])  # cut inside the compressed data (which starts at byte ~600)
    stops(images_dir, ann_file, r"truncated image files \(1\): image id 2 \(002\.jpg\)")


def test_truncated_png_stops(tmp_path):
    images_dir, ann_file = write(tmp_path, good_images(ext="png"), good_annotations())
    path = Path(images_dir) / "003.png"
    path.write_bytes(path.read_bytes()[:-20])
    stops(images_dir, ann_file, r"truncated image files \(1\): image id 3 \(003\.png\)")


def test_jpeg_with_trailing_bytes_after_its_end_marker_passes(tmp_path):
    images_dir, ann_file = write(tmp_path, good_images(), good_annotations())
    path = Path(images_dir) / "001.jpg"
    path.write_bytes(path.read_bytes() + b"camera maker notes")
    assert CocoDetection(images_dir, ann_file).validation.fatal == []


def test_zero_byte_image_stops(tmp_path):
    images_dir, ann_file = write(tmp_path, good_images(), good_annotations())
    (Path(images_dir) / "001.jpg").write_bytes(b"")
    stops(images_dir, ann_file, r"image files of 0 bytes \(1\): image id 1 \(001\.jpg\)")


def test_unreadable_image_stops(tmp_path):
    images_dir, ann_file = write(tmp_path, good_images(), good_annotations())
    (Path(images_dir) / "003.jpg").write_text("this is a text file")
    stops(images_dir, ann_file, r"image files that cannot be read as images \(1\): image id 3 \(003\.jpg\)")


def test_format_opencv_cannot_read_stops(tmp_path):
    from PIL import Image

    images = good_images(2) + [image(3, "gif")]
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    Image.new("RGB", (SIDE, SIDE)).save(images_dir / "003.gif")
    stops(*write(tmp_path, images, good_annotations()),
          r"format OpenCV cannot read \(1\): image id 3 \(003\.gif\): GIF \(convert them to JPEG or PNG\)")


def test_json_size_different_from_file_stops(tmp_path):
    images = good_images()
    images[1].update(width=40, height=30)
    stops(*write(tmp_path, images, good_annotations()),
          r"size differs from the json's width/height \(1\): image id 2 \(002\.jpg\): 32x32 in the file, 40x30 in the json")


def test_missing_image_file_stops(tmp_path):
    images_dir, ann_file = write(tmp_path, good_images(), good_annotations())
    (Path(images_dir) / "002.jpg").unlink()
    stops(images_dir, ann_file, r"image files that do not exist \(1\): image id 2 \(002\.jpg\)")


def test_empty_categories_stop(tmp_path):
    stops(*write(tmp_path, good_images(), good_annotations(), categories=[]),
          r"no categories: the json's 'categories' list is empty")


def test_duplicate_category_ids_stop(tmp_path):
    stops(*write(tmp_path, good_images(), good_annotations(), categories=CATEGORIES + [{"id": 2, "name": "x"}]),
          r"duplicate category ids \(1\): category id 2 \(2 times\)")


def test_malformed_json_stops(tmp_path):
    images_dir, ann_file = write(tmp_path, good_images(), good_annotations())
    Path(ann_file).write_text('{"images": [')
    stops(images_dir, ann_file, r"annotations file is not valid json")


def test_every_fatal_problem_is_listed_at_once(tmp_path):
    images = good_images() + [dict(image(4), file_name="001.jpg")]
    images[1].update(width=40)
    images_dir, ann_file = write(tmp_path, images, good_annotations())
    (Path(images_dir) / "003.jpg").write_bytes(b"")
    message = stops(images_dir, ann_file, "training would fail")
    assert "files listed under more than one image id (1)" in message
    assert "image files of 0 bytes (1): image id 3" in message
    assert "size differs from the json's width/height (1): image id 2" in message


def test_swapped_class_names_between_train_and_val_stop(tmp_path):
    train = CocoDetection(*write(tmp_path / "train", good_images(), good_annotations()))
    swapped = [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}]
    val = CocoDetection(*write(tmp_path / "val", good_images(), good_annotations(), categories=swapped))
    with pytest.raises(DatasetError, match=r"category names differ between .*train/instances\.json and "
                                           r".*val/instances\.json for the same ids \(id 1: 'cat' vs 'dog'; "
                                           r"id 2: 'dog' vs 'cat'\)"):
        check_same_classes(train, val, train.annotations_file, val.annotations_file)
    other_ids = CocoDetection(*write(tmp_path / "val2", good_images(), good_annotations()[:1],
                                     categories=[{"id": 1, "name": "cat"}]))
    with pytest.raises(DatasetError, match=r"categories differ between .*ids \[1, 2\].*ids \[1\]"):
        check_same_classes(train, other_ids, train.annotations_file, other_ids.annotations_file)
    check_same_classes(train, train, "a", "b")  # the same classes pass


# ---------------------------------------------------------------------------- repairs

def broken_but_repairable() -> tuple[list[dict], list]:
    """Images 1-4 (32x32); annotation 6 has no id, annotation 7 repeats id 1. Returns (images, annotations)."""
    images = good_images(3) + [{"id": 4, "file_name": "004.jpg"}]          # no width/height
    annotations = [
        ann(1, 1, 1, [2, 3, 10, 12]),                       # fine
        ann(2, 1, 2, [0, 0, 0, 10]),                        # zero width -> dropped
        ann(3, 1, 2, [20, 20, -4, 5]),                      # negative width -> dropped
        ann(4, 2, 1, [40, 40, 5, 5]),                       # entirely outside the image -> dropped
        ann(5, 2, 2, [24, 20, 16, 20]),                     # partly outside -> clipped to [24, 20, 8, 12]
        {"image_id": 2, "category_id": 1, "bbox": [1, 1, 6, 6], "area": 36.0, "iscrowd": 0},  # no id -> new id
        ann(1, 3, 2, [3, 4, 5, 6]),                         # duplicate id 1 -> new id
        ann(8, 3, 1, [float("nan"), 1, 5, 5]),              # NaN -> dropped
        ann(9, 3, 1, ["12.5", "4", "8", "6"]),              # strings that parse -> [12.5, 4, 8, 6]
        ann(10, 3, 2, ["abc", 4, 8, 6]),                    # malformed -> dropped
        {"id": 11, "image_id": 4, "category_id": 2, "bbox": [4, 4, 10, 10], "iscrowd": 0},  # no area -> 100
        ann(12, 99, 1, [1, 1, 5, 5]),                       # image 99 not in the json -> dropped
        ann(13, 4, 77, [1, 1, 5, 5]),                       # category 77 unknown -> dropped
        ann(14, 4, 1, [0, 0, 32, 32], iscrowd=1),           # crowd: not a target, ignored by COCOeval
        ann(15, 4, 1, [16, 16, 8, 8], ignore=1),            # an "ignore" flag passes through untouched
    ]
    return images, annotations


def test_repairs_give_one_warning_naming_every_id(tmp_path):
    images, annotations = broken_but_repairable()
    with CapturedLog() as log:
        CocoDetection(*write(tmp_path, images, annotations))
    assert len(log.warnings) == 1
    expected = [
        "annotations of an image id not in 'images', dropped (1): annotation id 12 (image id 99)",
        "annotations of a category id not in 'categories', dropped (1): annotation id 13 (image id 4): category id 77",
        "annotations with a malformed bbox (not 4 numbers), dropped (1): annotation id 10 (image id 3): ['abc', 4, 8, 6]",
        "annotations with a NaN or infinite bbox coordinate, dropped (1): annotation id 8 (image id 3)",
        "annotations with a zero or negative width or height, dropped (2): annotation id 2 (image id 1), "
        "annotation id 3 (image id 1)",
        "annotations outside their image or under 1 px once clipped to it, dropped (1): annotation id 4 (image id 2)",
        "annotations with a box partly outside their image, clipped to it (1): annotation id 5 (image id 2)",
        "annotations with bbox coordinates as strings, converted to numbers (1): annotation id 9 (image id 3)",
        "annotations without a numeric 'area', computed from the box (1): annotation id 11 (image id 4)",
        "annotations without an integer 'id', given a new one (1): annotation #5 (image id 2): id 16",
        "annotations with a duplicate 'id', given a new one (1): annotation #6 (id 1, image id 3): id 17",
        "images without width/height in the json, read from the file (1): image id 4 (004.jpg)",
    ]
    for line in expected:
        assert line in log.warnings[0], line


def test_repaired_targets_and_ground_truth_by_hand(tmp_path):
    images, annotations = broken_but_repairable()
    dataset = CocoDetection(*write(tmp_path, images, annotations))
    targets = {dataset[i]["image_id"]: (dataset[i]["boxes"].tolist(), dataset[i]["labels"].tolist())
               for i in range(len(dataset))}
    assert targets == {
        1: ([[2, 3, 12, 15]], [0]),
        2: ([[24, 20, 32, 32], [1, 1, 7, 7]], [1, 0]),
        3: ([[3, 4, 8, 10], [12.5, 4, 20.5, 10]], [1, 0]),
        4: ([[4, 4, 14, 14], [16, 16, 24, 24]], [1, 0]),
    }
    gt = sorted(((a["id"], a["image_id"], a["category_id"], a["bbox"], a["area"], a["iscrowd"], a.get("ignore"))
                 for a in dataset.coco.dataset["annotations"]))
    assert gt == [
        (1, 1, 1, [2, 3, 10, 12], 120.0, 0, None),
        (5, 2, 2, [24, 20, 8, 12], 96.0, 0, None),      # clipped; area capped at the clipped box
        (9, 3, 1, [12.5, 4, 8, 6], 1.0, 0, None),       # the json's area kept
        (11, 4, 2, [4, 4, 10, 10], 100.0, 0, None),     # area computed
        (14, 4, 1, [0, 0, 32, 32], 1024.0, 1, None),    # crowd kept as crowd
        (15, 4, 1, [16, 16, 8, 8], 64.0, 0, 1),         # ignore flag intact
        (16, 2, 1, [1, 1, 6, 6], 36.0, 0, None),        # the annotation without id
        (17, 3, 2, [3, 4, 5, 6], 30.0, 0, None),        # the duplicate id
    ]
    assert {im["id"]: (im["width"], im["height"]) for im in dataset.coco.dataset["images"]}[4] == (SIDE, SIDE)


def perfect_detections(dataset) -> list[dict]:
    """The dataset's own targets as detections with score 1.0, in COCO result format."""
    results = []
    for i in range(len(dataset)):
        sample = dataset[i]
        for (x1, y1, x2, y2), label in zip(sample["boxes"].tolist(), sample["labels"].tolist()):
            results.append({"image_id": sample["image_id"], "category_id": dataset.label_to_cat_id[label],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 1.0})
    return results


def test_perfect_detector_scores_one_on_the_repaired_set(tmp_path):
    images, annotations = broken_but_repairable()
    dataset = CocoDetection(*write(tmp_path, images, annotations))
    result = coco_evaluate(dataset.coco, perfect_detections(dataset))
    assert result.stats[0] == pytest.approx(1.0) and result.stats[8] == pytest.approx(1.0)
    assert [c["num_gt"] for c in result.per_class] == [4, 3]   # crowd 14 not counted; 15 counted


@pytest.mark.parametrize("index", range(1, 15))
def test_perfect_detector_scores_one_with_each_case_alone(tmp_path, index):
    """Each annotation of the corpus added alone to a clean set: the repairs (1-12) give one
    warning with exactly one group, crowd and ignore (13, 14) none; a perfect detector scores 1.000."""
    images, annotations = broken_but_repairable()
    images[3] = image(4)   # with its size: the annotation is the only thing to repair
    broken = dict(annotations[index])
    if "id" in broken:
        broken["id"] = 1 if index == 6 else broken["id"] + 100   # a duplicate only where meant
    with CapturedLog() as log:
        dataset = CocoDetection(*write(tmp_path, images, good_annotations() + [broken]))
    assert len(dataset.validation.repaired) == (1 if index <= 12 else 0)
    assert len(log.warnings) == (1 if index <= 12 else 0)
    result = coco_evaluate(dataset.coco, perfect_detections(dataset))
    assert result.stats[0] == pytest.approx(1.0)


def test_size_mismatch_explained_by_exif_rotation(tmp_path):
    from PIL import Image

    images_dir = tmp_path / "images"
    images_dir.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    Image.new("RGB", (SIDE, 20)).save(images_dir / "001.jpg", exif=exif)
    images = [dict(image(1), width=20, height=SIDE)]   # the displayed (rotated) size
    stops(*write(tmp_path, images, [ann(1, 1, 1, [1, 1, 5, 5])]),
          r"image id 1 \(001\.jpg\): 32x20 in the file, 20x32 in the json \(EXIF rotation")


def test_raw_json_ground_truth_would_score_below_one(tmp_path):
    """What evaluation did before it used the repaired ground truth: two dropped boxes still
    counted as objects to find -> a perfect detector below 1."""
    from pycocotools.coco import COCO

    images = good_images()
    annotations = good_annotations() + [ann(4, 1, 1, [40, 40, 5, 5]), ann(5, 2, 2, [30, 3, 2, 0])]
    images_dir, ann_file = write(tmp_path, images, annotations)
    dataset = CocoDetection(images_dir, ann_file)
    detections = perfect_detections(dataset)
    assert coco_evaluate(dataset.coco, detections).stats[0] == pytest.approx(1.0)
    raw = COCO(ann_file)
    assert coco_evaluate(raw, detections).stats[0] < 0.9


def test_malformed_ground_truth_does_not_crash_evaluation(tmp_path):
    images = good_images()
    annotations = good_annotations()
    annotations[0]["bbox"] = ["2", "3", "10", "12"]
    del annotations[1]["area"]
    del annotations[2]["id"]
    dataset = CocoDetection(*write(tmp_path, images, annotations))
    detections = perfect_detections(dataset)
    assert len(detections) == 3
    assert coco_evaluate(dataset.coco, detections).stats[0] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- training start

def test_train_stops_before_the_first_step_and_logs_repairs(tmp_path):
    from public.engine.train.loop import train

    images, annotations = broken_but_repairable()
    train_dir, train_json = write(tmp_path / "train", images, annotations)
    val_dir, val_json = write(tmp_path / "val", good_images(), good_annotations())
    (Path(val_dir) / "002.jpg").write_bytes(b"")
    cfg = load_config("fcos/config_demo.py", [f"train_images={train_dir}", f"train_annotations={train_json}",
                                              f"val_images={val_dir}", f"val_annotations={val_json}",
                                              f"work_dir={tmp_path / 'run'}", "num_workers=0", "flops=False"])
    with pytest.raises(DatasetError, match=r"(?s)val/instances\.json.*image files of 0 bytes \(1\): image id 2"):
        train(cfg)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "train/instances.json: repaired" in log and "annotation id 4 (image id 2)" in log
    assert not (tmp_path / "run" / "latest.pth").exists()


# ---------------------------------------------------------------------------- the check command

def test_check_command_exit_codes_and_report(tmp_path):
    train_dir, train_json = write(tmp_path / "train", good_images(), good_annotations())
    val_dir, val_json = write(tmp_path / "val", good_images(), good_annotations())
    overrides = [f"train_images={train_dir}", f"train_annotations={train_json}", f"val_images={val_dir}",
                 f"val_annotations={val_json}", "min_size=(64,)", "test_min_size=64", "max_size=100"]
    cfg = load_config("fcos/config.py", overrides)
    out = io.StringIO()
    assert check(cfg, out=out) == 0
    text = out.getvalue()
    assert "3 images, 3 boxes (0 crowd regions besides), 0 negatives (no box), at most 1 boxes in one image" in text
    assert "boxes per class: cat 2, dog 1" in text
    # 32 px images resized to 64 px: boxes 20x24, 40x16 and 32x32 px; max side / 2 = 12, 20, 16 -> all P3.
    assert re.search(r"P3 +8 +\(0, 64\] +3 +3\n +P4 +16 +\(64, 128\] +0 +0\n", text)
    assert "no fatal problem" in text

    (Path(val_dir) / "001.jpg").write_bytes(b"")
    out = io.StringIO()
    assert check(cfg, out=out) == 1
    assert "FATAL    image files of 0 bytes (1): image id 1 (001.jpg)" in out.getvalue()
    assert check_main(["--config", "fcos/config.py", "not_a_key=1"]) == 2


def test_check_command_plot(tmp_path):
    train_dir, train_json = write(tmp_path / "train", good_images(), good_annotations())
    out_png = tmp_path / "check.png"
    code = check_main(["--config", "atss/config.py", f"train_images={train_dir}", f"train_annotations={train_json}",
                       f"val_images={train_dir}", f"val_annotations={train_json}", "--plot", str(out_png)])
    assert code == 0
    figure = cv2.imread(str(out_png))
    assert figure is not None and figure.shape[0] > 300 and figure.shape[1] > 600


def test_level_rules_by_hand():
    fcos = load_config("fcos/config.py").level_rule()       # scale_boundaries (64, 128, 256, 512)
    wh = np.array([[100, 20], [130, 10], [300, 300], [1100, 50], [6, 30]], dtype=np.float64)
    level, small, large = fcos.assign(wh)
    # max side / 2 = 50 (P3), 65 (P4), 150 (P5), 550 (P7), 15 (P3); min side below the stride of that level:
    # 10 < 16 at P4, 50 < 128 at P7, 6 < 8 at P3.
    assert level.tolist() == [0, 1, 2, 4, 0]
    assert small.tolist() == [False, True, False, True, True] and not large.any()

    retina = load_config("retinanet/config.py").level_rule()  # anchors 32..512 x 2^(k/3), ratios 0.5, 1, 2
    level, small, large = retina.assign(np.array([[32, 32], [64, 64], [512, 512], [2000, 2000], [4, 4], [20, 20]],
                                                 float))
    assert level.tolist() == [0, 1, 4, 4, 0, 0]
    # 2000 px against the largest anchor 512 * 2^(2/3) = 812.7 px: IoU (812.7 / 2000)^2 = 0.165 < 0.5;
    # 4 px is under P3's stride; 20 px against the smallest anchor 32 px: IoU 400 / 1024 = 0.39 < 0.5.
    assert large.tolist() == [False, False, False, True, False, False]
    assert small.tolist() == [False, False, False, False, True, True]

    atss = load_config("atss/config.py").level_rule()        # one square anchor 64..1024 px
    level, small, large = atss.assign(np.array([[64, 64], [90, 90], [200, 100], [2100, 2100]], float))
    # 90 px: IoU 64^2/90^2 = 0.51 with 64 px against 90^2/128^2 = 0.49 with 128 px -> P3
    assert level.tolist() == [0, 0, 1, 4] and large.tolist() == [False, False, False, True]
    ssc = load_config("atss/config.py", ["positive_type=SSC"]).level_rule()
    assert ssc.kind == "max_side" and math.isinf(ssc.bounds[-1])


def test_level_spread_hint():
    """Boxes crowded on one level get the smallest power-of-2 change of the level key that
    spreads them; boxes already spread, or no change that helps, get no suggestion."""
    rng = np.random.default_rng(0)
    small = rng.uniform(20, 100, (200, 2))   # max side / 2 <= 50: all on P3 under (64, 128, 256, 512)
    hint = level_spread_hint(load_config("fcos/config.py"), small)
    # halved: P3 while max side / 2 <= 32 (max side <= 64), P4 above; no box narrower than 16 px on P4
    on_p4 = (small.max(axis=1) / 2 > 32).mean()
    assert hint.startswith("100% of the boxes go to P3 under scale_boundaries=(64, 128, 256, 512)")
    assert f"scale_boundaries=(32, 64, 128, 256) spreads them (P3 {1 - on_p4:.0%}, P4 {on_p4:.0%})" in hint
    spread = np.concatenate([small, rng.uniform(150, 250, (100, 2)), rng.uniform(300, 500, (100, 2))])
    assert level_spread_hint(load_config("fcos/config.py"), spread) is None
    # ATSS: octave_base_scale 8 -> 4 (anchors 32, 64, ...) moves the boxes over 45 px to P4
    hint = level_spread_hint(load_config("atss/config.py"), small)
    assert "under octave_base_scale=8.0" in hint and "octave_base_scale=4.0 spreads them" in hint
    # boxes of 6-9 px stay on P3 under every factor tried: the crowding is said, no value suggested
    tiny = rng.uniform(6, 9, (50, 2))
    assert level_spread_hint(load_config("fcos/config.py"), tiny) == (
        "100% of the boxes go to P3 under scale_boundaries=(64, 128, 256, 512): the other levels learn from few")


def test_level_warnings_at_train_start():
    """train.py's start: boxes that no anchor matches well, and crowding on one level."""
    rng = np.random.default_rng(0)
    cfg = load_config("retinanet/config.py")
    # 40-100 px: IoU >= 0.5 with an anchor of 32-101 px (3 ratios); 8-14 px: under 0.2 with the smallest
    well, tiny = rng.uniform(40, 100, (200, 2)), rng.uniform(8, 14, (100, 2))
    assert level_warnings(cfg, well) == []
    lines = level_warnings(cfg, np.concatenate([well, tiny]))
    assert len(lines) == 1 and lines[0].startswith("33% of the boxes (100 of 300) are too small for their level")
    assert lines[0].endswith("or lower anchor_octave_base")
    fcos = load_config("fcos/config.py")
    hint = level_spread_hint(fcos, well)                  # max side / 2 <= 50: all on P3
    assert hint.startswith("100% of the boxes go to P3") and level_warnings(fcos, well) == [hint]


def test_check_images_modes(tmp_path):
    images_dir, ann_file = write(tmp_path, good_images(), good_annotations())
    path = Path(images_dir) / "002.jpg"
    path.write_bytes(path.read_bytes()[:-100])
    assert [g.what for g in validate_coco(images_dir, ann_file, "decode").fatal] == ["truncated image files"]
    assert validate_coco(images_dir, ann_file, "off").fatal == []
    with pytest.raises(ValueError, match="check_images must be one of"):
        validate_coco(images_dir, ann_file, "full")


def test_ids_written_as_numeric_strings_are_converted(tmp_path):
    """Image, category and annotation ids given as "3" are the ints they spell (as numeric-string
    boxes are numbers), with one repair line naming each entry: the image keeps its boxes, and a
    perfect detector scores 1.000 (dropped boxes would make the image a negative)."""
    images = good_images(3)
    images[2]["id"] = "3"
    annotations = good_annotations()
    for a in annotations:
        if a["image_id"] == 3:
            a["image_id"], a["id"], a["category_id"] = "3", str(a["id"]), str(a["category_id"])
    categories = [{"id": "1", "name": "cat"}, {"id": 2, "name": "dog"}]
    with CapturedLog() as log:
        dataset = CocoDetection(*write(tmp_path, images, annotations, categories))
    assert dataset.validation.image_ids == [1, 2, 3] and dataset.category_ids == [1, 2]
    groups = dataset.validation.repaired
    assert [g.what for g in groups] == ["ids written as strings, converted to integers"]
    converted = [a for a in annotations if a["image_id"] == "3"]
    assert len(groups[0].items) == 2 + 3 * len(converted)   # image #2 and category #0, 3 ids per annotation
    assert "image #2: id '3'" in groups[0].items and len(log.warnings) == 1
    sample = dataset[dataset.validation.image_ids.index(3)]
    assert len(sample["boxes"]) == len(converted) > 0
    assert coco_evaluate(dataset.coco, perfect_detections(dataset)).stats[0] == pytest.approx(1.0)


def test_an_id_that_is_no_number_is_named_with_its_quotes(tmp_path):
    annotations = good_annotations() + [ann(99, "three", 1, [2, 2, 8, 8])]
    dataset = CocoDetection(*write(tmp_path, good_images(3), annotations))
    group = [g for g in dataset.validation.repaired if "not in 'images'" in g.what][0]
    assert group.items == ["annotation id 99 (image id 'three')"]
