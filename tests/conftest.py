"""Shared pytest setup."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# pytest.ini runs the suite on one pytest-xdist worker per core ("-n auto"). Each worker, and each
# process a test starts (train.py, torchrun, ...), then uses one torch thread: two workers with two
# threads each on two cores wait on each other (a small model's step 3x slower, measured).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def densedet_log_reaches_caplog():
    """A run in the same process (train(), evaluate_checkpoint) stops the "densedet" logger from
    propagating, so that its lines are not printed twice; tests that read ``caplog`` need them."""
    logger = logging.getLogger("densedet")
    logger.propagate = True
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module's tests: on a 2-core machine shared with other
    jobs, two threads wait on each other (a small model's forward 3-20x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_results_figure(monkeypatch):
    """train() in this test writes results.csv but does not draw results.png: the figure costs
    1.4 s of CPU after every epoch (matplotlib, 7 panels, constrained layout), most of a tiny
    run's time, and is proven elsewhere (test_watch.py draws it and checks its lines; test_cli.py
    checks the file of a real train.py run). For tests of what train() learns, orders, saves and
    resumes, not of its figure."""
    from public.engine.watch import plots

    monkeypatch.setattr(plots, "plot_runs", lambda runs, path=None, title="": None)


# ---- one real training run, shared by the command-line tests ------------------------------------
@pytest.fixture(scope="session")
def fcos_run(tmp_path_factory):
    """One real ``python train.py`` run, shared by test_cli.py and test_checkpoint_run.py (one
    process instead of one per module): the FCOS demo config for 2 epochs, evaluated after each,
    with TensorBoard, on its own tiny dataset (8 train / 6 val generated images, seed 3; 2
    iterations of batch 4 an epoch) at 96 px; lr 0.01 and score_thresh=0 so that its mAP is
    above 0. Tests that change the run work on a copy (``shutil.copytree``).

    Returns (work_dir, the key=value arguments of the run, its stdout)."""
    from public.data.demo import builtin_paths, generate_demo_data

    tmp = tmp_path_factory.mktemp("fcos_run")
    data = builtin_paths(tmp / "data")
    generate_demo_data(tmp / "data", 8, 6, seed=3)
    work_dir = tmp / "run"
    keys = [*(f"{key}={value}" for key, value in data.items()), f"work_dir={work_dir}", "min_size=96", "max_size=96",
            "test_min_size=96", "batch_size=4", "num_workers=0", "flops=False", "warmup_iters=2", "log_interval=1",
            "lr=0.01", "score_thresh=0.0", "epochs=2", "eval_interval=1", "tensorboard=True"]
    proc = subprocess.run([sys.executable, "train.py", "--config", "fcos/config_demo.py", *keys], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work_dir, keys, proc.stdout
