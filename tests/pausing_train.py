"""``python tests/pausing_train.py POINT MARKER [train.py arguments]``: run train.py's main and
hold the process at POINT, after writing the file MARKER, for a test to SIGKILL it there as a
crash or ``kill -9`` would. The points are reached by wrapping the engine's own functions from
outside, so the production code carries no hook:

- ``iter:N``: after the optimizer step of iteration N (the scheduler's step);
- ``eval:E``: after the first batch of the evaluation after epoch E;
- ``save:NAME:E``: inside the atomic write of checkpoint NAME of epoch E, with the temporary
  file written and not yet renamed;
- ``kill:R:N``: the process of rank R (torchrun's RANK) SIGKILLs itself after the optimizer
  step of iteration N, once: MARKER is written first, and a process that finds it goes on (so
  the run torchrun restarts is not killed again).
"""
import os
import signal
import sys
import time
from pathlib import Path


def hold(marker: str, point: str) -> None:
    Path(marker).write_text(point)
    while True:
        time.sleep(1)


def install(point: str, marker: str) -> None:
    import public.engine.runs.checkpoint as checkpoint
    import public.engine.train.loop as loop
    from public.engine.train.optim import LRScheduler

    kind, _, where = point.partition(":")
    if kind == "iter":
        step = LRScheduler.step

        def held_step(self):
            step(self)
            if self.iteration == int(where):
                hold(marker, point)
        LRScheduler.step = held_step
    elif kind == "eval":
        evaluate_epoch = loop.EpochEvaluation.__call__

        def held_evaluation(self, epoch, losses):
            if epoch == int(where):
                self.val_loader = _hold_after_first(self.val_loader, marker, point)
            return evaluate_epoch(self, epoch, losses)
        loop.EpochEvaluation.__call__ = held_evaluation
    elif kind == "kill":
        rank, _, iteration = where.partition(":")
        step = LRScheduler.step

        def killing_step(self):
            step(self)
            if (self.iteration == int(iteration) and os.environ.get("RANK", "0") == rank
                    and not Path(marker).exists()):
                Path(marker).write_text(point)
                os.kill(os.getpid(), signal.SIGKILL)
        LRScheduler.step = killing_step
    elif kind == "save":
        name, _, epoch = where.partition(":")
        save, replace, saving = checkpoint.save_checkpoint, os.replace, {}

        def held_save(state, path):
            saving.update(name=Path(path).name, epoch=str(state.get("epoch")))
            save(state, path)

        def held_replace(src, dst):
            if saving.get("name") == name and saving.get("epoch") == epoch and Path(dst).name == name:
                hold(marker, point)
            replace(src, dst)
        checkpoint.save_checkpoint = loop.save_checkpoint = held_save
        os.replace = held_replace
    else:
        raise ValueError(f"unknown pause point {point!r}")


class _hold_after_first:
    def __init__(self, loader, marker: str, point: str):
        self.loader, self.marker, self.point = loader, marker, point

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for i, item in enumerate(self.loader):
            yield item
            if i == 0:
                hold(self.marker, self.point)


if __name__ == "__main__":
    point, marker, *args = sys.argv[1:]
    kind, _, where = point.partition(":")
    if kind == "kill" and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0" \
            and os.environ.get("RANK") == where.partition(":")[0]:
        time.sleep(3)
    install(point, marker)
    import train
    sys.exit(train.main(args))
