"""`uncertainty`: homoscedastic task uncertainty (Kendall, Gal & Cipolla, CVPR 2018).

Each task has a learned log-variance s_i = log sigma_i^2 (an `nn.Parameter`, initialised to 0, so
weights start at 1; with `cfg.init_weights` (--init-weights) to s_i = -log w_i) and the objective is

    total = sum_i exp(-s_i) * L_i + s_i

The paper writes 1/(2 sigma^2) L + log sigma for regression and 1/sigma^2 L + log sigma for its
classification approximation. We use one form for both tasks (the detection loss is neither a pure
regression nor a single softmax) and drop the 1/2: our total is exactly twice the regression form,
so the minimiser is the same, s_i* = log L_i (weight exp(-s_i*) = 1/L_i); it only doubles the overall
gradient scale, which keeps equal weights at 1.0 like every other balancer here. (With the
classification form the optimum moves to s* = log 2L, i.e. the same relative weighting.)

`parameters()` returns the s_i: the trainer adds them to the model optimiser (without weight decay)
after calling `to(device)`. Logged weights are exp(-s_i). One backward pass per step. With one task
in the batch only its own term (and its s_i) enters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from medmtl.balancing.base import BALANCERS, Balancer, device_of
from medmtl.config import BalancerConfig

if TYPE_CHECKING:  # torch loads when a balancer is built, not when the CLI lists the options
    import torch
    from torch import Tensor
    from torch.nn import Parameter


@BALANCERS.register("uncertainty")
class UncertaintyWeighting(Balancer):
    name = "uncertainty"
    learns_weights = True

    def __init__(self, tasks: Sequence[str], cfg: BalancerConfig) -> None:
        import torch

        super().__init__(tasks, cfg)
        self.log_vars: dict[str, Parameter] = {
            t: torch.nn.Parameter(-torch.tensor(w).log()) for t, w in zip(self.tasks, self.initial_weights(),
                                                                 strict=True)}

    def parameters(self) -> list[Parameter]:
        return [self.log_vars[t] for t in self.tasks]

    def to(self, device: torch.device | str) -> UncertaintyWeighting:
        import torch

        # move the data in place so that the Parameter objects (held by the optimiser) stay the same
        for p in self.log_vars.values():
            if p.device != torch.device(device):
                p.data = p.data.to(device)
        return self

    def weights(self) -> dict[str, float]:
        import torch

        s = torch.stack([self.log_vars[t].detach() for t in self.tasks])
        return dict(zip(self.tasks, torch.exp(-s).tolist(), strict=True))

    def backward(self, losses: dict[str, Tensor], shared: Sequence[Parameter],
                 last_shared: Parameter | None = None, scale: float = 1.0) -> dict[str, float]:
        import torch

        present = self._start(losses)
        if not present:
            return self._log(passes=0)
        total = sum((torch.exp(-self.log_vars[t]) * losses[t] + self.log_vars[t] for t in present),
                    torch.zeros((), device=device_of(losses)))
        (total * scale).backward()
        s = torch.stack([self.log_vars[t].detach() for t in self.tasks])
        if not self.detailed_log:
            return self._log(passes=1)
        vals = torch.cat([torch.exp(-s), s]).tolist()  # one host sync for the log
        k = len(self.tasks)
        out = {f"weight/{t}": vals[i] for i, t in enumerate(self.tasks)}
        out.update({f"log_var/{t}": vals[k + i] for i, t in enumerate(self.tasks)})
        out["backward_passes"] = 1.0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"log_vars": {t: p.detach().cpu().clone() for t, p in self.log_vars.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        import torch

        for t, v in state["log_vars"].items():
            if t in self.log_vars:
                p = self.log_vars[t]
                p.data = torch.as_tensor(v, dtype=torch.float32).to(p.device).reshape(())
