"""What a run leaves to be watched: ``results.csv`` and ``results.png`` in its work dir (both
rebuilt from ``metrics.jsonl`` after each epoch), TensorBoard scalars (``tensorboard=True``),
and a figure comparing runs:

    python -m tools.plots work_dirs/a work_dirs/b [--out compare.png]

``metrics.jsonl`` holds one row per epoch: ``epoch``, ``time`` (wall-clock seconds since
the run started, carried over a resume), the mean training losses (``loss*``), ``lr`` (at the
end of the epoch) and, for an evaluated epoch, the 12 COCO stats. A row for epoch e supersedes every earlier row for
epoch e or later (a resumed epoch replaces what an interrupted run had written), so
``results.csv`` and ``metrics.jsonl`` tell the same story.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import time
from pathlib import Path

# Figures are built without pyplot: matplotlib renders them with Agg, needs no display and
# leaves the user's backend alone.
from matplotlib.figure import Figure

from public.engine.watch.logger import STAT_NAMES

logger = logging.getLogger("densedet")

PLOTTED_STATS = ("mAP", "AP50", "AP75", "mAR")


# ---- reading metrics.jsonl ---------------------------------------------------------------------
def read_metrics(path: str | Path) -> list[dict]:
    """``metrics.jsonl`` -> its rows by epoch, each epoch once: a row for epoch e drops every
    earlier row for epoch >= e. A missing file gives []; a broken line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    rows: list[dict] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            epoch = int(row["epoch"])
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not a metrics row ({error}): {line[:80]!r}") from None
        rows = [r for r in rows if int(r["epoch"]) < epoch] + [row]
    return rows


def loss_names(rows: list[dict]) -> list[str]:
    """The training losses in ``rows``, total ``loss`` first, then the others as they appear."""
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k.startswith("loss") and k not in names]
    return sorted(names, key=lambda k: (k != "loss", names.index(k)))


def results_columns(rows: list[dict]) -> list[str]:
    return ["epoch", "time", *loss_names(rows), "lr", *STAT_NAMES]


def write_results_csv(rows: list[dict], path: str | Path) -> Path:
    """One line per epoch of ``rows`` with ``results_columns``; empty cells where a row lacks one."""
    path = Path(path)
    columns = results_columns(rows)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            # a COCO stat of -1 (no object of that size) is absent: an empty cell
            writer.writerow([_cell(None if c in STAT_NAMES and (row.get(c) or 0) < 0 else row.get(c))
                             for c in columns])
    tmp.replace(path)
    return path


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same float
    return str(value)


def read_results_csv(path: str | Path) -> list[dict]:
    """``results.csv`` -> rows of floats (epoch as int), None for empty cells."""
    with open(path, newline="") as f:
        return [{k: (None if v == "" else int(v) if k == "epoch" else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


# ---- figures -------------------------------------------------------------------------------------
def panels_of(runs: dict[str, list[dict]]) -> list[str]:
    """The quantities drawn, one panel each: every training loss, lr, then mAP, AP50, AP75, mAR."""
    losses: list[str] = []
    for rows in runs.values():
        losses += [k for k in loss_names(rows) if k not in losses]
    return [*losses, "lr", *PLOTTED_STATS]


def plot_runs(runs: dict[str, list[dict]], path: str | Path | None = None, title: str = "") -> Figure:
    """One panel per quantity of ``panels_of``, value against epoch, one line per run (labelled
    with its key; a legend when there are several). Saved to ``path`` as PNG if given.

    Args:
        runs: {label: rows as ``read_metrics`` returns them}.
    Returns:
        the figure; ``fig.axes[i].lines[j]`` holds run j's data of panel i.
    """
    panels = panels_of(runs)
    cols = 3 if len(panels) <= 9 else 4
    rows_n = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows_n), layout="constrained")
    axes = fig.subplots(rows_n, cols, squeeze=False).ravel()
    for ax, key in zip(axes, panels):
        for label, rows in runs.items():
            points = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and r[key] >= 0]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=label)
        ax.set_title(_panel_title(key))
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate" if key == "lr" else "loss" if key.startswith("loss")
                      else "AR" if key == "mAR" else "AP")
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        if key in PLOTTED_STATS:
            ax.set_ylim(-0.02, 1.02)  # a curve at 0 or 1 stays visible
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if len(runs) > 1:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(runs), 4))
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def _panel_title(key: str) -> str:
    if key == "loss":
        return "training loss (total)"
    if key.startswith("loss"):
        return f"training {key.replace('_', ' ')}"
    return {"lr": "lr (end of epoch)", "mAP": "val mAP (IoU .50:.95)", "AP50": "val AP50 (IoU .50)",
            "AP75": "val AP75 (IoU .75)", "mAR": "val mAR (IoU .50:.95, 100 dets)"}[key]


def update_results(work_dir: str | Path) -> tuple[Path, Path] | None:
    """Rebuild ``results.csv`` and ``results.png`` of a run from its ``metrics.jsonl``."""
    work_dir = Path(work_dir)
    rows = read_metrics(work_dir / "metrics.jsonl")
    if not rows:
        return None
    csv_path = write_results_csv(rows, work_dir / "results.csv")
    png_path = work_dir / "results.png"
    plot_runs({work_dir.name: rows}, png_path, title=str(work_dir))
    return csv_path, png_path


# ---- during training -------------------------------------------------------------------------------
class RunRecorder:
    """The trainer's hooks for watching a run; a no-op except on the main process.

    ``elapsed()``: wall-clock seconds of the run (over resumes: from the last kept row of
    ``metrics.jsonl`` before ``start_epoch``). TensorBoard curves share the epoch axis:
    ``trained(epoch, losses, lr)`` writes the epoch's mean losses and its last lr
    (``train/<name>``, step = epoch), ``evaluated(epoch, result)`` the COCO stats COCOeval
    could compute (``val/<stat>``; a stat of -1, e.g. APl without large objects, is absent) and
    ``val_AP_per_class/<name>``, then results.csv and results.png from ``metrics.jsonl`` (call it
    after the row is written). ``iteration_logger(epoch)``: a callback for ``MetricLogger`` that
    writes each logged iteration's losses and lr under ``train_iter/<name>`` (step = iteration).
    """

    def __init__(self, work_dir: str | Path, start_epoch: int, iters_per_epoch: int, tensorboard: bool,
                 main: bool):
        self.work_dir, self.main, self.iters_per_epoch = Path(work_dir), main, iters_per_epoch
        self.start = time.perf_counter()
        earlier = [r for r in read_metrics(self.work_dir / "metrics.jsonl") if r["epoch"] <= start_epoch] if main else []
        self.time_before = float(earlier[-1].get("time", 0.0)) if earlier else 0.0
        self.writer = open_tensorboard(self.work_dir / "tensorboard") if (tensorboard and main) else None

    def elapsed(self) -> float:
        return round(self.time_before + time.perf_counter() - self.start, 3)

    def iteration_logger(self, epoch: int):
        if self.writer is None:
            return None

        def write(iteration: int, values: dict[str, float]) -> None:
            step = epoch * self.iters_per_epoch + iteration
            for name, value in values.items():
                self.writer.add_scalar(f"train_iter/{name}", value, step)
        return write

    def trained(self, epoch: int, losses: dict[str, float], lr: float) -> None:
        if self.writer is not None:
            for name, value in {**losses, "lr": lr}.items():
                self.writer.add_scalar(f"train/{name}", value, epoch)

    def rows_changed(self) -> None:
        """results.csv and results.png again, after a training-only row of metrics.jsonl."""
        if self.main:
            update_results(self.work_dir)

    def evaluated(self, epoch: int, result) -> None:
        if not self.main:
            return
        if self.writer is not None:
            for name, value in result.metrics.items():
                if value >= 0:  # COCOeval's -1: no object of that size, nothing to measure
                    self.writer.add_scalar(f"val/{name}", value, epoch)
            for entry in result.per_class:
                self.writer.add_scalar(f"val_AP_per_class/{entry['name']}", entry["AP"], epoch)
            self.writer.flush()
        update_results(self.work_dir)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def open_tensorboard(log_dir: Path):
    """A ``SummaryWriter`` on ``log_dir``; a clear error when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError(f"tensorboard=True needs the tensorboard package ({error}): `pip install tensorboard` "
                          f"(it is in requirements-dev.txt), or set tensorboard=False") from None
    logger.info("TensorBoard: %s (view with: tensorboard --logdir %s)", log_dir, log_dir.parent)
    return SummaryWriter(str(log_dir))
