"""The checkpoint carries its run: test.py / train.py --evaluate / export.py take the config,
val data and eval sizes from the checkpoint (or the exported .onnx) without --config, from any
folder; reports go beside the checkpoint (eval/, eval_2/ ...).

The run is the session's real ``python train.py`` process (``fcos_run`` in conftest.py, shared
with test_cli.py). One ``python test.py`` runs as a process of its own, from another folder and
without PYTHONPATH (what "from any folder" is about); the other commands call the scripts'
``main`` in this process, in another folder (the same code, without ~4 s of imports each)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import export as export_cli
import train as train_cli
from config import REPO_ROOT, find_config_file, load_config
from public.engine.runs.stored import RUN_EVAL_KEYS, load_run_config
from helpers import load_test_py

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}


def script(name, *args, cwd, timeout=300):
    return subprocess.run([sys.executable, str(REPO / name), *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def printed_map(out: str) -> float:
    """The mAP an evaluation prints to 4 decimals ("mAP 0.0123  mAR ...", as the run's log)."""
    return float(re.findall(r"\bmAP (-?[0-9.]+)  mAR", out)[-1])


def in_process(main, *args, cwd: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    """``python SCRIPT ARGS`` run in folder ``cwd`` as the script's ``main`` in this process:
    (exit status, stdout, stderr)."""
    before = os.getcwd()
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    finally:
        os.chdir(before)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def run_dir(fcos_run):
    """The work_dir of the session's run on its own tiny dataset (8 train / 6 val images) at 96 px,
    2 epochs; score_thresh=0 and a high lr so that its mAP is above 0."""
    return fcos_run[0]


def best_epoch_map(run: Path) -> float:
    epoch = torch.load(run / "best.pth", weights_only=True)["epoch"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("epoch") == epoch and "mAP" in r][-1]["mAP"]


def test_config_path_is_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config_file("fcos/config.py") == REPO_ROOT / "fcos" / "config.py"
    assert type(load_config("fcos/config_demo.py")).__module__ == "fcos.config_demo"
    with pytest.raises(FileNotFoundError, match="config file not found"):
        find_config_file("fcos/nope.py")


@pytest.mark.slow
def test_test_py_from_another_folder_reproduces_the_runs_map(run_dir, tmp_path, monkeypatch, capsys):
    expected = best_epoch_map(run_dir)
    proc = script("test.py", "--checkpoint", run_dir / "best.pth", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("run of "))
    assert "fcos" in line and "instances_val.json" in line and "test_min_size=96 max_size=96" in line
    assert expected > 0 and f"{printed_map(proc.stdout):.4f}" == f"{expected:.4f}"
    detections = json.loads((run_dir / "eval" / "detections.json").read_text())
    # The report's own numbers, to 4 decimals: pycocotools on the written detections.
    from public.engine.evaluate.evaluator import coco_evaluate
    from pycocotools.coco import COCO
    cfg = load_run_config(run_dir / "best.pth", announce=None)
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        stats = coco_evaluate(COCO(cfg.val_annotations), detections).stats
    assert round(float(stats[0]), 4) == round(expected, 4)

    # train.py --evaluate without --config: the same number, and no files.
    code, out, err = in_process(train_cli.main, "--evaluate", run_dir / "best.pth", cwd=tmp_path,
                                monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, out[-3000:] + err[-3000:]
    assert f"{printed_map(out):.4f}" == f"{expected:.4f}"
    assert not (run_dir / "eval_2").exists() and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_override_is_told_and_applied_and_reports_are_numbered(run_dir, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(run_dir / "best.pth", copy / "best.pth")
    test_py = load_test_py().main
    code, out, err = in_process(test_py, "--checkpoint", copy / "best.pth", "score_thresh=0.3", cwd=tmp_path,
                                monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, out[-3000:] + err[-3000:]
    line = next(l for l in out.splitlines() if l.startswith("run of "))
    assert "overridden: score_thresh=0.3" in line
    detections = json.loads((copy / "eval" / "detections.json").read_text())
    assert all(d["score"] >= 0.3 for d in detections)
    code, out, err = in_process(test_py, "--checkpoint", copy / "best.pth", cwd=tmp_path, monkeypatch=monkeypatch,
                                capsys=capsys)
    assert code == 0, out[-3000:] + err[-3000:]
    assert (copy / "eval_2" / "detections.json").is_file() and "eval_2" in out
    assert json.loads((copy / "eval" / "detections.json").read_text()) == detections   # not overwritten
    assert len(json.loads((copy / "eval_2" / "detections.json").read_text())) > len(detections)  # score_thresh=0


@pytest.mark.slow
def test_exported_onnx_carries_the_run(run_dir, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    onnx_path = run_dir / "best.onnx"
    code, out, err = in_process(export_cli.main, "--checkpoint", run_dir / "best.pth", "--out", onnx_path,
                                cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, out[-3000:] + err[-3000:]
    from public.engine.runs.stored import read_metadata
    meta = read_metadata(onnx_path)
    assert meta["model_type"] == "fcos.config" and meta["config"]["test_min_size"] == 96
    report = tmp_path / "onnx_eval"
    code, out, err = in_process(load_test_py().main, "--checkpoint", onnx_path, "--out", report, cwd=tmp_path,
                                monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, out[-3000:] + err[-3000:]
    assert "test_min_size=96 max_size=96" in out
    assert abs(printed_map(out) - best_epoch_map(run_dir)) <= 1e-3
    assert (report / "detections.json").is_file()


def test_stored_config_gives_the_class_and_values_and_explicit_config_keeps_the_runs_data(tmp_path):
    from public.data.demo import DEMO_CATEGORY_IDS, DEMO_CLASSES
    from public.engine.runs.checkpoint import save_checkpoint
    cfg = load_config("atss/config_demo.py", ["test_min_size=100", "max_size=150", f"val_images={tmp_path}",
                                              f"val_annotations={tmp_path / 'val.json'}", "nms_thresh=0.5"])
    stored = {**cfg.to_dict(), "a_key_of_the_future": 1}
    path = tmp_path / "best.pth"
    save_checkpoint({"format": "densedet", "model_type": "atss.config", "config": stored, "model": {},
                     "classes": {"names": list(DEMO_CLASSES), "category_ids": list(DEMO_CATEGORY_IDS)}}, path)
    lines = []
    run = load_run_config(path, None, ["score_thresh=0.2"], announce=lines.append)
    assert type(run).__module__ == "atss.config" and run.nms_thresh == 0.5 and run.score_thresh == 0.2
    assert run.test_min_size == 100 and run.work_dir == str(tmp_path)
    assert "overridden: score_thresh=0.2" in lines[0] and "a_key_of_the_future" in lines[0]
    explicit = load_run_config(path, "atss/config.py", ["max_size=170"], announce=lines.append)
    assert type(explicit).__module__ == "atss.config" and explicit.nms_thresh == 0.6   # the file's
    assert [getattr(explicit, k) for k in RUN_EVAL_KEYS] == \
           [str(tmp_path), str(tmp_path / "val.json"), 100, 170, cfg.resize_mode, cfg.test_resize, cfg.size_divisible]


def test_missing_val_data_is_one_line_naming_the_path_and_keys(tmp_path, monkeypatch, capsys):
    from public.data.demo import DEMO_CATEGORY_IDS, DEMO_CLASSES
    from public.engine.runs.checkpoint import save_checkpoint
    cfg = load_config("fcos/config_demo.py", [f"val_images={tmp_path / 'gone'}",
                                              f"val_annotations={tmp_path / 'gone' / 'val.json'}"])
    model = cfg.resolve().build_model(len(DEMO_CLASSES))
    path = tmp_path / "best.pth"
    save_checkpoint({"format": "densedet", "model_type": "fcos.config", "config": cfg.to_dict(),
                     "model": model.state_dict(), "epoch": 1, "best_map": 0.0,
                     "classes": {"names": list(DEMO_CLASSES), "category_ids": list(DEMO_CATEGORY_IDS)}}, path)
    code, out, err = in_process(load_test_py().main, "--checkpoint", path, cwd=tmp_path, monkeypatch=monkeypatch,
                                capsys=capsys)
    assert code == 1, out[-3000:] + err[-3000:]                 # python test.py's exit status
    errors = [l for l in err.splitlines() if l.strip()]
    assert len(errors) == 1 and str(tmp_path / "gone" / "val.json") in errors[0]
    assert "val_images=" in errors[0] and "val_annotations=" in errors[0]
    assert not (tmp_path / "eval").exists()


def test_an_older_onnx_without_config_needs_config(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    entry = model.metadata_props.add()
    entry.key, entry.value = "densedet", json.dumps({"format": "densedet-onnx", "classes": {}})
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    with pytest.raises(ValueError, match="holds no config.*pass --config"):
        load_run_config(old, None, [], announce=None)
    assert type(load_run_config(old, "fcos/config_demo.py", [], announce=None)).__module__ == "fcos.config_demo"
