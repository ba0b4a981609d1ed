"""One run per work_dir: the lock a training run holds in its work_dir.

``work_dir/run.lock`` names its holder (json: host, PID, the process's start time, the
command). A second run into the same work_dir stops with one line naming the holder, before it
writes anything. A lock whose holder is gone is taken over with a warning:

- same host: the PID no longer runs (or runs another program: its start time differs);
- another host (a shared file system; e.g. a job requeued onto another node after its node
  died): the holder refreshes the file's time every ``HEARTBEAT_S`` seconds, so a lock not
  refreshed for ``STALE_AFTER_S`` seconds is left by a run that is gone.

The lock is released at the end of the run and on any error, and on SIGTERM (a scheduler's
preemption, torchrun stopping its workers to restart them): while the lock is held, SIGTERM
releases it, then ends the process as it would have. A SIGKILL, a crash of the machine, or a
SIGTERM that arrives while the process waits inside a collective (its handler cannot run; then
SIGKILL follows) leaves a stale lock behind, taken over by the next run.
``--evaluate`` and ``test.py`` write beside the checkpoint and take no lock.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

logger = logging.getLogger("densedet")

LOCK_NAME = "run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0   # 10 missed heartbeats: a run that is gone, not one that is slow

_held: dict[str, "_Held"] = {}   # resolved work_dir -> this process's lock on it


class WorkDirInUse(ValueError):
    """Another run holds the work_dir's lock; the message names it (one line)."""


class _Held:
    def __init__(self, path: Path, identity: dict):
        self.path, self.identity = path, identity
        self.stop = threading.Event()
        self.previous_sigterm = None
        self.thread = threading.Thread(target=self._beat, name="densedet-lock-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:     # the work_dir went away or is read-only now: nothing to refresh
                pass


def process_start_ticks(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (/proc/PID/stat field 22), None where
    unreadable (no /proc, or no such process): with the PID it names one process, whatever
    reuses the PID later."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[19])   # fields after "(comm)", from field 3


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def this_process() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start_ticks": process_start_ticks(pid), "boot_id": _boot_id(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300]}


def describe(holder: dict) -> str:
    return (f"PID {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
            + (f" ({holder['command']})" if holder.get("command") else ""))


def holder_gone(holder: dict, age_s: float) -> str | None:
    """Why the lock's holder no longer runs, or None if it may still run."""
    if holder.get("host") != socket.gethostname():
        return (f"its lock was not refreshed for {age_s:.0f} s (a run refreshes it every {HEARTBEAT_S:.0f} s)"
                if age_s > STALE_AFTER_S else None)
    if holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
        return "the machine was restarted since"
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return "the lock names no process"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"PID {pid} no longer runs"
    except PermissionError:   # runs, as another user
        pass
    ticks = process_start_ticks(pid)
    if holder.get("start_ticks") is not None and ticks is not None and ticks != holder["start_ticks"]:
        return f"PID {pid} is another process now"
    return None


def acquire(work_dir: str | Path) -> str | None:
    """Take ``work_dir``'s lock for this process; returns a warning if a stale lock was taken
    over (else None). Raises WorkDirInUse naming the holder if another run holds it."""
    work_dir = Path(work_dir)
    key = str(work_dir.resolve())
    if key in _held:
        raise WorkDirInUse(f"work_dir {work_dir} is already held by this process (a run inside a run)")
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        # flock: the check and the write are one step against another run starting at the same moment;
        # held only for that step (a forked data-loader worker must not keep it alive).
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)   # released (unlinked) meanwhile: open the new one
    try:
        text = os.read(fd, 1 << 16).decode("utf-8", "replace")
        warning = None
        if text.strip():
            try:
                holder = json.loads(text)
                assert isinstance(holder, dict)
            except (json.JSONDecodeError, AssertionError):
                holder = {}
            age = time.time() - os.fstat(fd).st_mtime
            gone = holder_gone(holder, age) if holder else "the lock file is not readable json"
            if gone is None:
                raise WorkDirInUse(f"work_dir {work_dir} is in use by another run ({describe(holder)}): wait for it "
                                   f"to end, or choose another work_dir= (its lock: {path})")
            warning = (f"warning: took over the lock of {work_dir} left by a run that is gone "
                       f"({describe(holder) if holder else path}: {gone})")
        identity = this_process()
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(identity) + "\n").encode())
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    held = _Held(path, identity)
    held.thread.start()
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        held.previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    _held[key] = held
    return warning


def _exit_on_sigterm(signum, frame):
    """Release every lock of this process, then die of SIGTERM as without this handler (no
    unwinding: a run's teardown could wait on a collective of a process that is gone)."""
    for work_dir in [held.path.parent for held in _held.values()]:
        release(work_dir)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def release(work_dir: str | Path) -> bool:
    """Remove ``work_dir``'s lock if this process holds it; True if it did."""
    held = _held.pop(str(Path(work_dir).resolve()), None)
    if held is None:
        return False
    held.stop.set()
    if held.previous_sigterm is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, held.previous_sigterm)
    try:
        fd = os.open(held.path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            stored = json.loads(os.read(fd, 1 << 16).decode())
            mine = (stored.get("pid"), stored.get("host")) == (held.identity["pid"], held.identity["host"])
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            mine = False
        if mine:   # never remove a lock another run took over meanwhile
            os.ftruncate(fd, 0)
            held.path.unlink()
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return True
