"""`pcgrad`: projecting conflicting gradients (Yu, Kumar, Gupta, Levine, Hausman & Finn,
"Gradient Surgery for Multi-Task Learning", NeurIPS 2020).

Algorithm 1 of the paper, on the flattened gradients of the shared parameters: for each task i,
g_i^PC starts at g_i; for each other task j in random order, if g_i^PC . g_j < 0 then
g_i^PC -= (g_i^PC . g_j) / ||g_j||^2 * g_j (projection onto the normal plane of the *original* g_j).
The shared gradient is sum_i g_i^PC (the paper's sum; with no conflict it is the plain sum, i.e.
`fixed` with unit weights). The projection is written branch-free (min(dot, 0)), so no host sync.
Task-specific parameters get their own task's gradient from the per-task backwards.

The random order comes from a CPU generator seeded with the step counter, so a run (and a resumed
run) is reproducible. Cost: K backward passes (one per task, see `_grads.per_task_backward`). With
one task in the batch, or no shared parameters, it is a plain backward (1 pass).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from medmtl.balancing._grads import add_shared_grad, gram_stats, per_task_backward, trainable
from medmtl.balancing.base import BALANCERS, Balancer, weighted_backward
from medmtl.config import BalancerConfig

if TYPE_CHECKING:  # torch loads when a balancer is built, not when the CLI lists the options
    import torch
    from torch import Tensor
    from torch.nn import Parameter


def pcgrad_project(grads: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """(K, P) task gradients -> (K, P) projected gradients g_i^PC (sum them for the update)."""
    import torch

    k = grads.shape[0]
    sq = (grads * grads).sum(1).clamp_min(1e-30)
    out = grads.clone()
    for i in range(k):
        order = [j for j in torch.randperm(k, generator=generator).tolist() if j != i]
        for j in order:
            dot = out[i] @ grads[j]
            out[i] = out[i] - (dot.clamp(max=0.0) / sq[j]) * grads[j]
    return out


@BALANCERS.register("pcgrad")
class PCGrad(Balancer):
    name = "pcgrad"

    def __init__(self, tasks: Sequence[str], cfg: BalancerConfig) -> None:
        super().__init__(tasks, cfg)
        self.steps = 0
        self.backward_passes = len(self.tasks)
        self.multi_backward = True

    def backward(self, losses: dict[str, Tensor], shared: Sequence[Parameter],
                 last_shared: Parameter | None = None, scale: float = 1.0) -> dict[str, float]:
        import torch

        present = self._present(losses)
        params = trainable(shared)
        if len(present) < 2 or not params:
            passes = weighted_backward({t: losses[t] for t in present}, self.weights(), scale)
            log = self._log(passes=passes)
            log["surgery_active"] = 0.0
            return log
        grads, passes = per_task_backward(losses, present, params, scale, self.comm)
        gen = torch.Generator().manual_seed(self.steps)
        self.steps += 1
        proj = pcgrad_project(grads, gen)
        add_shared_grad(params, proj.sum(0) * scale)
        gram = grads @ grads.T
        norms, cos = gram_stats(gram)
        conflict = (gram < 0).float().sum() / max(len(present) * (len(present) - 1), 1)
        if not self.detailed_log:
            return self._log(passes=passes)
        vals = torch.cat([norms, torch.stack([cos, conflict])]).tolist()  # one host sync
        extra = {f"grad_norm/{t}": vals[i] for i, t in enumerate(present)}
        extra.update({"cos": vals[-2], "conflict": vals[-1], "surgery_active": 1.0})
        return self._log(extra, passes=passes)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
