"""Restarts that resume: under ``torchrun --max-restarts=N ... resume=auto``, a process killed
mid-epoch makes torchrun stop the other and start both again; they continue from latest.pth and
end with exactly the weights of an uninterrupted run (2 gloo processes on the CPU)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from helpers import demo_subset
from test_ddp import _free_port
from test_resume import assert_same_weights

from public.engine.distributed import _attempt_store

REPO = Path(__file__).resolve().parents[1]


def torchrun(script_args: list[str], restarts: int = 0) -> subprocess.CompletedProcess:
    # the c10d rendezvous, as the README's cluster example: every restart is a new rendezvous round
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--max-restarts={restarts}",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{_free_port()}", *script_args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})


# The restarted rank 1 joins 3 s late (tests/pausing_train.py), as on a loaded machine: its peer
# reads the rendezvous keys first, which found the dead process's address before the keys of each
# attempt were kept apart (public/engine/distributed.py, _attempt_store).
@pytest.mark.slow
def test_torchrun_restart_after_a_killed_process_ends_with_the_uninterrupted_weights(tmp_path):
    train_images, train_json = demo_subset(tmp_path, 8, "train")
    val_images, val_json = demo_subset(tmp_path, 3, "val")
    args = ["--config", "fcos/config_demo.py", f"train_images={train_images}", f"train_annotations={train_json}",
            f"val_images={val_images}", f"val_annotations={val_json}", "device=cpu", "batch_size=2",
            "num_workers=0", "epochs=2", "min_size=(64,80)", "max_size=96", "test_min_size=64", "flops=False",
            "warmup_iters=1", "hflip_prob=0.5", "aspect_ratio_grouping=False", "ema=0.9", "resume=auto",
            "tensorboard=False"]
    reference = torchrun(["train.py", *args, f"work_dir={tmp_path / 'reference'}"])
    assert reference.returncode == 0, reference.stderr[-3000:]
    marker, work_dir = tmp_path / "killed", tmp_path / "restarted"
    # rank 1 kills itself after iteration 3: in epoch 2 (2 iterations an epoch), after latest.pth of epoch 1
    # up to 3 restarts, as a cluster user would allow (the kill happens once: one restart is needed)
    restarted = torchrun(["tests/pausing_train.py", "kill:1:3", str(marker), *args, f"work_dir={work_dir}"],
                         restarts=3)
    output = restarted.stdout + restarted.stderr
    assert restarted.returncode == 0, output[-4000:]
    assert marker.read_text() == "kill:1:3"
    assert "resumed from" in output and "latest.pth at epoch 2" in output
    assert_same_weights(tmp_path / "reference" / "latest.pth", work_dir / "latest.pth")
    rows = [json.loads(line)["epoch"] for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2]                            # epoch 2 redone once, not added twice
    assert not (work_dir / "run.lock").exists()


def test_each_torchrun_attempt_reads_only_its_own_rendezvous_keys(monkeypatch):
    """torchrun's c10d agent keeps one store for all restarts: attempt 1 must not find the
    connection keys of attempt 0's processes (a dead peer's address makes gloo wait forever)."""
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(server.port), "RANK": "0",
                       "WORLD_SIZE": "2", "TORCHELASTIC_USE_AGENT_STORE": "True"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    first = _attempt_store()
    first.set("default_pg/1", b"address of a process now dead")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    second = _attempt_store()
    assert not second.check(["default_pg/1"])                 # the restarted peer's key is awaited
    second.set("default_pg/1", b"address of the restarted process")
    assert second.get("default_pg/1") == b"address of the restarted process"
    assert first.get("default_pg/1") == b"address of a process now dead"
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    assert _attempt_store() is None                           # not under torchrun's agent: torch's own store
