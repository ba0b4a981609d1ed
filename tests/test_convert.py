"""Converters VOC / YOLO / LabelMe -> COCO: hand-checked coordinates, round trips, empty images,
malformed files, and the loader reading the result."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from public.data.coco import CocoDetection
from tools.convert import (ConversionError, labelme_to_coco, main, read_class_names, voc_to_coco,
                                 yolo_to_coco)


def write_image(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 128, np.uint8))
    return path


def voc_xml(filename: str | None, size: tuple[int, int] | None, objects: list[tuple]) -> str:
    """objects: (name, xmin, ymin, xmax, ymax, difficult)."""
    parts = ["<annotation>"]
    if filename:
        parts.append(f"<filename>{filename}</filename>")
    if size:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, x1, y1, x2, y2, difficult in objects:
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
                     f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    return "".join(parts + ["</annotation>"])


def boxes_of(data: dict, file_name: str) -> list[tuple[str, list[float], int]]:
    image_id = next(im["id"] for im in data["images"] if im["file_name"] == file_name)
    names = {c["id"]: c["name"] for c in data["categories"]}
    return [(names[a["category_id"]], a["bbox"], a["iscrowd"]) for a in data["annotations"]
            if a["image_id"] == image_id]


# ---- VOC --------------------------------------------------------------------------------------
@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "VOC"
    write_image(root / "JPEGImages" / "a.jpg", 100, 50)
    write_image(root / "JPEGImages" / "b.png", 40, 90)        # portrait, no <size> in its xml
    write_image(root / "JPEGImages" / "c.jpg", 30, 30)        # no objects
    ann = root / "Annotations"
    ann.mkdir()
    (ann / "a.xml").write_text(voc_xml("a.jpg", (100, 50), [("dog", 1, 1, 10, 20, 1), ("cat", 50, 5, 100, 50, 0)]))
    (ann / "b.xml").write_text(voc_xml("b.png", None, [("cat", 3, 4, 3, 4, 0)]))   # a one-pixel box
    (ann / "c.xml").write_text(voc_xml("c.jpg", (30, 30), []))
    return root


def test_voc_pixel_convention_difficult_and_size(voc):
    data, images_dir = voc_to_coco(voc / "Annotations")
    assert images_dir == voc / "JPEGImages"
    assert [c["name"] for c in data["categories"]] == ["cat", "dog"]              # sorted
    # 1-based inclusive corners: xmin=1..xmax=10 is the span [0, 10]: x = xmin - 1, w = xmax - xmin + 1.
    assert boxes_of(data, "a.jpg") == [("dog", [0.0, 0.0, 10.0, 20.0], 1), ("cat", [49.0, 4.0, 51.0, 46.0], 0)]
    assert boxes_of(data, "b.png") == [("cat", [2.0, 3.0, 1.0, 1.0], 0)]
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in data["images"]}
    assert sizes == {"a.jpg": (100, 50), "b.png": (40, 90), "c.jpg": (30, 30)}   # b from its header, not swapped
    assert boxes_of(data, "c.jpg") == []
    dropped, _ = voc_to_coco(voc / "Annotations", difficult="drop")
    assert boxes_of(dropped, "a.jpg") == [("cat", [49.0, 4.0, 51.0, 46.0], 0)]
    kept, _ = voc_to_coco(voc / "Annotations", difficult="keep")
    assert boxes_of(kept, "a.jpg")[0] == ("dog", [0.0, 0.0, 10.0, 20.0], 0)


def test_voc_given_classes_order_ids_and_unknown(voc, tmp_path):
    data, _ = voc_to_coco(voc / "Annotations", class_names=["dog", "cat", "bird"])
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(1, "dog"), (2, "cat"), (3, "bird")]
    ids = tmp_path / "train.txt"
    ids.write_text("c\na\n")
    subset, _ = voc_to_coco(voc / "Annotations", ids_file=ids)
    assert [im["file_name"] for im in subset["images"]] == ["c.jpg", "a.jpg"]
    with pytest.raises(ConversionError, match=r"a\.xml: object 2: class 'cat' is not in the given class list"):
        voc_to_coco(voc / "Annotations", class_names=["dog"])


def test_voc_round_trip_random_boxes(tmp_path):
    rng = np.random.default_rng(0)
    ann = tmp_path / "Annotations"
    ann.mkdir()
    expected = []
    for i in range(5):
        width, height = int(rng.integers(50, 300)), int(rng.integers(50, 300))
        objects = []
        for _ in range(int(rng.integers(0, 4))):
            x, y = int(rng.integers(0, width - 10)), int(rng.integers(0, height - 10))
            w, h = int(rng.integers(1, width - x)), int(rng.integers(1, height - y))
            expected.append((f"{i}.jpg", [float(x), float(y), float(w), float(h)]))
            objects.append(("thing", x + 1, y + 1, x + w, y + h, 0))     # continuous box -> VOC corners
        (ann / f"{i}.xml").write_text(voc_xml(f"{i}.jpg", (width, height), objects))
    data, _ = voc_to_coco(ann)
    files = {im["id"]: im["file_name"] for im in data["images"]}
    assert [(files[a["image_id"]], a["bbox"]) for a in data["annotations"]] == expected


def test_voc_malformed_files_are_named(tmp_path):
    ann = tmp_path / "Annotations"
    ann.mkdir()
    (ann / "broken.xml").write_text("<annotation><object>")
    (ann / "bad.xml").write_text(voc_xml("bad.jpg", (50, 50), [("x", 10, 10, 5, 20, 0)]))
    (ann / "nan.xml").write_text(voc_xml("nan.jpg", (50, 50), [("x", "a", 10, 5, 20, 0)]))
    (ann / "nosize.xml").write_text(voc_xml("missing.jpg", None, [("x", 1, 1, 5, 5, 0)]))
    with pytest.raises(ConversionError) as error:
        voc_to_coco(ann)
    text = str(error.value)
    assert "4 problem(s)" in text and "nothing written" in text
    assert "broken.xml: not valid XML" in text
    assert "bad.xml: object 1 (x): xmax/ymax (5, 20) below xmin/ymin (10, 10)" in text
    assert "nan.xml: object 1 (x): <xmin> is 'a', not a number" in text
    assert "nosize.xml: no usable <size>" in text


# ---- YOLO -------------------------------------------------------------------------------------
@pytest.fixture
def yolo(tmp_path):
    root = tmp_path / "ds"
    write_image(root / "images" / "train" / "wide.jpg", 200, 100)
    write_image(root / "images" / "train" / "tall.png", 64, 128)
    write_image(root / "images" / "train" / "negative.jpg", 32, 32)       # no label file
    write_image(root / "images" / "train" / "empty.jpg", 32, 32)          # empty label file
    labels = root / "labels" / "train"
    labels.mkdir(parents=True)
    (labels / "wide.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.1 0.25 0.2 0.5\n")
    (labels / "tall.txt").write_text("\n1 0.25 0.75 0.5 0.25\n2 0.1 0.2 0.3 0.2 0.2 0.6\n")  # box, then a segment
    (labels / "empty.txt").write_text("")
    (root / "data.yaml").write_text("names:\n  0: person\n  1: car\n  2: dog\n")
    return root


def test_yolo_real_sizes_negatives_and_segments(yolo):
    names = read_class_names(str(yolo / "data.yaml"))
    assert names == ["person", "car", "dog"]
    data, images_dir = yolo_to_coco(yolo / "labels" / "train", None, names)
    assert images_dir == yolo / "images" / "train"
    # wide.jpg is 200 x 100: cx 0.5 * 200 = 100, w 0.2 * 200 = 40 -> x 80; cy 0.5 * 100 = 50, h 40 -> y 30.
    assert boxes_of(data, "wide.jpg") == [("person", [80.0, 30.0, 40.0, 40.0], 0), ("car", [0.0, 0.0, 40.0, 50.0], 0)]
    # tall.png is 64 x 128: x (0.25 - 0.25) * 64 = 0, y (0.75 - 0.125) * 128 = 80, w 32, h 32.
    # Segment (0.1, 0.2), (0.3, 0.2), (0.2, 0.6): x 6.4..19.2, y 25.6..76.8.
    assert boxes_of(data, "tall.png") == [("car", [0.0, 80.0, 32.0, 32.0], 0),
                                          ("dog", [6.4, 25.6, 12.8, 51.2], 0)]
    assert boxes_of(data, "negative.jpg") == [] and boxes_of(data, "empty.jpg") == []
    assert len(data["images"]) == 4


def test_yolo_round_trip_random_boxes(tmp_path):
    rng = np.random.default_rng(1)
    expected = {}
    for i in range(4):
        width, height = int(rng.integers(60, 400)), int(rng.integers(60, 400))
        write_image(tmp_path / "images" / f"{i}.jpg", width, height)
        boxes = rng.uniform(0, 1, (3, 2)) * [width, height]
        sizes = rng.uniform(1, 20, (3, 2))
        xyxy = np.concatenate([boxes, np.minimum(boxes + sizes, [width, height])], 1)
        lines = [f"0 {(x1 + x2) / 2 / width:.8f} {(y1 + y2) / 2 / height:.8f} {(x2 - x1) / width:.8f} "
                 f"{(y2 - y1) / height:.8f}" for x1, y1, x2, y2 in xyxy]
        (tmp_path / "labels").mkdir(exist_ok=True)
        (tmp_path / "labels" / f"{i}.txt").write_text("\n".join(lines))
        expected[f"{i}.jpg"] = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], 1)
    data, _ = yolo_to_coco(tmp_path / "labels", None, ["thing"])
    for name, boxes in expected.items():
        got = np.array([b for _, b, _ in boxes_of(data, name)])
        np.testing.assert_allclose(got, boxes, atol=1e-3)


def test_yolo_malformed_lines_named_with_file_and_line(yolo):
    labels = yolo / "labels" / "train"
    (labels / "wide.txt").write_text("0 0.5 0.5 0.2\n7 0.5 0.5 0.2 0.2\n0 120 40 30 20\nzero 0.5 0.5 0.1 0.1\n"
                                     "0 0.5 0.5 0.2 0.4\n1 0.5 0.5 0 0.1\n")
    (labels / "stray.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(ConversionError) as error:
        yolo_to_coco(labels, None, ["person", "car", "dog"])
    text = str(error.value)
    assert f"{labels / 'wide.txt'}:1: 4 values; a box line is 'class cx cy w h'" in text
    assert f"{labels / 'wide.txt'}:2: class id 7 is not one of 0..2" in text
    assert f"{labels / 'wide.txt'}:3: coordinates ['120', '40', '30', '20'] are not normalised" in text
    assert f"{labels / 'wide.txt'}:4: 'zero 0.5 0.5 0.1 0.1' is not numbers" in text
    assert f"{labels / 'wide.txt'}:6: box of zero width or height" in text
    assert f"{labels / 'stray.txt'}: no image stray.* in" in text
    assert "6 problem(s)" in text                       # line 5 is fine


def test_yolo_classes_needed_and_read_from_classes_txt(yolo, capsys):
    out = yolo / "out.json"
    assert main(["yolo", str(yolo / "labels" / "train"), "--out", str(out)]) == 1
    assert "pass their names with --classes" in capsys.readouterr().err
    (yolo / "labels" / "classes.txt").write_text("person\ncar\ndog\n")
    assert main(["yolo", str(yolo / "labels" / "train"), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [c["name"] for c in data["categories"]] == ["person", "car", "dog"]
    assert "4 images (2 without boxes), 4 boxes" in capsys.readouterr().out


# ---- LabelMe -----------------------------------------------------------------------------------
def labelme_file(path: Path, image: str, shapes: list[dict], size: tuple[int, int] | None, image_data: str = ""):
    data = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image, "imageData": image_data or None}
    if size:
        data["imageWidth"], data["imageHeight"] = size
    path.write_text(json.dumps(data))


def test_labelme_rectangles_polygons_and_no_image_data(tmp_path, capsys):
    write_image(tmp_path / "a.jpg", 120, 80)
    write_image(tmp_path / "b.jpg", 50, 70)
    blob = base64.b64encode(b"not really a jpeg" * 100).decode()
    labelme_file(tmp_path / "a.json", "a.jpg", [
        {"label": "cat", "shape_type": "rectangle", "points": [[30.5, 40], [10, 20.25]]},   # corners either order
        {"label": "dog", "shape_type": "polygon", "points": [[5, 5], [25, 8], [15, 30], [2, 12]]},
        {"label": "cat", "shape_type": "circle", "points": [[60, 40], [63, 44]]},           # radius 5
        {"label": "cat", "shape_type": "point", "points": [[1, 1]]},
    ], (120, 80), blob)
    labelme_file(tmp_path / "b.json", "b.jpg", [], None)                                  # empty, no size
    data, images_dir = labelme_to_coco(tmp_path)
    assert images_dir == tmp_path
    assert boxes_of(data, "a.jpg") == [("cat", [10.0, 20.25, 20.5, 19.75], 0), ("dog", [2.0, 5.0, 23.0, 25.0], 0),
                                       ("cat", [55.0, 35.0, 10.0, 10.0], 0)]
    assert boxes_of(data, "b.jpg") == []
    assert {im["file_name"]: (im["width"], im["height"]) for im in data["images"]} == {"a.jpg": (120, 80),
                                                                                        "b.jpg": (50, 70)}
    out = tmp_path / "out" / "coco.json"
    assert main(["labelme", str(tmp_path), "--out", str(out), "--images", str(tmp_path)]) == 0
    assert blob not in out.read_text() and "imageData" not in out.read_text()
    assert "1 LabelMe shapes without a box area skipped: 1 point" in capsys.readouterr().err


def test_labelme_per_shape_difficult_flag(tmp_path):
    """LabelMe writes a shape's flags as "flags": {"difficult": true}: that box is difficult
    (iscrowd=1 by default, dropped with difficult="drop"); an unflagged one is not."""
    write_image(tmp_path / "a.jpg", 40, 40)
    labelme_file(tmp_path / "a.json", "a.jpg", [
        {"label": "cat", "shape_type": "rectangle", "points": [[1, 1], [11, 11]], "flags": {"difficult": True}},
        {"label": "cat", "shape_type": "rectangle", "points": [[20, 20], [30, 30]], "flags": {"difficult": False}},
        {"label": "cat", "shape_type": "rectangle", "points": [[5, 20], [9, 30]], "flags": {}},
    ], (40, 40))
    data, _ = labelme_to_coco(tmp_path)
    assert [crowd for _, _, crowd in boxes_of(data, "a.jpg")] == [1, 0, 0]
    dropped, _ = labelme_to_coco(tmp_path, difficult="drop")
    assert [box for _, box, _ in boxes_of(dropped, "a.jpg")] == [[20.0, 20.0, 10.0, 10.0], [5.0, 20.0, 4.0, 10.0]]


def test_labelme_malformed_files_named(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    labelme_file(tmp_path / "flat.json", "flat.jpg", [{"label": "x", "shape_type": "rectangle",
                                                       "points": [[3, 3], [3, 9]]}], (10, 10))
    with pytest.raises(ConversionError) as error:
        labelme_to_coco(tmp_path)
    assert "bad.json: not valid json" in str(error.value)
    assert "flat.json: shape 1 (x): its points span zero width or height" in str(error.value)


# ---- the loader reads what the converters write -------------------------------------------------
def test_loader_reads_converted_voc(voc, tmp_path):
    out = tmp_path / "voc.json"
    assert main(["voc", str(voc / "Annotations"), "--out", str(out)]) == 0
    dataset = CocoDetection(str(voc / "JPEGImages"), str(out))
    assert dataset.class_names == ["cat", "dog"] and len(dataset) == 3
    sample = dataset[0]                                              # a.jpg: the difficult dog is left out
    np.testing.assert_array_equal(sample["boxes"], [[49, 4, 100, 50]])
    np.testing.assert_array_equal(sample["labels"], [0])
    assert sample["image"].shape == (50, 100, 3)
    assert dataset[2]["boxes"].shape == (0, 4)                       # c.jpg: a negative
