"""Optimizers and the learning-rate schedule (warmup + multistep / cosine / plateau)."""
from __future__ import annotations

import math

import torch
from torch import nn

from public.engine.resolve import step_epochs


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum (the papers' recipe) or AdamW; weight decay on conv/linear weights
    only, not on biases, norm layers and per-level scales (1-D parameters), unless
    ``weight_decay_1d`` (every parameter decayed, as torchvision's reference scripts do)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 and not cfg.weight_decay_1d else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")


class LRScheduler:
    """Per-iteration learning rate = lr x warmup(it) x schedule.

    warmup: linear from ``warmup_factor`` to 1 over ``warmup_iters``.
    schedule: "multistep" (x ``lr_gamma`` at each epoch of ``lr_steps``, fractions of ``epochs``
    below 1), "cosine" (to 0 at
    the last iteration) or "plateau" (x ``lr_gamma`` after ``plateau_patience`` evaluations
    without a better mAP; call ``step_metric``). Its state is plain numbers, so it loads with
    ``weights_only=True``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg, iters_per_epoch: int):
        if cfg.scheduler not in ("multistep", "cosine", "plateau"):
            raise ValueError(f"scheduler must be 'multistep', 'cosine' or 'plateau', got {cfg.scheduler!r}")
        self.optimizer = optimizer
        self.cfg = cfg
        self.iters_per_epoch = max(1, iters_per_epoch)
        self.total_iters = max(1, self.iters_per_epoch * cfg.epochs)
        self.lr_steps = step_epochs(cfg.lr_steps, cfg.epochs)  # fractions of the run -> epochs
        self.iteration = 0
        self.plateau_factor = 1.0
        self.best_metric = -math.inf
        self.bad_evals = 0
        self._apply()

    def factor(self, iteration: int) -> float:
        cfg = self.cfg
        warmup = 1.0
        if iteration < cfg.warmup_iters:
            alpha = iteration / cfg.warmup_iters
            warmup = cfg.warmup_factor * (1 - alpha) + alpha
        if cfg.scheduler == "multistep":
            epoch = iteration // self.iters_per_epoch
            main = cfg.lr_gamma ** sum(epoch >= step for step in self.lr_steps)
        elif cfg.scheduler == "cosine":
            main = 0.5 * (1 + math.cos(math.pi * min(iteration, self.total_iters) / self.total_iters))
        else:
            main = self.plateau_factor
        return warmup * main

    def _apply(self) -> None:
        lr = self.cfg.lr * self.factor(self.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        self.iteration += 1
        self._apply()

    def step_metric(self, value: float) -> None:
        """After an evaluation (used by "plateau": mode max, like ReduceLROnPlateau)."""
        if value > self.best_metric:
            self.best_metric, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
            if self.cfg.scheduler == "plateau" and self.bad_evals > self.cfg.plateau_patience:
                self.plateau_factor *= self.cfg.lr_gamma
                self.bad_evals = 0
        self._apply()

    def get_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "plateau_factor": self.plateau_factor,
                "best_metric": self.best_metric, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = state["iteration"]
        self.plateau_factor = state["plateau_factor"]
        self.best_metric = state["best_metric"]
        self.bad_evals = state["bad_evals"]
        self._apply()
