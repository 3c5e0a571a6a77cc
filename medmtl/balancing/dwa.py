"""`dwa`: Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019).

    r_i(t-1) = L_i(t-1) / L_i(t-2)          (average training loss of the two previous epochs)
    w_i(t)   = K * exp(r_i(t-1) / T) / sum_j exp(r_j(t-1) / T)

with K the number of tasks and T = option `temperature`; w_i = 1 for the first two epochs (no two
previous epochs yet). `on_epoch_end(epoch_losses)` appends the epoch's averages and recomputes the
weights for the next epoch. A task missing from either of the last two epochs (no labels), or with a
non-positive / non-finite average, gets ratio 1. One backward pass per step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field

from medmtl.balancing.base import BALANCERS, Balancer, BalancerOptions, weighted_backward
from medmtl.config import BalancerConfig

if TYPE_CHECKING:  # torch loads when a balancer is built, not when the CLI lists the options
    from torch import Tensor
    from torch.nn import Parameter


def dwa_weights(prev: Mapping[str, float], prev2: Mapping[str, float], tasks: Sequence[str],
                temperature: float) -> dict[str, float]:
    """The paper's formula from the epoch averages L(t-1) = prev and L(t-2) = prev2."""
    ratios = []
    for t in tasks:
        a, b = float(prev.get(t, math.nan)), float(prev2.get(t, math.nan))
        ok = math.isfinite(a) and math.isfinite(b) and b > 0
        ratios.append(a / b if ok else 1.0)
    m = max(r / temperature for r in ratios)
    e = [math.exp(r / temperature - m) for r in ratios]
    s = sum(e)
    return {t: len(tasks) * x / s for t, x in zip(tasks, e, strict=True)}


class DWAOptions(BalancerOptions):
    temperature: float = Field(2.0, gt=0, description="DWA temperature T (larger: weights "
                               "closer to equal)",
                               json_schema_extra={"flag": "--dwa-temperature",
                                                  "search": {"low": 0.5, "high": 5.0, "log": True}})


@BALANCERS.register("dwa")
class DynamicWeightAverage(Balancer):
    name = "dwa"
    Options = DWAOptions

    def __init__(self, tasks: Sequence[str], cfg: BalancerConfig) -> None:
        super().__init__(tasks, cfg)
        self.temperature = float(self.opts.temperature)
        self.history: list[dict[str, float]] = []  # the last two epochs' average losses
        self._w = {t: 1.0 for t in self.tasks}

    def weights(self) -> dict[str, float]:
        return dict(self._w)

    def on_epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        self.history = (self.history + [{t: float(v) for t, v in epoch_losses.items()}])[-2:]
        self._update()

    def _update(self) -> None:
        if len(self.history) < 2:
            self._w = {t: 1.0 for t in self.tasks}
        else:
            self._w = dwa_weights(self.history[-1], self.history[-2], self.tasks, self.temperature)

    def backward(self, losses: dict[str, Tensor], shared: Sequence[Parameter],
                 last_shared: Parameter | None = None, scale: float = 1.0) -> dict[str, float]:
        present = self._present(losses)
        passes = weighted_backward({t: losses[t] for t in present}, self._w, scale)
        return self._log(passes=passes)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = [{t: float(v) for t, v in h.items()} for h in state.get("history", [])][-2:]
        self._update()
