"""`gradnorm`: GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018).

On the weight W of the last shared layer (`last_shared`), per step with every task present:

    G_i   = w_i * ||grad_W L_i||                 (g_i = torch.autograd.grad(L_i, W), once per task)
    L~_i  = L_i / L_i(0),  r_i = L~_i / mean_j L~_j
    L_grad = sum_i | G_i - mean_j(G_j) * r_i^alpha |      (the target is a constant: detached)

Because G_i = w_i * ||g_i|| is linear in w_i, dL_grad/dw_i = sign(G_i - target_i) * ||g_i|| is
written analytically: no double backward. The task weights w (initialised to 1, as in the paper,
or to `cfg.init_weights` (--init-weights) scaled to sum to K; `cfg.weights` is not used) are updated by their own Adam (option `lr`), clamped to >= 1e-3 (Adam
could otherwise push a weight through zero into gradient *ascent*) and renormalised to sum to K.
The model gradient is one backward of sum_i w_i(t) L_i with the weights *before* the update
(Algorithm 1 of the paper). Cost: K backwards to W (each traverses the graph from L_i down to W)
plus one full backward.

Fast path, when the trainer hands a `TaskSplit` (architectures whose shared part is the trunk:
`shared`, `split<k>`): each task's branch is back-propagated once, to the trunk's output features z
and to the task's own parameters (whose gradients, times w_i, are written directly);
grad_W L_i = (dz/dW)^T dL_i/dz costs only the few layers between W and z; then the trunk gets one
backward of sum_i w_i dL_i/dz. Same gradients as the plain path (tested), at about the cost of
`fixed` instead of `fixed` plus a second traversal of the heads. The model gradient then does not
come from one `.backward()`, so under DDP this balancer is `multi_backward`.

L_i(0) is the mean of the losses of the first `init_steps` = 3 steps with every task present (one
step's loss is noisy with small, augmented batches); during those steps the running mean is used.

Falls back to fixed weights (the current w, not updated; `gradnorm_active: 0` in the log) when
`last_shared` is None (e.g. the `dual` architecture), when a task does not reach W, or when the
batch lacks a task (partial labels: that loss is back-propagated with its current weight).
Everything stays on the loss device; the log costs one host sync. Under gradient accumulation the
weights are updated at every micro-batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field

from medmtl.balancing._grads import gram_stats
from medmtl.balancing.base import (
    BALANCERS,
    Balancer,
    BalancerOptions,
    TaskSplit,
    TinyAdam,
    weighted_backward,
)
from medmtl.config import BalancerConfig

if TYPE_CHECKING:  # torch loads when a balancer is built, not when the CLI lists the options
    import torch
    from torch import Tensor
    from torch.nn import Parameter


class GradNormOptions(BalancerOptions):
    alpha: float = Field(1.5, ge=0, description="GradNorm asymmetry alpha (0: equal gradient "
                         "norms; larger pulls harder towards slow tasks)",
                         json_schema_extra={"flag": "--alpha", "search": {"low": 0.0, "high": 3.0}})
    lr: float = Field(0.025, gt=0, description="Learning rate of GradNorm's task weights")


@BALANCERS.register("gradnorm")
class GradNorm(Balancer):
    name = "gradnorm"
    Options = GradNormOptions
    init_steps = 3
    learns_weights = True
    min_weight = 1e-3

    def __init__(self, tasks: Sequence[str], cfg: BalancerConfig) -> None:
        import torch

        super().__init__(tasks, cfg)
        k = len(self.tasks)
        self.alpha = float(self.opts.alpha)
        self.w = torch.tensor(self.initial_weights(normalise=True))
        self.opt = TinyAdam(k, lr=self.opts.lr)
        self.l0_sum = torch.zeros(k)
        self.l0_count = torch.zeros(())
        self.backward_passes = k + 1
        self.uses_split = True
        # the fast path writes task-parameter gradients directly: DDP's reducer must stay out
        self.multi_backward = True

    def to(self, device: torch.device | str) -> GradNorm:
        self.w, self.l0_sum, self.l0_count = (x.to(device) for x in (self.w, self.l0_sum, self.l0_count))
        self.opt.to(device)
        return self

    def weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.w.tolist(), strict=True))

    def backward(self, losses: dict[str, Tensor], shared: Sequence[Parameter],
                 last_shared: Parameter | None = None, scale: float = 1.0,
                 split: TaskSplit | None = None) -> dict[str, float]:
        import torch

        present = self._start(losses)
        if not present:
            return self._log(passes=0)
        k = len(self.tasks)
        w_used = self.w.clone()
        used = {t: w_used[i] for i, t in enumerate(self.tasks)}
        grads: list[Tensor | None] = []
        branch: dict[str, tuple[list[Tensor | None], list[tuple[Parameter, Tensor]]]] = {}
        z = [t for t in split.boundary if t.requires_grad] if split is not None else []
        if (k >= 2 and len(present) == k and last_shared is not None and last_shared.requires_grad
                and all(losses[t].requires_grad for t in self.tasks)):
            if split is not None and z:
                grads, branch = self._branch_grads(losses, last_shared, scale, z,
                                                   split.task_params)
            else:
                grads = [torch.autograd.grad(losses[t] * scale, last_shared, retain_graph=True,
                                             allow_unused=True)[0] for t in self.tasks]
        if not grads or any(g is None for g in grads):
            passes = weighted_backward({t: losses[t] for t in present}, used, scale)
            log = self._log(passes=passes)
            log["gradnorm_active"] = 0.0
            return log

        flat = torch.stack([g.detach().reshape(-1).float() for g in grads if g is not None]) / scale
        flat = self.comm.mean(flat)  # global gradients and losses under data parallelism
        norms, cos = gram_stats(flat @ flat.T)
        lt = self.comm.mean(torch.stack([losses[t].detach().float() for t in self.tasks]))
        with torch.no_grad():
            finite = torch.isfinite(lt).all() & torch.isfinite(norms).all()
            take = finite & (self.l0_count < self.init_steps)
            self.l0_sum = self.l0_sum + torch.where(take, lt, torch.zeros_like(lt))
            self.l0_count = self.l0_count + take.float()
            l0 = self.l0_sum / self.l0_count.clamp_min(1.0)
            ratio = lt / l0.clamp_min(1e-12)
            r = ratio / ratio.mean().clamp_min(1e-12)
            big_g = w_used * norms
            target = big_g.mean() * r.pow(self.alpha)
            l_grad = (big_g - target).abs().sum()
            grad_w = torch.sign(big_g - target) * norms
            ok = finite & torch.isfinite(grad_w).all() & (self.l0_count > 0)
            self.opt.step(self.w, grad_w, ok)
            self.w.clamp_(min=self.min_weight)
            self.w.mul_(k / self.w.sum())
        if branch:
            passes = k + self._backward_branches(branch, w_used, z)
        else:
            passes = k + weighted_backward(losses, used, scale)
        if not self.detailed_log:
            return self._log(passes=passes)
        vals = torch.cat([self.w, norms, r, torch.stack([l_grad, cos])]).tolist()  # one sync
        out = {f"weight/{t}": vals[i] for i, t in enumerate(self.tasks)}
        out.update({f"grad_norm/{t}": vals[k + i] for i, t in enumerate(self.tasks)})
        out.update({f"loss_ratio/{t}": vals[2 * k + i] for i, t in enumerate(self.tasks)})
        out.update({"gradnorm_loss": vals[3 * k], "cos_last_shared": vals[3 * k + 1],
                    "gradnorm_active": 1.0, "backward_passes": float(passes)})
        return out

    def _branch_grads(self, losses: dict[str, Tensor], last_shared: Parameter, scale: float,
                      z: list[Tensor], task_params: Mapping[str, Sequence[Parameter]]
                      ) -> tuple[list[Tensor | None], dict[str, Any]]:
        """Per task: d(scale L_i)/dz for the boundary tensors z and d(scale L_i)/dtheta_i for its own
        parameters (one traversal of its branch), and grad_W(scale L_i) from dL_i/dz."""
        import torch

        grads: list[Tensor | None] = []
        branch: dict[str, Any] = {}
        for t in self.tasks:
            own = [p for p in task_params.get(t, []) if p.requires_grad]
            g = torch.autograd.grad(losses[t] * scale, [*z, *own], retain_graph=True,
                                    allow_unused=True)
            gz, gp = list(g[:len(z)]), [(p, gi) for p, gi in zip(own, g[len(z):], strict=True)
                                        if gi is not None]
            used_z = [(zi, gi) for zi, gi in zip(z, gz, strict=True) if gi is not None]
            gw = None
            if used_z:
                gw = torch.autograd.grad([zi for zi, _ in used_z], last_shared,
                                         grad_outputs=[gi for _, gi in used_z],
                                         retain_graph=True, allow_unused=True)[0]
            grads.append(gw)
            branch[t] = (gz, gp)
        return grads, branch

    @staticmethod
    def _backward_branches(branch: dict[str, Any], w_used: Tensor, z: list[Tensor]) -> int:
        """.grad += w_i * grad of each task's own parameters; one trunk backward of sum w_i dL_i/dz."""
        import torch

        total: list[Tensor | None] = [None] * len(z)
        with torch.no_grad():
            for i, (gz, gp) in enumerate(branch.values()):
                w = w_used[i]
                for p, g in gp:
                    g = (w * g).to(p.dtype)
                    if p.grad is None:
                        p.grad = g
                    else:
                        p.grad.add_(g)
                for j, g in enumerate(gz):
                    if g is not None:
                        wg = (w * g).to(g.dtype)
                        total[j] = wg if total[j] is None else total[j] + wg
        pairs = [(zi, g) for zi, g in zip(z, total, strict=True) if g is not None]
        if not pairs:
            return 0
        torch.autograd.backward([zi for zi, _ in pairs], grad_tensors=[g for _, g in pairs])
        return 1

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w.detach().cpu().clone(), "l0_sum": self.l0_sum.detach().cpu().clone(),
                "l0_count": self.l0_count.detach().cpu().clone(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        import torch

        dev = self.w.device
        self.w = state["w"].to(dev, torch.float32).clone()
        self.l0_sum = state["l0_sum"].to(dev, torch.float32).clone()
        self.l0_count = state["l0_count"].to(dev, torch.float32).clone()
        self.opt.load_state_dict(state["opt"])
