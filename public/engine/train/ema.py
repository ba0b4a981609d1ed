"""An exponential moving average of the weights (``ema`` key), as YOLOX, Ultralytics and
mmdetection's ``ExpMomentumEMAHook`` keep one.

After every optimizer step, every floating-point entry of the state dict (parameters and
BatchNorm statistics) becomes ``d * ema + (1 - d) * weights`` with a decay that warms up,
``d = decay * (1 - exp(-updates / tau))``, so the first updates follow the weights and the
average covers about the last ``1 / (1 - d)`` steps later on. Integer buffers (BatchNorm's
batch count) are copied. The averaged model is what the run evaluates and saves as its model;
the raw weights go on training (and are kept in ``latest.pth`` for resume).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float, tau: int, updates: int = 0):
        if not 0 < decay < 1:
            raise ValueError(f"ema={decay!r} must be between 0 and 1")
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    def decay_at(self, updates: int) -> float:
        return self.decay * (1 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards ``model``'s current weights (the unwrapped model)."""
        self.updates += 1
        weight = 1 - self.decay_at(self.updates)
        averaged, current, copied, source = [], [], [], []
        model_state = model.state_dict()
        for name, value in self.module.state_dict().items():
            (averaged if value.is_floating_point() else copied).append(value)
            (current if value.is_floating_point() else source).append(model_state[name].detach())
        if averaged:
            torch._foreach_lerp_(averaged, current, weight)
        for target, value in zip(copied, source):
            target.copy_(value)

    def state_dict(self) -> dict:
        """The averaging state besides the weights (saved as the checkpoint's model)."""
        return {"updates": self.updates, "decay": self.decay, "tau": self.tau}

    def load(self, weights: dict, state: dict) -> None:
        self.module.load_state_dict(weights)
        self.updates = int(state["updates"])
