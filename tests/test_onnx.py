"""ONNX export: ONNX Runtime gives PyTorch's detections (boxes, scores, labels) for FCOS, ATSS and
RetinaNet at two input sizes, batch 1 and 2; raw head outputs; test.py runs the exported file
(evaluation stats equal to PyTorch's, detection on images and video); clear errors."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import export  # export.py at the repository root
from config import load_config
from helpers import demo_subset
from public.data.demo import DEMO_CATEGORY_IDS, DEMO_CLASSES
from public.engine.runs.checkpoint import save_checkpoint
from public.engine.export.exporter import compare_with_pytorch, export_onnx, match_detections, require_onnx
from public.engine.export.runtime import OnnxModel
from public.engine.evaluate.tester import detect_images, detect_video, evaluate_report

# Measured on these models: boxes within 1.2e-4 px (FCOS, ATSS) and 9e-4 px (RetinaNet: its
# largest anchors are ~800 px and the box sizes are exp() of the regression, so float32 rounding
# of the head outputs, ~1e-6, moves their sides by up to ~1e-3 px); scores within 1.5e-6.
BOX_TOL, SCORE_TOL = 2e-3, 1e-4
# topk 100 per level: at these sizes P3 has more candidates than that (TopK of 100) and P6/P7
# fewer (TopK of the level's size), so both sides of min(k, level size) run in the graph.
# detections_per_img 1000 (> 5 levels x 100): every box NMS keeps is compared, none cut.
SMALL = ["topk_candidates=100", "detections_per_img=1000", "num_workers=0"]


def perturbed_model(name: str, num_classes: int, seed: int = 0):
    """A demo-sized model (ResNet-18, 64-channel FPN, 2-conv GN towers) with random weights
    spread so that it scores many boxes of every class above 0.05 and NMS has work to do."""
    cfg = load_config(f"{name}/config_demo.py", SMALL)
    torch.manual_seed(seed)
    model = cfg.resolve().build_model(num_classes).eval()
    with torch.no_grad():
        model.head.cls_logits.weight.normal_(0, 0.05)
        model.head.cls_logits.bias.fill_(-1.0)
        model.head.bbox_pred.weight.normal_(0, 0.05)
        if name == "fcos":        # distances relu(x) * stride: boxes about 6 strides wide, so that neighbours overlap
            model.head.bbox_pred.bias.fill_(3.0)
    return cfg, model


def batch(height: int, width: int, size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (size, 3, height, width), generator=generator).float()
    image_sizes = torch.tensor([[height, width], [height - 32, width - 16]][:size])
    return images, image_sizes


@pytest.mark.parametrize("name", ["fcos", "atss", "retinanet"])
def test_onnx_detections_equal_pytorch(name, tmp_path):
    cfg, model = perturbed_model(name, num_classes=3)
    decoder = cfg.build_decoder()
    path = tmp_path / f"{name}.onnx"
    assert export_onnx(model, decoder, path, {"test": True}) == ["boxes", "scores", "labels", "num_detections"]
    for height, width in ((128, 160), (96, 224)):
        for size in (1, 2):
            report = compare_with_pytorch(model, decoder, path, *batch(height, width, size, seed=height + size))
            where = f"{name} {size}x{height}x{width}: {report}"
            # Many boxes compared, and NMS removed many candidates (of the same class: boxes of
            # other classes at the same place stay), so that its decisions are compared too.
            assert 80 * size <= report["detections"] <= 0.8 * report["candidates"], where
            assert report["count_mismatch"] == 0 and report["unmatched"] == 0, where
            assert report["box"] <= BOX_TOL and report["score"] <= SCORE_TOL, where


def test_onnx_nothing_detected_gives_empty_padded_outputs(tmp_path):
    cfg, model = perturbed_model("fcos", num_classes=3)
    cfg.set("score_thresh", 0.99)                 # above every score of this model
    path = tmp_path / "empty.onnx"
    export_onnx(model, cfg.build_decoder(), path, {})
    images, image_sizes = batch(96, 128, 2, seed=0)
    boxes, scores, labels, counts = OnnxModel(path).session.run(
        None, {"images": images.numpy(), "image_sizes": image_sizes.numpy()})
    slots = cfg.detections_per_img                # the padded output size
    assert [a.shape for a in (boxes, scores, labels, counts)] == [(2, slots, 4), (2, slots), (2, slots), (2,)]
    assert counts.tolist() == [0, 0] and (labels == -1).all() and (scores == 0).all() and (boxes == 0).all()
    assert [len(d["scores"]) for d in OnnxModel(path).detect(images, image_sizes)] == [0, 0]


def test_onnx_raw_head_outputs_equal_pytorch(tmp_path):
    cfg, model = perturbed_model("atss", num_classes=3)
    path = tmp_path / "raw.onnx"
    names = export_onnx(model, cfg.build_decoder(), path, {"raw": True}, raw=True)
    assert names == ["cls_logits", "box_reg", "centerness", "anchors"]
    for height, width in ((128, 160), (96, 224)):
        report = compare_with_pytorch(model, None, path, *batch(height, width, 2, seed=1), raw=True)
        assert max(report.values()) <= 1e-4, report
        assert report["anchors"] == 0.0, report
    with pytest.raises(ValueError, match="exported with --raw"):
        OnnxModel(path)


# ---- test.py on an exported file -----------------------------------------------------------------
def demo_checkpoint(path: Path) -> Path:
    cfg, model = perturbed_model("fcos", num_classes=len(DEMO_CLASSES))
    save_checkpoint({"format": "densedet", "model": model.state_dict(), "config": cfg.to_dict(), "epoch": 0,
                     "best_map": 0.0, "classes": {"names": list(DEMO_CLASSES), "category_ids": list(DEMO_CATEGORY_IDS)}},
                    path)
    return path


def record_arrays(record: dict):
    """A detections.json entry -> (boxes [D, 4], scores [D], class names [D]) arrays."""
    return (np.array(record["boxes"]).reshape(-1, 4), np.array(record["scores"]), np.array(record["classes"]))


@pytest.mark.slow
def test_test_py_runs_the_onnx_file_with_pytorch_results(tmp_path):
    checkpoint = demo_checkpoint(tmp_path / "model.pth")
    onnx_path = tmp_path / "model.onnx"
    common = ["num_workers=0", "test_min_size=128", "max_size=192", "topk_candidates=100", "batch_size=2"]
    assert export.main(["--config", "fcos/config_demo.py", "--checkpoint", str(checkpoint), "--out", str(onnx_path),
                        "--no-check"] + common) == 0
    meta = OnnxModel(onnx_path).metadata
    assert meta["classes"]["names"] == list(DEMO_CLASSES) and meta["decoder"]["topk_candidates"] == 100

    # Ground truth = the PyTorch model's own best detections on 6 val images, so that it scores
    # far above zero and a difference between the two runtimes shows in every stat.
    images_dir, annotations = demo_subset(tmp_path, 6, "val")
    cfg = load_config("fcos/config_demo.py", common + [f"val_images={images_dir}", f"val_annotations={annotations}",
                                                       f"work_dir={tmp_path / 'pt'}"])
    first = evaluate_report(cfg, str(checkpoint))
    data = json.loads(Path(annotations).read_text())
    best = sorted((r for r in first.results if min(r["bbox"][2:]) >= 2), key=lambda r: -r["score"])
    chosen = [r for image in data["images"] for r in [x for x in best if x["image_id"] == image["id"]][:4]]
    data["annotations"] = [{"id": i + 1, "image_id": r["image_id"], "category_id": r["category_id"], "bbox": r["bbox"],
                            "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0} for i, r in enumerate(chosen)]
    pseudo = tmp_path / "pseudo_gt.json"
    pseudo.write_text(json.dumps(data))
    cfg.set("val_annotations", str(pseudo))
    torch_stats = evaluate_report(cfg, str(checkpoint)).stats
    cfg.set("work_dir", str(tmp_path / "onnx"))
    onnx_stats = evaluate_report(cfg, str(onnx_path)).stats
    assert torch_stats[0] > 0.2, torch_stats
    np.testing.assert_allclose(onnx_stats, torch_stats, atol=1e-3, rtol=0)
    assert (tmp_path / "onnx" / "detections.json").is_file()

    # Detection on images and on a video: the same boxes, scores and classes.
    folder = tmp_path / "images"
    folder.mkdir()
    for image in data["images"][:3]:
        (folder / image["file_name"]).write_bytes((Path(images_dir) / image["file_name"]).read_bytes())
    by_runtime = {}
    for path in (checkpoint, onnx_path):
        by_runtime[path.suffix] = detect_images(cfg, str(path), str(folder), str(tmp_path / f"det{path.suffix}"), 0.3)
    assert sum(len(r["boxes"]) for r in by_runtime[".pth"]) > 0
    for ours, ref in zip(by_runtime[".onnx"], by_runtime[".pth"]):
        assert ours["file_name"] == ref["file_name"] and len(ours["boxes"]) == len(ref["boxes"])
        box, score, unmatched = match_detections(*record_arrays(ref), *record_arrays(ours))
        assert unmatched == 0 and box <= 0.011 and score <= 2e-4       # the json rounds to 0.01 px and 1e-4
    video = tmp_path / "clip.mp4"
    frames = [cv2.imread(str(p)) for p in sorted(folder.iterdir())]
    frames = [cv2.resize(f, (160, 128)) for f in frames]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (160, 128))
    for frame in frames:
        writer.write(frame)
    writer.release()
    records = detect_video(cfg, str(onnx_path), str(video), str(tmp_path / "video"), 0.3)
    reference = detect_video(cfg, str(checkpoint), str(video), str(tmp_path / "video_pt"), 0.3)
    assert len(records) == len(reference) == 3
    for ours, ref in zip(records, reference):
        assert match_detections(*record_arrays(ref), *record_arrays(ours))[2] == 0
    assert (tmp_path / "video" / "clip.mp4").is_file()


def test_clear_errors_without_onnxruntime_and_for_wrong_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)          # as if it were not installed
    with pytest.raises(ImportError, match="pip install -r requirements-dev.txt"):
        require_onnx()
    assert export.main(["--checkpoint", str(tmp_path / "x.pth"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "need onnxruntime" in capsys.readouterr().err
    monkeypatch.undo()
    not_ours = tmp_path / "other.onnx"
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(not_ours))
    with pytest.raises(ValueError, match="was not written by export.py"):
        OnnxModel(not_ours)
    assert export.main(["--checkpoint", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "m.onnx")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


def test_match_detections_pairs_near_ties_not_positions():
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 70], [5, 5, 9, 9]], np.float32)
    scores, labels = np.array([0.9, 0.5, 0.5]), np.array([0, 1, 1])
    swapped = [1, 0, 2][::-1]                                       # equal scores in another order
    assert match_detections(boxes, scores, labels, boxes[swapped], scores[swapped], labels[swapped]) == (0, 0, 0)
    moved = boxes.copy()
    moved[1, 3] += 0.5
    assert match_detections(boxes, scores, labels, moved, scores, labels) == (0.5, 0, 0)
    relabelled = labels.copy()
    relabelled[0] = 1                                               # box 0 has no class-0 partner
    assert match_detections(boxes, scores, labels, boxes, scores, relabelled)[2] == 1
    assert match_detections(boxes, scores, labels, boxes[:0], scores[:0], labels[:0])[2] == 3
