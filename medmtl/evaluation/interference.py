"""Gradient interference between the two tasks on the shared parameters.

`gradient_interference` takes one `torch.autograd.grad(..., retain_graph=True)` per task on the
shared parameters -- it never touches `.grad`, and the graph survives for the training backward --
and reports, over all shared parameters flattened into one vector:

* `grad_cos`: cosine similarity between the detect and classify gradients, in [-1, 1];
* `grad_norm/<task>` and `grad_norm_ratio` = ||g_detect|| / ||g_classify||;
* with `stages` (name, params) (e.g. `model.shared_stages()`): `grad_cos/<stage>` per stage.

The pair is (`detect`, `classify`) when both are present, else the first two tasks of `losses`.
Returns {} with fewer than two tasks or no trainable shared parameter. A parameter a loss does not
reach (e.g. the backbone for the view loss of the `detach` architecture) gets a zero gradient; a
cosine with a zero-norm side is undefined and reported as NaN (likewise the norm ratio with a zero
classify norm), so an average over steps can skip it (`nanmean`) rather than read a fake 0.
`scale` (optional) back-propagates `scale * loss` and divides it out, to avoid fp16 underflow under
AMP; the result does not depend on it otherwise. Dot products are accumulated in float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.nn import Parameter

PAIR = ("detect", "classify")


def _task_grads(loss: Tensor, params: list[Parameter], scale: float) -> list[Tensor | None]:
    if not loss.requires_grad:
        return [None] * len(params)
    grads = torch.autograd.grad(loss * scale, params, retain_graph=True, allow_unused=True)
    return list(grads)


def _cos(dot: float, na: float, nb: float) -> float:
    if not (na > 0 and nb > 0) or not all(math.isfinite(x) for x in (dot, na, nb)):
        return math.nan
    return max(-1.0, min(1.0, dot / (na * nb)))


def gradient_interference(losses: Mapping[str, Tensor], shared: Sequence[Parameter],
                          stages: list[tuple[str, list[Parameter]]] | None = None,
                          scale: float = 1.0) -> dict[str, float]:
    if len(losses) < 2:
        return {}
    a, b = PAIR if all(t in losses for t in PAIR) else tuple(losses)[:2]
    params: list[Parameter] = []
    index: dict[int, int] = {}
    for p in list(shared) + [q for _, ps in (stages or []) for q in ps]:
        if p.requires_grad and id(p) not in index:
            index[id(p)] = len(params)
            params.append(p)
    shared_idx = sorted({index[id(p)] for p in shared if id(p) in index})
    if not shared_idx:
        return {}

    ga = _task_grads(losses[a], params, scale)
    gb = _task_grads(losses[b], params, scale)
    zero = torch.zeros((), dtype=torch.float64, device=params[0].device)
    rows = []  # per parameter: dot, |ga|^2, |gb|^2 (all on device, one sync at the end)
    for x, y in zip(ga, gb, strict=True):
        xf = None if x is None else x.detach().float() / scale
        yf = None if y is None else y.detach().float() / scale
        dot = zero if xf is None or yf is None else (xf * yf).sum(dtype=torch.float64)
        sa = zero if xf is None else (xf * xf).sum(dtype=torch.float64)
        sb = zero if yf is None else (yf * yf).sum(dtype=torch.float64)
        rows.append(torch.stack([dot.to(zero.device), sa.to(zero.device), sb.to(zero.device)]))
    table = torch.stack(rows).cpu()  # (n_params, 3)

    def summary(idx: list[int]) -> tuple[float, float, float]:
        dot, sa, sb = table[idx].sum(0).tolist()
        return dot, math.sqrt(max(sa, 0.0)), math.sqrt(max(sb, 0.0))

    dot, na, nb = summary(shared_idx)
    out = {
        "grad_cos": _cos(dot, na, nb),
        f"grad_norm/{a}": na,
        f"grad_norm/{b}": nb,
        "grad_norm_ratio": na / nb if nb > 0 else math.nan,
    }
    for name, ps in stages or []:
        idx = sorted({index[id(p)] for p in ps if id(p) in index})
        if idx:
            out[f"grad_cos/{name}"] = _cos(*summary(idx))
    return out
