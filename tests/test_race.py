"""bench/race.py's bookkeeping on tiny fake inputs (no training, no Ultralytics): the YOLO labels
it writes from our json, the scoring of a results file with our evaluator, the points it reads
from a metrics.jsonl, the table (last / best per seed, the mean) and the figure."""
from __future__ import annotations

import json

import pytest

from bench import race


def val_json(tmp_path):
    """Two images, one box each (category id 7, not 1: ids are mapped, not assumed)."""
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50},
                       {"id": 2, "file_name": "b.jpg", "width": 200, "height": 100}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 40, 20], "area": 800, "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [0, 0, 100, 100], "area": 1e4, "iscrowd": 0},
                            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [150, 0, 50, 50], "area": 2500, "iscrowd": 1}],
            "categories": [{"id": 7, "name": "raccoon"}]}
    path = tmp_path / "val.json"
    path.write_text(json.dumps(coco))
    return path


def test_yolo_labels_from_our_json(tmp_path):
    """cx cy w h normalised by each image's size, class index 0 for category id 7, crowd boxes left
    out (as our training leaves them out), images linked, the yaml naming the class."""
    path = val_json(tmp_path)
    (tmp_path / "images").mkdir()
    data = {"train_annotations": str(path), "val_annotations": str(path),
            "train_images": str(tmp_path / "images"), "val_images": str(tmp_path / "images")}
    yaml = race.yolo_dataset(data, tmp_path / "yolo")
    assert (tmp_path / "yolo/labels/val/a.txt").read_text() == "0 0.300000 0.300000 0.400000 0.400000\n"
    assert (tmp_path / "yolo/labels/train/b.txt").read_text() == "0 0.250000 0.500000 0.500000 1.000000\n"
    assert (tmp_path / "yolo/images/val/a.jpg").resolve() == (tmp_path / "images/a.jpg").resolve()
    assert "  0: raccoon\n" in yaml.read_text()


def test_score_results_with_our_evaluator(tmp_path):
    """Both boxes found exactly: mAP 1; the second one shifted to IoU 0.6: AP50 stays 1, mAP drops
    to the mean over IoU 0.5:0.95 of (1 + [IoU >= t]) / 2 = (10 + 3) / 20 (thresholds 0.5, 0.55, 0.6)."""
    path = val_json(tmp_path)
    exact = [{"image_id": 1, "category_id": 7, "bbox": [10, 5, 40, 20], "score": 0.9},
             {"image_id": 2, "category_id": 7, "bbox": [0, 0, 100, 100], "score": 0.8}]
    (tmp_path / "exact.json").write_text(json.dumps(exact))
    assert race.score_results(tmp_path / "exact.json", str(path)) == pytest.approx({"mAP": 1.0, "AP50": 1.0})
    # [0, 0, 100, 100] against [0, 0, 100, 60]: IoU 0.6
    shifted = [exact[0], {**exact[1], "bbox": [0, 0, 100, 60]}]
    (tmp_path / "shifted.json").write_text(json.dumps(shifted))
    scored = race.score_results(tmp_path / "shifted.json", str(path))
    assert scored["AP50"] == pytest.approx(1.0)
    assert scored["mAP"] == pytest.approx(13 / 20, abs=0.01)


def test_ours_points_read_evaluation_rows_only(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in [
        {"epoch": 1, "loss": 2.0, "time": 30.0},
        {"epoch": 2, "mAP": 0.1, "AP50": 0.3, "loss": 1.5, "time": 90.0},
        {"epoch": 3, "loss": 1.2, "time": 120.0},
        {"epoch": 4, "mAP": 0.2, "AP50": 0.5, "loss": 1.0, "time": 180.0}]) + "\n")
    assert race.ours_points(metrics) == [{"epoch": 2, "minutes": 1.5, "mAP": 0.1, "AP50": 0.3},
                                         {"epoch": 4, "minutes": 3.0, "mAP": 0.2, "AP50": 0.5}]
    assert race.ours_points(tmp_path / "missing.jsonl") == []
    # with the log and the process's start: minutes from the start to each evaluation's log line
    # (start-up included), local time as the log writes it
    import time
    start = time.mktime(time.strptime("2026-01-02 10:00:00", "%Y-%m-%d %H:%M:%S"))
    log = tmp_path / "train.log"
    log.write_text("2026-01-02 10:00:30 config fcos.config\n2026-01-02 10:02:00 epoch 2: mAP 0.1000  mAR 0.2\n"
                   "2026-01-02 10:02:01 new best mAP 0.1000 at epoch 2\n")
    points = race.ours_points(metrics, log, start)
    assert [p["minutes"] for p in points] == [2.0, 3.0]      # epoch 4 is not in the log: the row's time


ROWS = [
    # contender a, seed 1: best 0.30 at 2 min, last 0.25 at 4 min (rows out of order on purpose)
    {"contender": "a", "seed": 1, "epoch": 2, "minutes": 4.0, "mAP": 0.25, "AP50": 0.5},
    {"contender": "a", "seed": 1, "epoch": 1, "minutes": 2.0, "mAP": 0.30, "AP50": 0.6},
    {"contender": "a", "seed": 2, "epoch": 1, "minutes": 3.0, "mAP": 0.15, "AP50": 0.4},
    {"contender": "a", "seed": 2, "epoch": 2, "minutes": 20.0, "mAP": 0.9, "AP50": 0.9},   # past a 15 min budget
    {"contender": "b", "seed": 1, "epoch": 0, "minutes": None, "mAP": None, "AP50": None},  # no evaluation
]


def test_summary_last_best_and_mean():
    table = {(r["contender"], r["seed"]): r for r in race.summarise(ROWS, minutes=15)}
    assert table[("a", 1)]["last"] == 0.25 and table[("a", 1)]["best"] == 0.30 and table[("a", 1)]["minutes"] == 4.0
    assert table[("a", 2)]["last"] == 0.15 and table[("a", 2)]["evaluations"] == 1   # the 20-minute point is out
    assert table[("a", "mean")]["last"] == pytest.approx(0.20)
    assert table[("a", "mean")]["best"] == pytest.approx(0.225)
    assert table[("b", 1)]["last"] is None and ("b", "mean") not in table
    # without a budget every evaluation counts
    assert {(r["contender"], r["seed"]): r for r in race.summarise(ROWS)}[("a", 2)]["last"] == 0.9
    text = race.format_table(race.summarise(ROWS, minutes=15))
    assert "| a | 1 | 2 | 4.0 | 0.250 | 0.500 | 0.300 |" in text
    assert "| b | 1 | 0 | - | - | - | - |" in text


def test_figure_is_written(tmp_path):
    race.plot(ROWS, tmp_path / "race.png", minutes=15)
    assert (tmp_path / "race.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cpu_minutes_from_samples():
    """[wall s, CPU s] samples of a run that got half a core for its first minute, then a whole one."""
    samples = [[0.0, 0.0], [60.0, 30.0], [120.0, 90.0]]
    assert race.cpu_minutes(samples, 0.5) == pytest.approx(0.25)
    assert race.cpu_minutes(samples, 1.5) == pytest.approx(1.0)
    assert race.cpu_minutes(samples, 3.0) == pytest.approx(2.5)       # past the last sample: wall time added


def test_whole_image_floor(tmp_path):
    """Image 1's box covers 800 of its 5000 px (IoU 0.16: missed); image 2's box (moved to its
    right half) is half of the image (IoU 0.5: found at IoU 0.5 only). Equal scores keep image order (COCOeval's stable sort):
    the miss ranks first, so precision is 1/2 at recalls 0..0.5 (51 of COCO's 101 points): AP50 =
    0.5 x 51 / 101, and every other IoU threshold scores 0: mAP = AP50 / 10."""
    coco = json.loads(val_json(tmp_path).read_text())
    coco["annotations"][1]["bbox"] = [100, 0, 100, 100]
    (tmp_path / "val.json").write_text(json.dumps(coco))
    floor = race.whole_image_floor(str(tmp_path / "val.json"))
    assert floor == pytest.approx(0.5 * 51 / 101 / 10)
