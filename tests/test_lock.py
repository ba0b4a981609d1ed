"""One run per work_dir: the lock (public/engine/runs/lock.py), alone and in real train.py runs."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from public.engine.runs import lock
from public.engine.runs.lock import WorkDirInUse

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def dead_pid() -> int:
    """The PID of a process that has ended (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(work_dir: Path, **holder) -> Path:
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / lock.LOCK_NAME
    path.write_text(json.dumps({"host": socket.gethostname(), "started": "2024-01-01T00:00:00+00:00",
                                "command": "train.py", **holder}))
    return path


# ---- the lock alone ---------------------------------------------------------------------------
def test_lock_names_its_holder_and_is_removed_on_release(tmp_path):
    assert lock.acquire(tmp_path) is None
    try:
        holder = json.loads((tmp_path / "run.lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["start_ticks"] == lock.process_start_ticks(os.getpid()) and holder["started"]
        # another process: refused, with our PID in its one-line message
        other = subprocess.run([sys.executable, "-c", f"from public.engine.runs import lock; lock.acquire({str(tmp_path)!r})"],
                               cwd=REPO, env=_env(), capture_output=True, text=True)
        assert other.returncode == 1
        last = other.stderr.strip().splitlines()[-1]
        assert last.startswith("public.engine.runs.lock.WorkDirInUse: ") and f"PID {os.getpid()} on " in last
        with pytest.raises(WorkDirInUse, match="already held by this process"):
            lock.acquire(tmp_path)
    finally:
        assert lock.release(tmp_path)
    assert not (tmp_path / "run.lock").exists() and not lock.release(tmp_path)


def test_lock_of_a_live_process_is_refused(tmp_path):
    write_lock(tmp_path, pid=os.getppid(), start_ticks=lock.process_start_ticks(os.getppid()))
    with pytest.raises(WorkDirInUse, match=f"in use by another run \\(PID {os.getppid()} on {socket.gethostname()}"):
        lock.acquire(tmp_path)
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getppid()   # left as it was


@pytest.mark.parametrize("holder, why", [
    ({"pid": "dead"}, "no longer runs"),
    ({"pid": "parent", "start_ticks": 1}, "is another process now"),          # the PID reused
    ({"pid": "parent", "boot_id": "an earlier boot"}, "the machine was restarted since"),
])
def test_stale_lock_on_this_host_is_taken_over_with_a_warning(tmp_path, holder, why):
    pid = dead_pid() if holder["pid"] == "dead" else os.getppid()
    write_lock(tmp_path, **{**holder, "pid": pid})
    warning = lock.acquire(tmp_path)
    try:
        assert warning.startswith(f"warning: took over the lock of {tmp_path} left by a run that is gone "
                                  f"(PID {pid} on {socket.gethostname()}")
        assert why in warning
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    finally:
        lock.release(tmp_path)


def test_lock_of_another_host_is_stale_only_without_heartbeat(tmp_path):
    path = write_lock(tmp_path, host="node-17", pid=os.getpid())
    with pytest.raises(WorkDirInUse, match="PID .* on node-17"):
        lock.acquire(tmp_path)
    old = time.time() - lock.STALE_AFTER_S - 10
    os.utime(path, (old, old))
    warning = lock.acquire(tmp_path)
    try:
        assert "on node-17" in warning and "not refreshed for 31" in warning
    finally:
        lock.release(tmp_path)


def test_heartbeat_refreshes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
    lock.acquire(tmp_path)
    try:
        old = time.time() - 1000
        os.utime(tmp_path / "run.lock", (old, old))
        time.sleep(0.3)
        assert time.time() - (tmp_path / "run.lock").stat().st_mtime < 5
    finally:
        lock.release(tmp_path)


def test_release_leaves_a_lock_another_run_took_over(tmp_path):
    lock.acquire(tmp_path)
    write_lock(tmp_path, pid=os.getppid())   # as a run that took it over
    assert lock.release(tmp_path)
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getppid()


# ---- real train.py runs -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from public.data.demo import generate_demo_data

    root = tmp_path_factory.mktemp("lock_data")
    generate_demo_data(root, 4, 2, seed=3)
    return [f"train_images={root / 'train'}", f"train_annotations={root / 'annotations' / 'instances_train.json'}",
            f"val_images={root / 'val'}", f"val_annotations={root / 'annotations' / 'instances_val.json'}",
            "min_size=64", "max_size=64", "test_min_size=64", "batch_size=2", "epochs=1", "flops=False",
            "num_workers=0", "tensorboard=False"]


def start_paused(args, tmp: Path, point: str = "iter:1") -> tuple[subprocess.Popen, Path]:
    """train.py held at ``point`` (tests/pausing_train.py), in a session of its own; waits until it is there."""
    marker, log = tmp / "paused", tmp / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "tests/pausing_train.py", point, str(marker),
                                 "--config", "fcos/config_demo.py", *args], cwd=REPO, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc, log


@pytest.mark.slow
def test_second_run_into_a_held_work_dir_stops_naming_the_first(data, tmp_path):
    work_dir = tmp_path / "run"
    first, _ = start_paused([*data, f"work_dir={work_dir}"], tmp_path)
    try:
        second = subprocess.run([sys.executable, "train.py", "--config", "fcos/config_demo.py", *data,
                                 f"work_dir={work_dir}"], cwd=REPO, env=_env(), capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 1, second.stderr[-3000:]
        holder = json.loads((work_dir / "run.lock").read_text())
        assert holder["command"].startswith(f"tests/pausing_train.py iter:1 {tmp_path / 'paused'} --config ")
        assert second.stderr.strip().splitlines()[-1] == (
            f"error: work_dir {work_dir} is in use by another run (PID {first.pid} on {socket.gethostname()}, "
            f"started {holder['started']} ({holder['command']})): wait for it to end, or choose another "
            f"work_dir= (its lock: {work_dir / 'run.lock'})")
        # nothing of the second run reached the first one's files
        assert "in use by another run" not in (work_dir / "train.log").read_text()
        # SIGTERM (a scheduler's preemption): the run ends and removes its lock
        os.kill(first.pid, signal.SIGTERM)
        assert first.wait(timeout=60) != 0
        assert not (work_dir / "run.lock").exists()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()


@pytest.mark.slow
def test_lock_of_a_killed_run_is_taken_over_and_a_finished_run_leaves_none(data, tmp_path):
    work_dir = tmp_path / "run"
    first, _ = start_paused([*data, f"work_dir={work_dir}"], tmp_path)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert json.loads((work_dir / "run.lock").read_text())["pid"] == first.pid   # left behind by the kill
    second = subprocess.run([sys.executable, "train.py", "--config", "fcos/config_demo.py", *data,
                             f"work_dir={work_dir}", "overwrite=True"], cwd=REPO, env=_env(), capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    log = (work_dir / "train.log").read_text()
    assert (f"warning: took over the lock of {work_dir} left by a run that is gone (PID {first.pid} on "
            f"{socket.gethostname()}") in log and f"PID {first.pid} no longer runs" in log
    assert not (work_dir / "run.lock").exists()
    # --evaluate writes beside the checkpoint while another run holds the work_dir: no lock taken
    lock.acquire(work_dir)
    try:
        evaluated = subprocess.run([sys.executable, "train.py", "--evaluate", str(work_dir / "latest.pth")],
                                   cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    finally:
        lock.release(work_dir)
