"""What a run needs to continue exactly where it stopped: random states, rows of per-epoch
files, and no half-written files left behind.

A resumed run restarts at the end of the last epoch whose ``latest.pth`` was written. It ends
with the same weights as an uninterrupted run because nothing random depends on how the run
got there:

- the order of the training images is a function of (seed, epoch) (the samplers), and each
  image's random augmentation a function of (seed, epoch, index) (``public.data.seeding``),
  whichever process or data-loader worker loads it;
- the random states of every process (Python ``random``, NumPy, torch CPU and CUDA) are
  stored in ``latest.pth`` at the end of each epoch and restored on resume;
- evaluation leaves the random states as it found them (``preserved_rng``), so an evaluation
  that is re-run on resume changes nothing.

Everything stored is tensors and plain Python values, so it loads with ``weights_only=True``.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
from pathlib import Path

import numpy as np
import torch


# ---- random states ---------------------------------------------------------------------------
def rng_state() -> dict:
    """This process's random states: Python ``random``, NumPy's global generator, torch CPU and
    (if CUDA is in use) every CUDA device's, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),                                   # (3, 625 ints, None|float)
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),                                # uint8 [5056]
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()                 # uint8 tensors, one per device
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned (CUDA states only if the device count matches)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, NumPy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def preserved_rng():
    """Run a block (an evaluation) without changing any random state this process had before."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


# ---- per-epoch files -------------------------------------------------------------------------
def drop_rows_from_epoch(path: str | Path, epoch: int) -> int:
    """Remove the rows of epoch ``epoch`` and later from a per-epoch file, so that a resumed run
    that redoes them replaces them instead of adding duplicates. Returns how many were removed.

    ``path`` is JSON lines (one object with an ``"epoch"`` key per line) or, for ``.csv``, a
    table with a header that has an ``epoch`` column. Rows without an epoch are kept. A missing
    file is fine (0). The file is rewritten atomically.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    text = path.read_text()
    if path.suffix == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        if not rows or "epoch" not in rows[0]:
            return 0
        column = rows[0].index("epoch")
        kept = [rows[0]] + [r for r in rows[1:] if not _epoch_at_least(r[column] if column < len(r) else "", epoch)]
        removed = len(rows) - len(kept)
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(kept)
        new_text = out.getvalue()
    else:
        lines = [line for line in text.splitlines() if line.strip()]
        kept = [line for line in lines if not _epoch_at_least(_jsonl_epoch(line), epoch)]
        removed = len(lines) - len(kept)
        new_text = "".join(line + "\n" for line in kept)
    if removed:
        write_text_atomic(path, new_text)
    return removed


def _jsonl_epoch(line: str):
    try:
        record = json.loads(line)
    except json.JSONDecodeError:  # a line cut short by a kill: drop it with the epochs it belongs to
        return float("inf")
    return record.get("epoch") if isinstance(record, dict) else None


def _epoch_at_least(value, epoch: int) -> bool:
    try:
        return float(value) >= epoch
    except (TypeError, ValueError):
        return False


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through ``path.tmp`` and a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def remove_stale_tmp(work_dir: str | Path) -> list[str]:
    """Delete the ``*.tmp`` files an interrupted atomic write left in ``work_dir`` (the file
    they were replacing is intact); returns their names."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return []
    removed = []
    for tmp in sorted(work_dir.glob("*.tmp")):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp.name)
    return removed
