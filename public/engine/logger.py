"""Logging: console + work_dir/train.log on the main process, and a metric logger that
yields batches and reports losses, lr, data/step time, ETA and peak memory, so that the
training loop body stays clean."""
from __future__ import annotations

import datetime
import json
import logging
import sys
import time
import warnings
from collections import defaultdict, deque
from pathlib import Path

import torch

logger = logging.getLogger("densedet")


def setup_logging(work_dir: str | None, main_process: bool) -> logging.Logger:
    """Console and (main process only) ``work_dir/train.log``; other ranks log warnings only."""
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if work_dir and main_process:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(work_dir) / "train.log")
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    warnings.showwarning = _log_warning  # Python warnings (e.g. the dataset's repairs) reach train.log too
    return logger


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
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)


class MetricLogger:
    """``for batch in metric_logger.log_every(loader, header): ...; metric_logger.update(loss=...)``."""

    def __init__(self, log_interval: int = 20, device: torch.device | None = None):
        self.meters: dict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.log_interval = max(1, log_interval)
        self.device = device
        self.tty = sys.stdout.isatty()

    def update(self, **values: float) -> None:
        for key, value in values.items():
            self.meters[key].update(float(value))

    def averages(self) -> dict[str, float]:
        return {key: meter.global_avg for key, meter in self.meters.items()}

    def log_every(self, iterable, header: str):
        total = len(iterable)
        data_time, step_time = SmoothedValue(), SmoothedValue()
        start = end = time.perf_counter()
        for i, item in enumerate(iterable):
            data_time.update(time.perf_counter() - end)
            yield item
            step_time.update(time.perf_counter() - end)
            end = time.perf_counter()
            if (i + 1) % self.log_interval == 0 or i + 1 == total:
                eta = datetime.timedelta(seconds=int(step_time.global_avg * (total - i - 1)))
                parts = [f"{header} [{i + 1}/{total}]", f"eta {eta}"]
                parts += [f"{k} {m.median:.4f}" for k, m in self.meters.items()]
                parts += [f"data {data_time.median:.3f}s", f"step {step_time.median:.3f}s"]
                if self.device is not None and self.device.type == "cuda":
                    parts.append(f"mem {torch.cuda.max_memory_allocated(self.device) / 2**20:.0f}MB")
                if self.tty:
                    print("\r\033[K", end="", flush=True)  # clear the progress line
                logger.info("  ".join(parts))
            elif self.tty:  # a live progress line between log lines when attached to a terminal
                print(f"\r{header} [{i + 1}/{total}] {step_time.median:.3f}s/it", end="", file=sys.stdout, flush=True)
        elapsed = datetime.timedelta(seconds=int(time.perf_counter() - start))
        logger.info("%s done in %s (%.3f s/it)", header, elapsed, (time.perf_counter() - start) / max(total, 1))


def append_jsonl(path: str | Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
