"""`cagrad`: conflict-averse gradient descent (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021).

With g_i the task gradients on the shared parameters and g0 = mean_i g_i, CAGrad picks the update d
that maximises the worst local improvement min_i <g_i, d> within the ball ||d - g0|| <= c ||g0||
(c = option `cagrad_c`, also read as `c`). Its dual is a problem over the simplex of task weights w:

    min_w  F(w) = <g_w, g0> + sqrt(phi) ||g_w||,    g_w = sum_i w_i g_i,   phi = c^2 ||g0||^2

solved here on the K x K Gram matrix (normalised by its mean diagonal) by projected gradient
descent with backtracking (a few hundred iterations at most, float64, no scipy; for K = 2 the
problem is 1-D and convex, solved by bisection on the derivative); the update is

    d = g0 + (sqrt(phi) / ||g_w||) g_w,   then divided by (1 + c^2)

(the rescaling of the authors' released code, `rescale=1`, so that c only tilts the direction and
does not inflate the step). c = 0 gives the average gradient. As every balancer here keeps the scale
of `fixed` with unit weights, the shared gradient written is K * d (K = tasks in the batch), i.e.
sum_i alpha_i g_i with alpha_i = (1 + K lambda w_i) / (1 + c^2), logged as `weight/<task>` (1.0 at
c = 0). Task-specific parameters get their own task's gradient.

Cost: K backward passes (per-task, see `_grads.per_task_backward`) + one K x K host copy for the
solver. One task in the batch, or no shared parameters: a plain backward (1 pass).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import AliasChoices, Field

from medmtl.balancing._grads import add_shared_grad, per_task_backward, trainable
from medmtl.balancing.base import BALANCERS, Balancer, BalancerOptions, weighted_backward
from medmtl.config import BalancerConfig

if TYPE_CHECKING:  # torch loads when a balancer is built, not when the CLI lists the options
    from torch import Tensor
    from torch.nn import Parameter


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {w >= 0, sum w = 1} (sort-based)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    idx = np.arange(1, len(v) + 1)
    rho = np.nonzero(u - css / idx > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1.0), 0.0)


def _dual_two(a: np.ndarray, b: np.ndarray, root_phi: float) -> np.ndarray:
    """K = 2: w = (t, 1 - t); F is convex in t, so bisect on the sign of F'(t) (pure Python)."""
    a11, a12, a22, b1, b2 = float(a[0, 0]), float(a[0, 1]), float(a[1, 1]), float(b[0]), float(b[1])

    def slope(t: float) -> float:
        q = a11 * t * t + 2 * a12 * t * (1 - t) + a22 * (1 - t) ** 2
        dq = 2 * a11 * t + 2 * a12 * (1 - 2 * t) - 2 * a22 * (1 - t)
        return b1 - b2 + root_phi * dq / (2 * math.sqrt(max(q, 1e-20)))

    if slope(0.0) >= 0:
        return np.array([0.0, 1.0])
    if slope(1.0) <= 0:
        return np.array([1.0, 0.0])
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    t = 0.5 * (lo + hi)
    return np.array([t, 1.0 - t])


def cagrad_dual(gram: np.ndarray, c: float, iters: int = 300, bisect_two: bool = True) -> np.ndarray:
    """argmin over the simplex of F(w) = w.b + c ||g0|| sqrt(w'Aw) (A = Gram, b = A 1/K)."""
    k = gram.shape[0]
    w = np.full(k, 1.0 / k)
    s = float(np.mean(np.diag(gram)))
    if c <= 0 or not np.isfinite(gram).all() or s <= 0:
        return w
    a = gram / s
    b = a.mean(1)
    root_phi = c * math.sqrt(max(float(b.mean()), 0.0))
    if k == 2 and bisect_two:
        return _dual_two(a, b, root_phi)

    def f(x: np.ndarray) -> float:
        return float(x @ b + root_phi * math.sqrt(max(float(x @ a @ x), 0.0)))

    fw, step = f(w), 1.0
    for _ in range(iters):
        gw = math.sqrt(max(float(w @ a @ w), 1e-20))
        grad = b + root_phi * (a @ w) / gw
        while True:  # backtracking (sufficient decrease for the projected step)
            w_new = project_simplex(w - step * grad)
            diff = w_new - w
            f_new = f(w_new)
            if f_new <= fw + grad @ diff + (diff @ diff) / (2 * step) or step < 1e-12:
                break
            step *= 0.5
        if float(np.abs(diff).max()) < 1e-10:
            break
        w, fw, step = w_new, f_new, step * 2.0
    return w


def cagrad_coefficients(g: np.ndarray, c: float) -> tuple[list[float], float]:
    """alpha (sum convention, see module doc) and lambda = sqrt(phi) / ||g_w|| from the Gram."""
    k = g.shape[0]
    w = cagrad_dual(g, c)
    g0_norm = math.sqrt(max(float(g.mean()), 0.0))  # ||g0||^2 = 1'G1 / K^2
    gw_norm = math.sqrt(max(float(w @ g @ w), 0.0))
    lam = c * g0_norm / gw_norm if gw_norm > 1e-12 * max(g0_norm, 1e-30) and c > 0 else 0.0
    if not math.isfinite(lam):
        lam = 0.0
    alpha = [(1.0 + k * lam * float(wi)) / (1.0 + c * c) for wi in w]
    return alpha, lam


class CAGradOptions(BalancerOptions):
    cagrad_c: float = Field(0.4, ge=0, description="CAGrad's c: radius of the ball around the "
                            "average gradient (0: the average gradient)",
                            validation_alias=AliasChoices("cagrad_c", "c"),
                            json_schema_extra={"flag": "--cagrad-c",
                                               "search": {"low": 0.05, "high": 0.95}})


@BALANCERS.register("cagrad")
class CAGrad(Balancer):
    name = "cagrad"
    Options = CAGradOptions

    def __init__(self, tasks: Sequence[str], cfg: BalancerConfig) -> None:
        super().__init__(tasks, cfg)
        self.c = float(self.opts.cagrad_c)
        self._w = {t: 1.0 for t in self.tasks}
        self.backward_passes = len(self.tasks)
        self.multi_backward = True

    def weights(self) -> dict[str, float]:
        return dict(self._w)

    def backward(self, losses: dict[str, Tensor], shared: Sequence[Parameter],
                 last_shared: Parameter | None = None, scale: float = 1.0) -> dict[str, float]:
        import torch

        present = self._present(losses)
        params = trainable(shared)
        if len(present) < 2 or not params:
            ones = {t: 1.0 for t in present}
            passes = weighted_backward({t: losses[t] for t in present}, ones, scale)
            log = self._log(passes=passes)
            log["surgery_active"] = 0.0
            return log
        grads, passes = per_task_backward(losses, present, params, scale, self.comm)
        g = (grads @ grads.T).double().cpu().numpy()  # the one host sync of this balancer
        alpha, lam = cagrad_coefficients(g, self.c)
        coef = torch.tensor(alpha, dtype=grads.dtype).to(grads.device, non_blocking=True)
        add_shared_grad(params, (coef @ grads) * scale)
        self._w.update(dict(zip(present, alpha, strict=True)))  # last two-task step's alpha
        norms = np.sqrt(np.clip(np.diag(g), 0.0, None)).tolist()
        extra = {f"grad_norm/{t}": norms[i] for i, t in enumerate(present)}
        den = norms[0] * norms[1]  # cosine of the first two tasks
        extra["cos"] = float(g[0, 1]) / den if den > 0 else math.nan
        extra.update({"cagrad_lambda": lam, "surgery_active": 1.0})
        return self._log(extra, passes=passes)

    def state_dict(self) -> dict[str, Any]:
        return {"weights": dict(self._w)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._w.update({t: float(v) for t, v in state.get("weights", {}).items() if t in self._w})
