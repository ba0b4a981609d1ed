"""Command line: a short training run writes its files, --evaluate reproduces the best mAP,
and a run resumed from latest.pth continues at the next epoch.

The run is the session's real ``python train.py`` process (``fcos_run`` in conftest.py, shared
with test_checkpoint_run.py); the commands that follow it call train.py's ``main`` in this
process (the same code, without the ~4 s of imports of a new process)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train as train_cli
from config import load_config
from helpers import with_coco_names

REPO = Path(__file__).resolve().parents[1]


def run(args, capsys) -> str:
    """``python train.py ARGS`` in this process; its stdout."""
    capsys.readouterr()
    assert train_cli.main(args) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def short_run(fcos_run):
    """(work_dir, key=value arguments, stdout) of the session's train.py run (conftest.py)."""
    return fcos_run


@pytest.mark.slow
def test_run_writes_log_metrics_and_checkpoints(short_run):
    work_dir, _, out = short_run
    for name in ("train.log", "metrics.jsonl", "latest.pth", "best.pth", "config.json"):
        assert (work_dir / name).is_file(), name
    records = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    keys = "epoch mAP AP50 AP75 APs APm APl AR1 AR10 mAR ARs ARm ARl".split()
    assert all(k in records[0] for k in keys) and "loss_cls" in records[0]
    assert "mAP" in (work_dir / "train.log").read_text() and "epoch 2: mAP" in out
    latest = torch.load(work_dir / "latest.pth", weights_only=True)
    assert latest["epoch"] == 2 and latest["classes"]["category_ids"] == [3, 7, 12, 40, 90]
    assert json.loads((work_dir / "config.json").read_text())["batch_size"] == 4


@pytest.mark.slow
def test_evaluate_reproduces_best_map(short_run, capsys):
    work_dir, common, _ = short_run
    records = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    best = max(r["mAP"] for r in records)
    assert torch.load(work_dir / "best.pth", weights_only=True)["best_map"] == best
    from public.engine.evaluate.tester import evaluate_checkpoint
    cfg = load_config("fcos/config_demo.py", common)
    result = evaluate_checkpoint(cfg, str(work_dir / "best.pth"))
    assert result.stats[0] == best                       # exactly, not approximately
    assert len(result.per_class) == 5
    out = run(["--config", "fcos/config_demo.py", *common, "--evaluate", str(work_dir / "best.pth")], capsys)
    assert f"mAP {best:.4f}" in out and "per-class AP" in out


@pytest.mark.slow
def test_run_writes_results_and_tensorboard_from_its_metrics(short_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from public.engine.watch.logger import STAT_NAMES
    from public.engine.watch.plots import read_results_csv
    work_dir, _, _ = short_run
    records = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    rows = read_results_csv(work_dir / "results.csv")
    assert [r["epoch"] for r in rows] == [1, 2] and 0 < rows[0]["time"] < rows[1]["time"]
    for row, record in zip(rows, records):                            # every column, exactly; -1: empty
        assert row == {k: (None if k in STAT_NAMES and record[k] < 0 else record[k]) for k in row}
    assert set(rows[0]) == {"epoch", "time", "loss", "loss_cls", "loss_box", "loss_centerness", "lr",
                            "mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "mAR", "ARs", "ARm", "ARl"}
    assert (work_dir / "results.png").stat().st_size > 10_000
    events = EventAccumulator(str(work_dir / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train_iter/loss_cls")]
    assert steps == list(range(1, 5))                                  # 2 iterations per epoch, logged each
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("train/loss_cls")] == [  # the epoch axis
        (r["epoch"], round(r["loss_cls"], 6)) for r in records]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("val/mAP")] == [
        (r["epoch"], round(r["mAP"], 6)) for r in records]
    assert len([t for t in events.Tags()["scalars"] if t.startswith("val_AP_per_class/")]) == 5


@pytest.mark.slow
def test_resume_continues_at_next_epoch(short_run, tmp_path, capsys):
    work_dir = shutil.copytree(short_run[0], tmp_path / "run")       # the shared run stays as it was
    common = [f"work_dir={work_dir}" if key.startswith("work_dir=") else key for key in short_run[1]]
    out = run(["--config", "fcos/config_demo.py", *common, "epochs=3", "resume=auto"], capsys)
    assert "resumed from" in out and "at epoch 3" in out
    assert "epoch 1/3" not in out and "epoch 3/3" in out
    records = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    from public.engine.watch.plots import read_results_csv
    assert [r["epoch"] for r in read_results_csv(work_dir / "results.csv")] == [1, 2, 3]
    assert torch.load(work_dir / "latest.pth", weights_only=True)["epoch"] == 3


def test_bad_override_is_a_clear_error(capsys):
    assert train_cli.main(["epochz=3"]) == 2             # python train.py's exit status
    err = capsys.readouterr().err
    assert "unknown config key 'epochz'" in err and "epochs" in err


@pytest.mark.slow
def test_evaluate_accepts_a_torchvision_state_dict(short_run, tmp_path, capsys):
    """A torchvision fcos_resnet50_fpn file is recognised, converted, and run with its settings."""
    from torchvision.models.detection import fcos_resnet50_fpn
    _, common, _ = short_run
    path = tmp_path / "fcos_resnet50_fpn_coco.pth"
    torch.save(fcos_resnet50_fpn(weights=None, weights_backbone=None).state_dict(), path)
    val_json = with_coco_names(next(c for c in common if c.startswith("val_annotations="))[16:], tmp_path)
    out = run(["--config", "fcos/config.py", *[c for c in common if not c.startswith(("work_dir", "val_annotations"))],
               f"val_annotations={val_json}", "--evaluate", str(path)], capsys)
    assert "converted foreign checkpoint" in out and "'location_offset': 0.0" in out
    assert "AP @[IoU=0.50:0.95 | area=   all | maxDets=100]" in out and "per-class AP" in out


def test_ctrl_c_is_one_line_saying_how_to_resume(monkeypatch, capsys, tmp_path):
    import public.engine.train.loop as loop

    def interrupted(cfg):
        raise KeyboardInterrupt
    monkeypatch.setattr(loop, "train", interrupted)
    assert train_cli.main([f"work_dir={tmp_path / 'run'}"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == (f"interrupted: {tmp_path / 'run'}/latest.pth holds the last finished epoch; run the same "
                   f"command with resume=auto to continue from it")


def test_an_option_that_is_a_config_key_gets_the_key_value_hint(capsys):
    with pytest.raises(SystemExit) as stop:
        train_cli.main(["--epochs", "3"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().endswith("config keys are set as key=value, without dashes: epochs=3")


def test_tools_run_as_files_from_another_folder(tmp_path):
    """python path/to/tools/X.py works from any folder (the repository's modules are found):
    the dataset check of a generated dataset, and the plot of a run's metrics.jsonl (written
    here as the trainer writes it: the figure's content is test_watch.py's). The two processes
    run side by side."""
    from public.data.demo import builtin_paths, generate_demo_data
    from public.engine.evaluate.evaluator import STAT_NAMES

    generate_demo_data(tmp_path / "data", 4, 3, seed=3)
    data = [f"{key}={value}" for key, value in builtin_paths(tmp_path / "data").items()]
    work_dir = tmp_path / "run"
    work_dir.mkdir()
    rows = [{"epoch": epoch, **{name: round(0.1 * epoch + 0.01 * k, 4) for k, name in enumerate(STAT_NAMES)},
             "loss": 3.0 / epoch, "loss_cls": 1.0 / epoch, "loss_box": 1.5 / epoch, "loss_centerness": 0.5 / epoch,
             "lr": 0.01 / epoch, "time": 10.0 * epoch} for epoch in (1, 2)]
    (work_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    check = subprocess.Popen([sys.executable, str(REPO / "tools" / "check_dataset.py"), "--config",
                              "fcos/config_demo.py", *data], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    plots = subprocess.Popen([sys.executable, str(REPO / "tools" / "plots.py"), str(work_dir), "--out", "c.png"],
                             cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    check_out, check_err = check.communicate(timeout=300)
    _, plots_err = plots.communicate(timeout=300)
    assert check.returncode == 0, check_out[-2000:] + check_err[-2000:]
    assert "4 images" in check_out and "3 images" in check_out
    assert plots.returncode == 0, plots_err[-2000:]
    assert (cwd / "c.png").stat().st_size > 10_000
