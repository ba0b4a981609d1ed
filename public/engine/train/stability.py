"""A run that cannot go bad silently: loss spikes as they happen, a collapse at evaluation.

On small datasets trained from scratch a run can spike (one step's loss many times the
usual) and then lose its classifier: every score falls under ``score_thresh`` and the later
evaluations find nothing, while the run prints its numbers and ends normally. Two watchers
say so in the log, with what to change:

- ``SpikeGuard`` looks at every step's loss (the mean over processes, so every process
  decides alike) before the backward pass: a non-finite loss, or one over ``spike_factor`` x
  the median of the last ``WINDOW`` steps, is a spike; ``on_spike`` says what the step then
  does ("skip": no update from that batch; "warn": update anyway; "stop"). A loss that climbs
  over many steps follows its own median and is no spike, so at each epoch's end
  ``SpikeGuard.epoch_ended`` also compares each loss part's epoch mean with its lowest earlier
  epoch mean: over ``RISE_FACTOR`` x is a warning (the classifier going bad before an
  evaluation shows it).
- ``CollapseWatch`` keeps the evaluations: an evaluation with no detection after earlier
  ones had some, or with mAP under half the best, is reported when it happens, and the
  end-of-run line says "best mAP X at epoch E, last Y at epoch L" with the same advice.

Both keep their state in ``latest.pth``, so a resumed run decides as the uninterrupted one.
"""
from __future__ import annotations

import logging
import math
from collections import deque

import torch

logger = logging.getLogger("densedet")

WINDOW = 100          # steps in the running median
MIN_STEPS = 20        # steps seen before a finite loss can count as a spike
MAX_SKIPPED_IN_A_ROW = 10
COLLAPSE_RATIO = 0.5  # an evaluation under this fraction of the best mAP is reported
RISE_FACTOR = 2.0     # an epoch's mean loss part over this multiple of its lowest earlier epoch mean is reported

ADVICE = ("lower lr (e.g. half), keep clip_grad_norm on (35), raise warmup_iters, or set ema=0.999; "
          "on a small dataset, add augmentation")


class SpikeError(FloatingPointError):
    """The run stopped on a loss spike (``on_spike``), with the line saying what to change."""


class SpikeGuard:
    """Decides for every step whether its loss is a spike, and what the step does.

    ``check(values, iteration, epoch, image_ids)`` takes the step's loss parts (floats, the
    mean over processes) and returns True when the step is to update the weights. Spikes are
    logged; the losses of skipped steps stay out of the median.
    """

    def __init__(self, action: str = "skip", factor: float = 10.0, recent: list[float] | None = None,
                 spikes: int = 0):
        if action not in ("skip", "warn", "stop"):
            raise ValueError(f"on_spike={action!r} must be 'skip', 'warn' or 'stop'")
        self.action, self.factor = action, factor
        self.recent: deque[float] = deque(recent or [], maxlen=WINDOW)
        self.spikes = spikes            # in the whole run
        self.in_a_row = 0
        self.lowest: dict[str, list] = {}   # loss part -> [lowest epoch mean, its epoch]
        self.rises = 0                  # epochs reported by epoch_ended

    def median(self) -> float:
        ordered = sorted(self.recent)
        n = len(ordered)
        return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2 if n else math.nan

    def is_spike(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        return len(self.recent) >= MIN_STEPS and loss > self.factor * self.median()

    def check(self, values: dict[str, float], iteration: int, epoch: int, image_ids=None) -> bool:
        loss = sum(values.values())
        if not self.is_spike(loss):
            self.recent.append(loss)
            self.in_a_row = 0
            return True
        self.spikes += 1
        self.in_a_row += 1
        finite = math.isfinite(loss)
        parts = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
        what = (f"loss {loss:.4g} = {loss / self.median():.1f} x the median of the last {len(self.recent)} steps "
                f"({self.median():.4g})" if finite else f"non-finite loss {loss}")
        ids = f"; image ids {list(image_ids)}" if image_ids is not None else ""
        if self.action == "stop" or (self.action == "warn" and not finite):
            raise SpikeError(f"loss spike at iteration {iteration} (epoch {epoch}): {what} ({parts}){ids}. "
                             f"Stopped (on_spike={self.action}): {ADVICE}; resume=auto continues from the last "
                             f"epoch, on_spike=skip skips such steps.")
        if self.action == "skip" and self.in_a_row > MAX_SKIPPED_IN_A_ROW:
            raise SpikeError(f"{self.in_a_row} loss spikes in a row up to iteration {iteration} (epoch {epoch}): "
                             f"{what} ({parts}): the run has diverged. Stopped: {ADVICE}; resume=auto continues "
                             f"from the last epoch.")
        done = "step skipped (on_spike=skip)" if self.action == "skip" else "weights updated (on_spike=warn)"
        logger.warning("loss spike at iteration %d (epoch %d): %s (%s)%s; %s. If spikes repeat: %s",
                       iteration, epoch, what, parts, ids, done, ADVICE)
        if self.action == "warn":
            self.recent.append(loss)
        return self.action == "warn"

    def epoch_ended(self, epoch: int, losses: dict[str, float]) -> str | None:
        """Record the epoch's (1-based) mean loss parts; the warning when one of them is over
        ``RISE_FACTOR`` x its lowest earlier epoch mean, or None."""
        risen = []
        for name, value in losses.items():
            if not name.startswith("loss_") or not math.isfinite(value):
                continue
            lowest = self.lowest.get(name)
            if lowest is not None and lowest[0] > 0 and value > RISE_FACTOR * lowest[0]:
                risen.append(f"{name} {value:.4g} = {value / lowest[0]:.1f} x its lowest ({lowest[0]:.4g} at "
                             f"epoch {lowest[1]})")
            if lowest is None or value < lowest[0]:
                self.lowest[name] = [value, epoch]
        if not risen:
            return None
        self.rises += 1
        return (f"the training loss is climbing: {', '.join(risen)}; a classifier whose loss climbs like this "
                f"often ends with no detections. {ADVICE}")

    def state_dict(self) -> dict:
        return {"recent": list(self.recent), "spikes": self.spikes, "lowest": self.lowest, "rises": self.rises}

    def load_state_dict(self, state: dict) -> None:
        self.recent = deque(state.get("recent", []), maxlen=WINDOW)
        self.spikes = int(state.get("spikes", 0))
        self.lowest = {k: list(v) for k, v in (state.get("lowest") or {}).items()}
        self.rises = int(state.get("rises", 0))


def mean_over_processes(values: list[float]) -> list[float]:
    """The mean of each value over the processes of a distributed run (itself in one process)."""
    from public.engine import distributed as dist_utils

    if not dist_utils.is_distributed():
        return values
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    return dist_utils.all_reduce_mean(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


class CollapseWatch:
    """The run's evaluations, and what they say about its health."""

    def __init__(self, history: list | None = None):
        self.history: list[tuple[int, float, int]] = [tuple(h) for h in history or []]  # (epoch, mAP, detections)

    def evaluated(self, epoch: int, mean_ap: float, detections: int, score_thresh: float) -> str | None:
        """Record an evaluation; the warning it deserves, or None."""
        earlier = [h for h in self.history if h[0] < epoch]
        self.history = earlier + [(epoch, mean_ap, detections)]
        if not earlier:
            return None
        best = max(earlier, key=lambda h: h[1])
        with_detections = [h for h in earlier if h[2] > 0]
        if detections == 0 and with_detections:
            last = with_detections[-1]
            return (f"the classifier collapsed: no detection above score_thresh={score_thresh:g} at epoch {epoch} "
                    f"({last[2]} at epoch {last[0]}); best.pth keeps epoch {best[0]} (mAP {best[1]:.4f}). "
                    f"Look for loss spikes above; {ADVICE}")
        if best[1] > 0 and mean_ap < COLLAPSE_RATIO * best[1]:
            return (f"mAP {mean_ap:.4f} at epoch {epoch} is under half the best ({best[1]:.4f} at epoch {best[0]}); "
                    f"best.pth keeps epoch {best[0]}. If it does not recover: {ADVICE}")
        return None

    def summary(self, best_map: float | None = None, best_epoch: int | None = None) -> tuple[str, bool]:
        """The end-of-run line (best and last evaluation), and whether the run fell back after
        its best epoch (the last under 0.8 x the best, or no detections left). ``best_map`` and
        ``best_epoch``: the run's own record (best.pth's), when given; else the history's best."""
        if not self.history and best_map is None:
            return "no evaluation", False
        if best_map is None:
            best_epoch, best_map, _ = max(self.history, key=lambda h: h[1])
        best_detections = next((h[2] for h in self.history if h[0] == best_epoch), 1)
        line = f"best mAP {best_map:.4f} at epoch {best_epoch}"
        last = self.history[-1] if self.history else None
        if last is None or last[0] == best_epoch:
            return line + " (the last evaluation)", False
        line += f", last {last[1]:.4f} at epoch {last[0]}"
        if last[2] == 0 and best_detections > 0:
            return line + f": the classifier collapsed (no detections at the end); {ADVICE}", True
        if best_map > 0 and last[1] < 0.8 * best_map:
            return line + f": the run fell back after its best epoch (best.pth keeps it); {ADVICE}", True
        return line, False

    def state_dict(self) -> list:
        return [list(h) for h in self.history]
