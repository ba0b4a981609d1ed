"""Optimizers and the learning-rate schedule (warmup + multistep / cosine / plateau)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn



def parameter_groups(cfg, model: nn.Module) -> list[dict]:
    """The optimizer's groups: weights (decayed), biases (lr x ``bias_lr_factor``) and the
    other 1-D or 0-D parameters (norm layers' weights, per-level Scales). Biases and the 1-D
    parameters are not decayed unless ``weight_decay_1d``. Each group carries ``lr_factor``,
    its lr's multiple of the schedule's (``LRScheduler``). Frozen parameters are in none."""
    weights, biases, others = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim > 1:
            weights.append(param)
        elif name.rsplit(".", 1)[-1] == "bias":
            biases.append(param)
        else:
            others.append(param)
    small_decay = cfg.weight_decay if cfg.weight_decay_1d else 0.0
    return [{"params": weights, "weight_decay": cfg.weight_decay, "lr_factor": 1.0},
            {"params": biases, "weight_decay": small_decay, "lr_factor": cfg.bias_lr_factor},
            {"params": others, "weight_decay": small_decay, "lr_factor": 1.0}]


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum (the papers' recipe) or AdamW, over ``parameter_groups``: weight decay
    on conv/linear weights only, unless ``weight_decay_1d`` (every parameter decayed, as
    torchvision's reference scripts do); biases at ``bias_lr_factor`` x the lr (the official
    FCOS / ATSS code's ``BIAS_LR_FACTOR 2``)."""
    groups = parameter_groups(cfg, model)
    for group in groups:
        group["lr"] = cfg.lr * group["lr_factor"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)  # "adamw", the only other choice of the key


@dataclass(frozen=True)
class Schedule:
    """The lr schedule of a run, from its resolved settings: ``lr_at(iteration)`` is a pure
    function of the iteration (and, for "plateau", of the factor its evaluations decided).

    warmup: linear from ``warmup_factor`` to 1 over ``warmup_iters``; then "multistep" (x
    ``gamma`` at each of ``step_iters``), "cosine" (to 0 at ``total_iters``) or "plateau".
    """
    lr: float
    kind: str
    warmup_iters: int
    warmup_factor: float
    step_iters: tuple[int, ...]
    gamma: float
    total_iters: int

    @classmethod
    def from_config(cls, cfg, iters_per_epoch: int) -> "Schedule":
        """The schedule of ``cfg``'s resolved values (``lr_steps`` in epochs, as
        ``resolve_for_run`` leaves them) at ``iters_per_epoch`` iterations per epoch."""
        iters_per_epoch = max(1, iters_per_epoch)
        if cfg.scheduler == "multistep" and any(s < 1 or float(s) != int(s) for s in cfg.lr_steps):
            raise ValueError(f"lr_steps={cfg.lr_steps!r} are fractions of the run: resolve them to epochs first "
                             f"(public.engine.train.resolve)")
        return cls(cfg.lr, cfg.scheduler, cfg.warmup_iters, cfg.warmup_factor,
                   tuple(int(s) * iters_per_epoch for s in cfg.lr_steps), cfg.lr_gamma,
                   max(1, iters_per_epoch * cfg.epochs))

    def lr_at(self, iteration: int, plateau_factor: float = 1.0) -> float:
        warmup = 1.0
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            warmup = self.warmup_factor * (1 - alpha) + alpha
        if self.kind == "multistep":
            main = self.gamma ** sum(iteration >= step for step in self.step_iters)
        elif self.kind == "cosine":
            main = 0.5 * (1 + math.cos(math.pi * min(iteration, self.total_iters) / self.total_iters))
        else:
            main = plateau_factor
        return self.lr * warmup * main


class LRScheduler:
    """Sets every param group's lr to ``Schedule.lr_at`` the current iteration (times the group's
    ``lr_factor``); call ``step``
    after each optimizer step and ``step_metric`` after each evaluation ("plateau": x
    ``lr_gamma`` after ``plateau_patience`` evaluations without a better mAP, mode max like
    ReduceLROnPlateau). Its state is plain numbers, so it loads with ``weights_only=True``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg, iters_per_epoch: int):
        self.optimizer = optimizer
        self.schedule = Schedule.from_config(cfg, iters_per_epoch)
        self.patience = cfg.plateau_patience
        self.iteration = 0
        self.plateau_factor = 1.0
        self.best_metric = -math.inf
        self.bad_evals = 0
        self._apply()

    def _apply(self) -> None:
        lr = self.schedule.lr_at(self.iteration, self.plateau_factor)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_factor", 1.0)

    def step(self) -> None:
        self.iteration += 1
        self._apply()

    def step_metric(self, value: float) -> None:
        """After an evaluation: the plateau rule's bookkeeping (used by "plateau" only)."""
        if value > self.best_metric:
            self.best_metric, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
            if self.schedule.kind == "plateau" and self.bad_evals > self.patience:
                self.plateau_factor *= self.schedule.gamma
                self.bad_evals = 0
        self._apply()

    def get_lr(self) -> float:
        """The schedule's lr now (that of the weights; biases get ``bias_lr_factor`` x it)."""
        return self.schedule.lr_at(self.iteration, self.plateau_factor)

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "plateau_factor": self.plateau_factor,
                "best_metric": self.best_metric, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = state["iteration"]
        self.plateau_factor = state["plateau_factor"]
        self.best_metric = state["best_metric"]
        self.bad_evals = state["bad_evals"]
        self._apply()
