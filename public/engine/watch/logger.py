"""Logging: console + work_dir/train.log on the main process, and a metric logger that
yields batches and reports losses, lr, data/step time, ETA and peak memory, so that the
training loop body stays clean.

On a terminal, training epochs and evaluation show a tqdm progress bar (on stderr) and the
periodic log lines go to train.log only; elsewhere (a log file, nohup, a cluster job) there is
no bar and the periodic lines are printed as well, without carriage returns.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import time
import warnings
from collections import defaultdict, deque
from pathlib import Path

import torch
from tqdm import tqdm

logger = logging.getLogger("densedet")

# COCO's 12 stats, in COCOeval's order: the columns of metrics.jsonl and results.csv.
STAT_NAMES = ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "mAR", "ARs", "ARm", "ARl")
FILE_ONLY = {"file_only": True}  # ``logger.info(..., extra=FILE_ONLY)``: train.log, not the console


def progress_bars_enabled() -> bool:
    """Bars are drawn on stderr, so only when stderr is a terminal."""
    return sys.stderr.isatty()


class _ConsoleHandler(logging.StreamHandler):
    """stdout, written through ``tqdm.write`` so that a live bar is redrawn below the line;
    skips records marked ``file_only`` while a bar shows the same numbers."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "file_only", False):
            return
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging(work_dir: str | None, main_process: bool) -> logging.Logger:
    """Console and (main process only) ``work_dir/train.log``; other ranks log warnings only."""
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    console = _ConsoleHandler(sys.stdout)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if work_dir and main_process:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(work_dir) / "train.log")
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    warnings.showwarning = _log_warning  # Python warnings (e.g. the dataset's repairs) reach train.log too
    return logger


def progress(iterable, total: int | None = None, desc: str = "", enabled: bool | None = None,
             leave: bool = True):
    """``iterable`` wrapped in a tqdm bar on a terminal (main process only), else as it is.
    ``enabled`` forces the choice (None: decide by the terminal)."""
    from public.engine.distributed import is_main_process

    if enabled is None:
        enabled = progress_bars_enabled() and is_main_process()
    if not enabled:
        return iterable
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        size = os.terminal_size((0, 0))
    # A terminal that reports no size (`script`, some multiplexers) would get no bar at all.
    shape = {"dynamic_ncols": True} if size.columns > 0 and size.lines > 0 else {"ncols": 120, "nrows": 40}
    return tqdm(iterable, total=total, desc=desc, leave=leave, file=sys.stderr, bar_format=BAR_FORMAT, **shape)


# Counts, times and the postfix (total loss, lr) with no graphical bar: about 75 characters, so
# an 80-column terminal shows all of it (a bar would take the width the numbers need).
BAR_FORMAT = "{desc} {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}"


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    logger.warning("warning: %s: %s", category.__name__, message)


def log_error_to_file(message: str, error: BaseException) -> None:
    """Write ``message`` and the traceback of ``error`` to the log files only (train.log): the
    console shows the one-line message, the log keeps what a bug report needs."""
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, None,
                               (type(error), error, error.__traceback__))
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def format_value(key: str, value: float) -> str:
    """A logged number: the lr in scientific notation (1e-5 would read 0.0000 with 4 decimals),
    the rest with 4 decimals."""
    return f"{value:.2e}" if key == "lr" else f"{value:.4f}"


class SmoothedValue:
    """Windowed median and global average of a stream of numbers."""

    def __init__(self, window: int = 20):
        self.values: deque = deque(maxlen=window)
        self.total = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.values.append(value)
        self.total += value * n
        self.count += n

    @property
    def median(self) -> float:
        return float(torch.tensor(list(self.values)).median()) if self.values else 0.0

    @property
    def latest(self) -> float:
        return float(self.values[-1]) if self.values else 0.0

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)


class MetricLogger:
    """``for batch in metric_logger.log_every(loader, header): ...; metric_logger.update(loss=...)``.

    Every ``log_interval`` iterations it logs one line (medians over the last iterations) and
    calls ``on_log(iteration, {name: latest value})`` (e.g. TensorBoard), ``iteration``
    counted from 1 within this pass. ``bar``: None decides by the terminal (see module doc).
    """

    def __init__(self, log_interval: int = 20, device: torch.device | None = None, on_log=None,
                 bar: bool | None = None):
        self.meters: dict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.log_interval = max(1, log_interval)
        self.device = device
        self.on_log = on_log
        self.bar = bar

    def update(self, **values: float) -> None:
        for key, value in values.items():
            self.meters[key].update(float(value))

    def averages(self) -> dict[str, float]:
        return {key: meter.global_avg for key, meter in self.meters.items()}

    def _postfix(self) -> dict[str, str]:
        """The bar's numbers: the total loss and the lr (each part is in the log lines)."""
        return {k: format_value(k, m.median) for k, m in self.meters.items() if k in ("loss", "lr")}

    def log_every(self, iterable, header: str):
        total = len(iterable)
        data_time, step_time = SmoothedValue(), SmoothedValue()
        bar = progress(iterable, total, header, self.bar)
        # While a bar is on the terminal it shows the numbers: the periodic lines go to train.log only.
        extra = periodic_extra(bar)
        start = end = time.perf_counter()
        try:
            for i, item in enumerate(bar):
                data_time.update(time.perf_counter() - end)
                yield item
                step_time.update(time.perf_counter() - end)
                end = time.perf_counter()
                if isinstance(bar, tqdm):
                    bar.set_postfix(self._postfix(), refresh=False)
                if (i + 1) % self.log_interval == 0 or i + 1 == total:
                    eta = datetime.timedelta(seconds=int(step_time.global_avg * (total - i - 1)))
                    parts = [f"{header} [{i + 1}/{total}]", f"eta {eta}"]
                    parts += [f"{k} {format_value(k, m.median)}" for k, m in self.meters.items()]
                    parts += [f"data {data_time.median:.3f}s", f"step {step_time.median:.3f}s"]
                    if self.device is not None and self.device.type == "cuda":
                        parts.append(f"mem {torch.cuda.max_memory_allocated(self.device) / 2**20:.0f}MB")
                    logger.info("  ".join(parts), extra=extra)
                    if self.on_log is not None:
                        self.on_log(i + 1, {k: m.latest for k, m in self.meters.items()})
        finally:
            if isinstance(bar, tqdm):
                bar.close()
        elapsed = datetime.timedelta(seconds=int(time.perf_counter() - start))
        logger.info("%s done in %s (%.3f s/it)", header, elapsed, (time.perf_counter() - start) / max(total, 1))


def periodic_extra(bar) -> dict | None:
    """``extra=`` for a periodic log line while ``bar`` runs: train.log only when the bar
    shows the same progress on the terminal."""
    return FILE_ONLY if isinstance(bar, tqdm) and sys.stdout.isatty() else None


def append_jsonl(path: str | Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
