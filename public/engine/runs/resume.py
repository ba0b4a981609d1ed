"""Starting a run: its work_dir, and the checkpoint it resumes from.

``latest.pth`` is written at the end of every epoch, before that epoch's evaluation, with
everything the next epoch depends on (model, optimizer, scheduler, scaler, best mAP, every
process's random states). A run killed at any moment and started again with ``resume=auto``
continues from it: if the killed run had not finished that epoch's evaluation (or had, but
the checkpoint cannot tell), the evaluation runs again first, from the same state, with the
same result; rows of ``metrics.jsonl`` from that epoch on are replaced, not added.
"""
from __future__ import annotations

import logging
from pathlib import Path

from public.engine import distributed as dist_utils
from public.engine.runs import lock as work_lock
from public.engine.runs.checkpoint import is_densedet, load_checkpoint, load_model_weights
from public.engine.runs.identity import check_checkpoint, check_work_dir
from public.engine.runs.state import remove_stale_tmp, rng_state, set_rng_state

logger = logging.getLogger("densedet")


def resume_path(cfg) -> str | None:
    """The checkpoint to resume from: ``resume`` itself, or for "auto" ``work_dir/latest.pth``
    if it exists (else None: a fresh start). A named file that does not exist is an error."""
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        latest = Path(cfg.work_dir) / "latest.pth"
        return str(latest) if latest.is_file() else None
    if not Path(cfg.resume).is_file():
        raise FileNotFoundError(f"resume={cfg.resume}: no such file (resume=auto continues work_dir/latest.pth "
                                f"if there is one)")
    return cfg.resume


def prepare_work_dir(cfg) -> list[str]:
    """Before anything is written: take the work_dir's lock (``lock``: a second run there stops
    naming the first; released by ``release_work_dir``), refuse a work_dir holding another run
    (``check_work_dir``; with ``overwrite=True`` its run files are deleted), and delete the
    ``*.tmp`` files a kill during a checkpoint write left (the checkpoint itself is intact).
    Returns what to log."""
    work_dir, notes = Path(cfg.work_dir), []
    taken = None
    if dist_utils.is_main_process():
        try:
            taken = ("ok", work_lock.acquire(work_dir))
        except work_lock.WorkDirInUse as error:
            taken = ("in use", str(error))
    taken = dist_utils.broadcast_object(taken)   # every process stops, or none
    if taken[0] == "in use":
        raise work_lock.WorkDirInUse(taken[1])
    if taken[1]:
        notes.append(taken[1])
    if dist_utils.is_main_process():
        deleted = check_work_dir(work_dir, cfg)
        stale = remove_stale_tmp(work_dir)
        if deleted:
            notes.append(f"overwrite=True: deleted {', '.join(deleted)} of the previous run in {work_dir}")
        if stale:
            notes.append(f"deleted {', '.join(stale)} left in {work_dir} by an interrupted checkpoint write")
    elif not cfg.overwrite:  # the same refusal on every process (read only), so none waits for the others
        check_work_dir(work_dir, cfg)
    dist_utils.barrier()
    return notes


def release_work_dir(cfg) -> None:
    """Release the work_dir's lock ``prepare_work_dir`` took (if this process holds it)."""
    work_lock.release(cfg.work_dir)


def load_resume_checkpoint(path: str, cfg, class_names: list[str], category_ids: list[int]) -> dict:
    """Read a ``latest.pth`` and check that it belongs to this run (model, decisive settings,
    classes; see ``identity``). One that cannot be read (truncated, say, by a full disk when
    it was copied) is refused with what the run can do instead."""
    try:
        checkpoint = load_checkpoint(path)
    except RuntimeError as error:
        best = Path(path).with_name("best.pth")
        instead = (f"continue from the best weights with init_from={best} (the optimizer and schedule restart) "
                   if best.is_file() else "")
        raise RuntimeError(f"{error}; it cannot be resumed: {instead}or start afresh with overwrite=True "
                           f"(deletes the run's files)") from error
    if not is_densedet(checkpoint) or "optimizer" not in checkpoint:
        raise ValueError(f"resume={path} is not a densedet latest.pth (use init_from= to start from its weights)")
    check_checkpoint(checkpoint, cfg, path, class_names, category_ids, what="resume from")
    return checkpoint


def latest_state(model, optimizer, scheduler, scaler, epoch: int, best_map: float, eval_pending: bool,
                 losses: dict, best_epoch: int | None = None, ema=None, guard=None, watch=None) -> dict:
    """What ``latest.pth`` holds beyond the run's metadata, after ``epoch`` (1-based) epochs.
    "model" is the model users get: with ``ema`` (ModelEMA) the averaged weights, the raw ones
    then in "train_model" for resume. ``guard`` and ``watch``: the spike and evaluation
    history. Gathers the random states of every process: call it on every process."""
    states = dist_utils.all_gather_objects(rng_state())   # one per rank
    out = {"model": model.state_dict(), "epoch": epoch, "best_map": best_map, "best_epoch": best_epoch,
           "optimizer": optimizer.state_dict(),
           "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": states,
           "eval_pending": eval_pending, "epoch_losses": dict(losses)}
    if ema is not None:
        out.update({"model": ema.module.state_dict(), "train_model": out["model"], "ema": ema.state_dict()})
    if guard is not None:
        out["spikes"] = guard.state_dict()
    if watch is not None:
        out["evaluations"] = watch.state_dict()
    return out


def restore(checkpoint: dict, path: str, model, optimizer, scheduler, scaler) -> tuple[int, float, dict | None]:
    """Load a ``latest.pth`` into the run; returns (epochs done, best mAP, the losses of the
    last epoch if its evaluation is to be run again, else None). Random states are restored
    separately (``restore_rng``), just before training continues."""
    load_model_weights(model, checkpoint.get("train_model", checkpoint["model"]), path)
    load_optimizer_state(optimizer, checkpoint["optimizer"], path)
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    epoch, best_map = int(checkpoint["epoch"]), float(checkpoint["best_map"])
    pending = checkpoint.get("epoch_losses", {}) if checkpoint.get("eval_pending") else None
    logger.info("resumed from %s at epoch %d (best mAP %.4f)%s", path, epoch + 1, best_map,
                f"; evaluating epoch {epoch} first" if pending is not None else "")
    return epoch, best_map, pending


def load_optimizer_state(optimizer, saved: dict, path: str) -> None:
    """``optimizer.load_state_dict(saved)``, after checking that ``saved`` has this run's parameter
    groups (weights, biases, other 1-D: ``parameter_groups``): another layout is an error naming the
    file and what to do instead."""
    saved_sizes = [len(group["params"]) for group in saved["param_groups"]]
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    if saved_sizes != sizes:
        raise ValueError(f"{path}: its optimizer state has {len(saved_sizes)} parameter groups of {saved_sizes} "
                         f"parameters, this run's optimizer {len(sizes)} of {sizes}: it was written by another version "
                         f"or model; start from its weights with init_from={path} instead of resuming")
    optimizer.load_state_dict(saved)


def restore_ema(checkpoint: dict, ema) -> None:
    """The averaged weights and their update count from a ``latest.pth`` (``ema``: ModelEMA,
    built from the restored training weights); one written without EMA keeps that start."""
    if "ema" in checkpoint:
        ema.load(checkpoint["model"], checkpoint["ema"])
    else:
        logger.warning("warning: %s was written without ema: the average starts from its weights now",
                       "the checkpoint")


def best_epoch_of(checkpoint: dict, work_dir) -> int | None:
    """The epoch (1-based) of the best mAP a ``latest.pth`` records; a checkpoint written before
    it held one ("best_epoch" absent): the epoch of ``work_dir/best.pth`` if that file holds the
    same best mAP, else None (unknown)."""
    if "best_epoch" in checkpoint:
        return None if checkpoint["best_epoch"] is None else int(checkpoint["best_epoch"])
    best = Path(work_dir) / "best.pth"
    if not best.is_file():
        return None
    try:
        stored = load_checkpoint(best)
    except Exception:  # an unreadable best.pth: the epoch is unknown, training goes on
        return None
    if stored.get("best_map") is not None and float(stored["best_map"]) == float(checkpoint["best_map"]):
        return int(stored["epoch"])
    return None


def restore_rng(checkpoint: dict) -> None:
    """This process's random states from the checkpoint, if it holds one per process."""
    states = checkpoint.get("rng") or []
    rank, world = dist_utils.get_rank(), dist_utils.get_world_size()
    if len(states) == world:
        set_rng_state(states[rank])
    elif not states:
        logger.warning("warning: the checkpoint holds no random states (written by an older version): continuing "
                       "with fresh ones (augmentation does not depend on them)")
    else:
        logger.warning("warning: the checkpoint holds random states for %d processes and this run has %d: "
                       "continuing with fresh ones (augmentation does not depend on them; anything else "
                       "random may differ from an uninterrupted run)", len(states), world)
