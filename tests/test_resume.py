"""Exact resume: a real train.py killed with SIGKILL at several moments and continued with
resume=auto ends with exactly the weights of an uninterrupted run.

The process is held at a named point (tests/pausing_train.py wraps the engine's functions to
stop there), the test sees the marker file and sends SIGKILL from outside, as a crash or
`kill -9` would.
"""
import copy
import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from public.data.demo import generate_demo_data
from public.data.seeding import EpochBatches, EpochSamples
from public.engine.runs.state import (drop_rows_from_epoch, preserved_rng, remove_stale_tmp, rng_state,
                                    set_rng_state)

REPO = Path(__file__).resolve().parents[1]


def draws() -> list[float]:
    """One number from each random source training could use."""
    return [random.random(), float(np.random.rand()), float(np.random.randn()), float(torch.rand(()))]


# ---- pieces --------------------------------------------------------------------------------
def test_random_states_round_trip_through_a_weights_only_checkpoint():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    np.random.randn()                                   # leaves a cached Gaussian in NumPy's state
    buffer = io.BytesIO()
    torch.save({"rng": [rng_state()]}, buffer)
    expected = [draws() for _ in range(3)]
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True)["rng"][0])
    assert [draws() for _ in range(3)] == expected


def test_evaluation_block_leaves_random_states_as_it_found_them():
    torch.manual_seed(2), random.seed(2), np.random.seed(2)
    state = rng_state()
    expected = draws()
    set_rng_state(state)
    with preserved_rng():
        draws(), draws()
    assert draws() == expected


class RandomItems(torch.utils.data.Dataset):
    """Each item: the draws of a random transform, and the process that drew them."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return draws(), os.getpid()


def test_augmentation_depends_on_seed_epoch_and_index_only():
    samples = EpochSamples(RandomItems(), seed=7)
    first = samples[(0, 3)][0]
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    before = draws()
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    assert samples[(0, 3)][0] == first                   # whatever was drawn before
    assert draws() == before                             # and the process's own states are untouched
    assert samples[(1, 3)][0] != first and samples[(0, 4)][0] != first
    assert EpochSamples(RandomItems(), seed=8)[(0, 3)][0] != first
    assert len(samples) == 8


def test_loader_batches_and_augmentation_are_the_same_in_worker_processes():
    def epochs(num_workers):
        batches = EpochBatches(BatchSampler(DistributedSampler(range(8), 1, 0, shuffle=True, seed=5), 3, False))
        loader = DataLoader(EpochSamples(RandomItems(), 5), batch_sampler=batches, num_workers=num_workers,
                            collate_fn=lambda items: items, persistent_workers=num_workers > 0)
        out = []
        for epoch in (0, 1):
            batches.set_epoch(epoch)
            out.append([item for batch in loader for item in batch])
        return out
    in_process, in_workers = epochs(0), epochs(2)
    assert [[d for d, _ in e] for e in in_process] == [[d for d, _ in e] for e in in_workers]
    assert {pid for _, pid in in_workers[0]} != {os.getpid()}       # really loaded by other processes
    assert [d for d, _ in in_process[0]] != [d for d, _ in in_process[1]]   # a new epoch, new draws


def test_rows_of_redone_epochs_are_dropped(tmp_path):
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text('{"epoch": 1, "mAP": 0.1}\n{"epoch": 2, "mAP": 0.2}\n{"note": "x"}\n{"epoch": 3, "mA')
    assert drop_rows_from_epoch(jsonl, 2) == 2          # epoch 2 and the line a kill cut short
    assert jsonl.read_text() == '{"epoch": 1, "mAP": 0.1}\n{"note": "x"}\n'
    table = tmp_path / "results.csv"
    table.write_text("epoch,mAP\n1,0.1\n2,0.2\n3,0.3\n")
    assert drop_rows_from_epoch(table, 3) == 1 and table.read_text() == "epoch,mAP\n1,0.1\n2,0.2\n"
    assert drop_rows_from_epoch(tmp_path / "absent.jsonl", 1) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "results.csv"]


def test_stale_temporary_files_are_removed(tmp_path):
    (tmp_path / "latest.pth").write_bytes(b"x")
    (tmp_path / "latest.pthab12cd.tmp").write_bytes(b"half")
    assert remove_stale_tmp(tmp_path) == ["latest.pthab12cd.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]


# ---- a real train.py, killed -------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_data")
    generate_demo_data(root, 6, 2, seed=3)
    return [f"train_images={root / 'train'}", f"train_annotations={root / 'annotations' / 'instances_train.json'}",
            f"val_images={root / 'val'}", f"val_annotations={root / 'annotations' / 'instances_val.json'}",
            "min_size=(64,80)", "max_size=96", "test_min_size=64", "batch_size=2", "epochs=2", "eval_interval=1",
            "flops=False", "log_interval=1", "warmup_iters=2", "hflip_prob=0.5", "aspect_ratio_grouping=False",
            # the EMA of the weights and every augmentation (mosaic too) on: their state and draws resume exactly too
            "ema=0.9", "scale_jitter=(0.7,1.3)", "photometric=0.5", "vflip_prob=0.5", "rot90=True", "mosaic=0.5"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def start(args, log: Path, pause_at: str = "", marker: Path | None = None) -> subprocess.Popen:
    """train.py ARGS as a process of its own (in a new session, so that it can be killed with its
    data-loader workers), its output in ``log``; held at ``pause_at`` (tests/pausing_train.py)."""
    cmd = ["train.py", "--config", "fcos/config_demo.py", *args]
    if pause_at:
        cmd = ["tests/pausing_train.py", pause_at, str(marker), *cmd[1:]]
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, *cmd], cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)


def train(args, tmp: Path, pause_at: str = ""):
    """Run train.py to the end, or (``pause_at``) until it reaches that point, then SIGKILL it
    (and its data-loader workers); its output (kept in ``tmp``)."""
    name = pause_at.replace(":", "_") or "end"
    log, marker = tmp / f"{name}.log", tmp / f"paused_{name}"
    proc = start(args, log, pause_at, marker)
    if not pause_at:
        proc.wait(timeout=300)
        assert proc.returncode == 0, log.read_text()[-3000:]
        return log.read_text()
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, f"train.py ended before {pause_at}:\n" + log.read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return log.read_text()


def assert_same_weights(a: Path, b: Path) -> None:
    """The same weights: the model (the EMA) and, in a latest.pth, the raw weights and the EMA's count."""
    a, b = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    for name in ("model", "train_model"):
        assert (name in a) == (name in b)
        if name not in a:
            continue
        state_a, state_b = a[name], b[name]
        assert state_a.keys() == state_b.keys()
        diffs = {k: (state_a[k].double() - state_b[k].double()).abs().max().item() for k in state_a}
        assert max(diffs.values()) == 0, {k: d for k, d in diffs.items() if d}
    assert a.get("ema") == b.get("ema")


def metric_rows(work_dir: Path) -> list[dict]:
    """The rows of metrics.jsonl without their wall-clock time (which no two runs share)."""
    rows = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run without workers, started in the background (one process on the other
    core while the test kills and resumes its run); calling the fixture's value waits for it and
    returns its work_dir."""
    work_dir, log = tmp_path_factory.mktemp("reference"), tmp_path_factory.mktemp("reference_log") / "out.log"
    proc = start([*data, f"work_dir={work_dir}", "num_workers=0"], log)

    def finished() -> Path:
        proc.wait(timeout=300)
        assert proc.returncode == 0, log.read_text()[-3000:]
        latest = torch.load(work_dir / "latest.pth", weights_only=True)
        assert latest["ema"]["updates"] == 6 and "train_model" in latest      # 2 epochs of 3 steps, EMA on
        return work_dir

    yield finished
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_killed_in_evaluation_epoch_and_checkpoint_write_resumes_exactly(data, reference, tmp_path):
    """Killed inside an evaluation, inside an epoch and inside a checkpoint write, and resumed each
    time: the weights, EMA and metric rows of the uninterrupted run. The resumed runs alternate 2
    data-loader workers and none against the reference's none: augmentation depends on (seed,
    epoch, image), not on the process that loads the image, so workers change nothing either,
    also when killed (epoch 2, redone in the last run, is loaded by the workers)."""
    work_dir = tmp_path / "run"
    args = [*data, f"work_dir={work_dir}"]
    # 1. inside the evaluation of epoch 1 (latest.pth of epoch 1 is already written)
    train([*args, "num_workers=0"], tmp_path, "eval:1")
    assert torch.load(work_dir / "latest.pth", weights_only=True)["eval_pending"] is True
    assert not (work_dir / "metrics.jsonl").exists()
    # 2. resumed with workers (epoch 1's evaluation is redone first), killed inside epoch 2 (iteration 2 of 3)
    out = train([*args, "num_workers=2", "resume=auto"], tmp_path, "iter:5")
    assert "resumed from" in out and "evaluating epoch 1 first" in out
    assert [r["epoch"] for r in metric_rows(work_dir)] == [1]
    # 3. resumed, killed inside the write of epoch 2's latest.pth: a *.tmp is left, latest.pth intact
    train([*args, "num_workers=0", "resume=auto"], tmp_path, "save:latest.pth:2")
    assert list(work_dir.glob("*.tmp")) and torch.load(work_dir / "latest.pth", weights_only=True)["epoch"] == 1
    # 4. resumed with workers to the end
    out = train([*args, "num_workers=2", "resume=auto"], tmp_path)
    assert "interrupted checkpoint write" in out
    reference_dir = reference()
    assert_same_weights(work_dir / "latest.pth", reference_dir / "latest.pth")
    assert_same_weights(work_dir / "best.pth", reference_dir / "best.pth")
    assert metric_rows(work_dir) == metric_rows(reference_dir)      # each epoch once, the same numbers
    assert not list(work_dir.glob("*.tmp"))


# ---- a latest.pth of another optimizer layout ---------------------------------------------------
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_optimizer_state_of_another_group_layout_is_refused(optimizer):
    """A latest.pth whose optimizer has other parameter groups than this run's (weights, biases,
    other 1-D) cannot be resumed exactly: refused naming the file and init_from; the same layout
    loads every parameter's state."""
    from torch import nn

    from config import load_config
    from public.engine.runs.resume import load_optimizer_state
    from public.engine.train.optim import build_optimizer
    from public.models.head import Scale

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1), Scale(1.0))
    cfg = load_config("fcos/config.py", [f"optimizer={optimizer}"])
    trained = build_optimizer(cfg, model)
    assert [len(g["params"]) for g in trained.param_groups] == [2, 3, 2]      # weights, biases, BN weight + Scale
    model(torch.rand(2, 3, 6, 6)).square().mean().backward()
    trained.step()
    saved = copy.deepcopy(trained.state_dict())
    new = build_optimizer(cfg, model)
    load_optimizer_state(new, saved, "run/latest.pth")
    for param in model.parameters():
        for key, value in trained.state[param].items():
            assert torch.equal(new.state[param][key], value), key
    params = saved["param_groups"]
    two_groups = dict(saved, param_groups=[dict(params[0], params=params[0]["params"] + params[2]["params"]), params[1]])
    with pytest.raises(ValueError, match=r"run/latest.pth: its optimizer state has 2 parameter groups of \[4, 3\].*"
                                         r"init_from=run/latest.pth"):
        load_optimizer_state(build_optimizer(cfg, model), two_groups, "run/latest.pth")
