"""`famo`: Fast Adaptive Multitask Optimization (Liu, Liang, Chen & Liu, NeurIPS 2023).

Task logits xi (init 0; with `cfg.init_weights` (--init-weights) xi_i = log w_i, so that the
logged weights K z_i start at the given weights scaled to sum to K), z = softmax(xi). The model update follows the gradient of
sum_i z_i log(L_i - L_i*), normalised by c = 1 / sum_i z_i / (L_i - L_i*), i.e. the task gradients
enter with weights c z_i / (L_i - L_i*), which sum to 1, so every task's log-loss decreases at the
same rate when z is uniform. We take L_i* = 0 (all losses here are >= 0) and add 1e-8 inside logs
and divisions. As every balancer here keeps the scale of `fixed` with unit weights, these weights are
multiplied by K (tasks in the batch): one backward of sum_i K c z_i / L_i * L_i (weights detached).
With one task in the batch this reduces to that loss with weight 1.

After the optimiser step, `after_step(new_losses)` updates the logits with the paper's rule: with
delta_i = log L_i(old) - log L_i(new) (old = the losses of the last `backward`), the gradient of xi is
J_softmax(xi)^T delta = z * (delta - <z, delta>) (analytic, no autograd), stepped by its own Adam
(options `lr` and coupled weight decay `famo_gamma`, as in the authors' code). A task whose loss fell
less than the others gains weight. The paper (Algorithm 1) evaluates L(new) on the *same* batch with
the updated model: with option `reforward` (the default) `self.reforward` asks the trainer for that
extra forward (no backward; BatchNorm statistics restored; under gradient accumulation, the last
micro-batch, whose losses the last `backward` saw). With `reforward` off the trainer hands the
step's own losses and the update uses the next batch's losses instead: a cheaper, noisier
approximation. If `after_step` is handed the step's *own* losses (exactly equal to those of the last
`backward`, e.g. a trainer without the extra forward), the update is deferred to the next two-task
`backward`, whose (next-batch) losses then play L(new): the cheap variant, never a silent no-op. The
choice is made on device (no host sync). Without a full two-task `backward` before it, or with a task
missing from `new_losses`, `after_step` does nothing (the update needs every task).

Logged `weight/<task>` = K z_i (sums to K, equal weights read 1.0); `grad_weight/<task>` is the weight
actually multiplying the task gradient (K c z_i / L_i). Cost: 1 backward pass per step, plus one
forward with `reforward`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import AliasChoices, Field

from medmtl.balancing.base import BALANCERS, Balancer, BalancerOptions, TinyAdam, weighted_backward
from medmtl.config import BalancerConfig

if TYPE_CHECKING:  # torch loads when a balancer is built, not when the CLI lists the options
    import torch
    from torch import Tensor
    from torch.nn import Parameter

_EPS = 1e-8


class FAMOOptions(BalancerOptions):
    lr: float = Field(0.025, gt=0, description="Learning rate of FAMO's task logits")
    reforward: bool = Field(True, description="Measure each step's loss improvement on the same "
                            "batch after the update, as published (one extra forward, no "
                            "backward); off: the next batch's losses (cheaper, noisier)")
    famo_gamma: float = Field(0.01, ge=0, description="FAMO's weight decay of the task logits",
                              validation_alias=AliasChoices("famo_gamma", "gamma"),
                              json_schema_extra={"flag": "--famo-gamma"})


@BALANCERS.register("famo")
class FAMO(Balancer):
    name = "famo"
    learns_weights = True
    Options = FAMOOptions

    def __init__(self, tasks: Sequence[str], cfg: BalancerConfig) -> None:
        import torch

        super().__init__(tasks, cfg)
        k = len(self.tasks)
        self.xi = torch.tensor(self.initial_weights(normalise=True)).log()
        self.opt = TinyAdam(k, lr=self.opts.lr, weight_decay=self.opts.famo_gamma)
        self.prev: Tensor | None = None  # detached losses (every task) of the last backward
        self.pending: Tensor | None = None  # old losses of a deferred update (next-batch variant)
        self.pending_ok = torch.zeros((), dtype=torch.bool)
        self.reforward = bool(self.opts.reforward)

    def to(self, device: torch.device | str) -> FAMO:
        self.xi = self.xi.to(device)
        self.opt.to(device)
        self.pending_ok = self.pending_ok.to(device)
        for name in ("prev", "pending"):
            x = getattr(self, name)
            if x is not None:
                setattr(self, name, x.to(device))
        return self

    def weights(self) -> dict[str, float]:
        import torch

        z = torch.softmax(self.xi, 0) * len(self.tasks)
        return dict(zip(self.tasks, z.tolist(), strict=True))

    def backward(self, losses: dict[str, Tensor], shared: Sequence[Parameter],
                 last_shared: Parameter | None = None, scale: float = 1.0) -> dict[str, float]:
        import torch

        present = self._start(losses)
        if not present:
            return self._log(passes=0)
        idx = torch.tensor([self.tasks.index(t) for t in present], device=self.xi.device)
        z_all = torch.softmax(self.xi, 0)
        lt = self.comm.mean(torch.stack([losses[t].detach().float() for t in present]))
        if self.pending is not None and len(present) == len(self.tasks):
            self._update(self.pending, lt, self.pending_ok)  # this batch's losses are L(new)
            self.pending = None
            z_all = torch.softmax(self.xi, 0)
        inv = z_all[idx] / (lt.clamp_min(0) + _EPS)
        gw = len(present) * inv / inv.sum()  # K * c * z_i / L_i
        passes = weighted_backward({t: losses[t] for t in present},
                                   {t: gw[i] for i, t in enumerate(present)}, scale)
        self.prev = lt if len(present) == len(self.tasks) else None
        k = len(self.tasks)
        if not self.detailed_log:
            return self._log(passes=passes)
        vals = torch.cat([z_all * k, gw]).tolist()  # one host sync for the log
        out = {f"weight/{t}": vals[i] for i, t in enumerate(self.tasks)}
        out.update({f"grad_weight/{t}": vals[k + i] for i, t in enumerate(present)})
        out["backward_passes"] = float(passes)
        return out

    def after_step(self, losses: Mapping[str, float | Tensor]) -> None:
        import torch

        prev, self.prev = self.prev, None
        if prev is None or any(t not in losses for t in self.tasks):
            return
        with torch.no_grad():
            new = torch.stack([torch.as_tensor(losses[t]).detach().to(prev.device, torch.float32)
                               .reshape(()) for t in self.tasks])
            same = (new == prev).all()  # handed the step's own losses: defer (see module doc)
            self._update(prev, new, ~same)
            self.pending, self.pending_ok = prev, same

    def _update(self, old: Tensor, new: Tensor, ok: Tensor) -> None:
        import torch

        with torch.no_grad():
            delta = (old.clamp_min(0) + _EPS).log() - (new.clamp_min(0) + _EPS).log()
            z = torch.softmax(self.xi, 0)
            grad = z * (delta - (z * delta).sum())  # J_softmax^T delta
            self.opt.step(self.xi, grad, ok & torch.isfinite(grad).all())

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"xi": self.xi.detach().cpu().clone(), "opt": self.opt.state_dict()}
        for name in ("prev", "pending"):
            x = getattr(self, name)
            if x is not None:
                state[name] = x.detach().cpu().clone()
        state["pending_ok"] = bool(self.pending_ok)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        import torch

        dev = self.xi.device
        self.xi = state["xi"].to(dev, torch.float32).clone()
        self.opt.load_state_dict(state["opt"])
        for name in ("prev", "pending"):
            x = state.get(name)
            setattr(self, name, None if x is None else x.to(dev, torch.float32).clone())
        self.pending_ok = torch.tensor(bool(state.get("pending_ok", False)), device=dev)
