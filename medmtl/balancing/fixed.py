"""`fixed`: a constant weighted sum, sum_i w_i L_i, with the weights of `cfg.weights`.

One backward pass per step. Tasks missing from `cfg.weights` get weight 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from medmtl.balancing.base import BALANCERS, Balancer, weighted_backward
from medmtl.config import BalancerConfig

if TYPE_CHECKING:  # torch loads when a balancer is built, not when the CLI lists the options
    from torch import Tensor
    from torch.nn import Parameter


@BALANCERS.register("fixed")
class FixedWeights(Balancer):
    name = "fixed"

    def __init__(self, tasks: Sequence[str], cfg: BalancerConfig) -> None:
        super().__init__(tasks, cfg)
        # weights for tasks the model does not have (e.g. a single-task run) are simply unused
        self._w = {t: float(cfg.weights.get(t, 1.0)) for t in self.tasks}

    def weights(self) -> dict[str, float]:
        return dict(self._w)

    def backward(self, losses: dict[str, Tensor], shared: Sequence[Parameter],
                 last_shared: Parameter | None = None, scale: float = 1.0) -> dict[str, float]:
        present = self._present(losses)
        passes = weighted_backward({t: losses[t] for t in present}, self._w, scale)
        return self._log(passes=passes)
