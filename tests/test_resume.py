"""Exact resume: a real train.py killed with SIGKILL at several moments and continued with
resume=auto ends with exactly the weights of an uninterrupted run.

The process is held at a named point (DENSEDET_PAUSE_AT, see public/engine/runstate.py), the
test sees the marker file and sends SIGKILL from outside, as a crash or `kill -9` would.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from public.data.demo import generate_demo_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_data")
    generate_demo_data(root, 6, 2, seed=3)
    return [f"train_images={root / 'train'}", f"train_annotations={root / 'annotations' / 'instances_train.json'}",
            f"val_images={root / 'val'}", f"val_annotations={root / 'annotations' / 'instances_val.json'}",
            "min_size=(64,80)", "max_size=96", "test_min_size=64", "batch_size=2", "epochs=2", "eval_interval=1",
            "flops=False", "log_interval=1", "warmup_iters=2", "hflip_prob=0.5", "aspect_ratio_grouping=False"]


def _env(pause_at: str = "", marker: Path | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("DENSEDET_PAUSE_AT", None)
    if pause_at:
        env.update(DENSEDET_PAUSE_AT=pause_at, DENSEDET_PAUSE_FILE=str(marker))
    return env


def train(args, pause_at: str = "", tmp: Path | None = None):
    """Run train.py to the end, or (``pause_at``) until it reaches that point, then SIGKILL it."""
    cmd = [sys.executable, "train.py", "--config", "fcos/config_demo.py", *args]
    if not pause_at:
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout
    marker = tmp / f"paused_{pause_at.replace(':', '_')}"
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(pause_at, marker), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, f"train.py ended before {pause_at}:\n" + proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    out = proc.stdout.read()
    assert proc.returncode == -signal.SIGKILL
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    state_a = torch.load(a, weights_only=True)["model"]
    state_b = torch.load(b, weights_only=True)["model"]
    assert state_a.keys() == state_b.keys()
    diffs = {k: (state_a[k].double() - state_b[k].double()).abs().max().item() for k in state_a}
    assert max(diffs.values()) == 0, {k: d for k, d in diffs.items() if d}


def metric_rows(work_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("reference")
    train([*data, f"work_dir={work_dir}", "num_workers=0"])
    return work_dir


def test_killed_in_evaluation_epoch_and_checkpoint_write_resumes_exactly(data, reference, tmp_path):
    work_dir = tmp_path / "run"
    args = [*data, f"work_dir={work_dir}", "num_workers=0"]
    # 1. inside the evaluation of epoch 1 (latest.pth of epoch 1 is already written)
    train(args, "eval:1", tmp_path)
    assert torch.load(work_dir / "latest.pth", weights_only=True)["eval_pending"] is True
    assert not (work_dir / "metrics.jsonl").exists()
    # 2. resumed (epoch 1's evaluation is redone first), killed inside epoch 2 (iteration 2 of 3)
    out = train([*args, "resume=auto"], "iter:5", tmp_path)
    assert "resumed from" in out and "evaluating epoch 1 first" in out
    assert [r["epoch"] for r in metric_rows(work_dir)] == [1]
    # 3. resumed, killed inside the write of epoch 2's latest.pth: a *.tmp is left, latest.pth intact
    train([*args, "resume=auto"], "save:latest.pth:2", tmp_path)
    assert list(work_dir.glob("*.tmp")) and torch.load(work_dir / "latest.pth", weights_only=True)["epoch"] == 1
    # 4. resumed to the end
    out = train([*args, "resume=auto"])
    assert "interrupted checkpoint write" in out
    assert_same_weights(work_dir / "latest.pth", reference / "latest.pth")
    assert_same_weights(work_dir / "best.pth", reference / "best.pth")
    assert metric_rows(work_dir) == metric_rows(reference)          # each epoch once, the same numbers
    assert not list(work_dir.glob("*.tmp"))


def test_worker_processes_do_not_change_the_run_and_resume_exactly(data, reference, tmp_path):
    """Augmentation depends on (seed, epoch, image), not on the process that loads the image:
    two workers give the weights of the in-process run, also when killed and resumed."""
    work_dir = tmp_path / "run"
    args = [*data, f"work_dir={work_dir}", "num_workers=2"]
    train(args, "iter:4", tmp_path)          # first step of epoch 2
    train([*args, "resume=auto"])
    assert_same_weights(work_dir / "latest.pth", reference / "latest.pth")
    assert metric_rows(work_dir) == metric_rows(reference)
