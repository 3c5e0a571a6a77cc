"""Exponential moving average of model weights, with a warm-up on the decay."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float = 0.999, tau: float = 2000.0) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = 0

    def _decay(self) -> float:
        # small decay early on, so the average is not dominated by the random initialisation
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema = d * ema + (1 - d) * model for float tensors (one fused lerp per device and dtype,
        not one kernel per tensor: a small model on a GPU is launch-bound); others are copied."""
        self.updates += 1
        d = self._decay()
        msd = model.state_dict()
        ema, new = [], []
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                ema.append(v)
                new.append(msd[k].detach())
            else:
                v.copy_(msd[k])
        if ema:
            torch._foreach_lerp_(ema, new, 1.0 - d)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
