"""Per-task gradients on the shared parameters, for the gradient-surgery balancers (PCGrad, CAGrad).

`per_task_backward` runs one ordinary backward per task (K passes in all, as LibMTL does): the
task-specific parameters accumulate their own task's gradient in `.grad` exactly as one backward of
the unweighted sum would, while the shared parameters' gradients are taken out task by task and
returned, unscaled, as rows of a (K, P) matrix; their `.grad` is left as it was. The caller combines
the rows and writes the result with `add_shared_grad`.

Under data parallelism each row is averaged over the ranks (`comm`) before it is returned, so the
surgery acts on the global per-task gradients and gives the same result on every rank. The model must
then run under DDP's `no_sync()` (K backwards would otherwise trigger K reductions); the trainer
averages the remaining (task-specific) gradients before the optimiser step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads on the first step, not when the CLI lists the options
    from torch import Tensor
    from torch.nn import Parameter

    from medmtl.distributed import Comm


def trainable(shared: Sequence[Parameter]) -> list[Parameter]:
    return [p for p in shared if p.requires_grad]


def per_task_backward(losses: Mapping[str, Tensor], tasks: Sequence[str],
                      shared: Sequence[Parameter], scale: float = 1.0,
                      comm: Comm | None = None) -> tuple[Tensor, int]:
    """Back-propagate `scale * L_t` for each task; return ((K, P) true shared gradients, passes).

    A task whose loss does not require grad, or that does not reach a shared parameter, gets zeros.
    The rows are float32 whatever the parameter dtype, averaged over ranks under `comm` (None: one
    process).
    """
    import torch

    from medmtl.distributed import LOCAL

    comm = LOCAL if comm is None else comm
    params = list(shared)
    numel = sum(p.numel() for p in params)
    device = params[0].device if params else torch.device("cpu")
    stash = [p.grad for p in params]
    for p in params:
        p.grad = None
    runnable = [t for t in tasks if losses[t].requires_grad]
    rows: dict[str, Tensor] = {}
    try:
        for k, t in enumerate(runnable):
            (losses[t] * scale).backward(retain_graph=k < len(runnable) - 1)
            parts = []
            for p in params:
                g = p.grad
                parts.append(torch.zeros(p.numel(), device=device) if g is None
                             else g.detach().reshape(-1).float())
                p.grad = None
            rows[t] = torch.cat(parts) / scale if parts else torch.zeros(0, device=device)
    finally:
        for p, g in zip(params, stash, strict=True):
            p.grad = g
    grads = torch.stack([rows[t] if t in rows else torch.zeros(numel, device=device) for t in tasks])
    return comm.mean(grads), len(runnable)


def add_shared_grad(shared: Sequence[Parameter], flat: Tensor) -> None:
    """`p.grad += flat[slice of p]` for each parameter (allocating `.grad` where it is None)."""
    import torch

    with torch.no_grad():
        offset = 0
        for p in shared:
            n = p.numel()
            g = flat[offset:offset + n].view(p.shape).to(p.dtype)
            offset += n
            if p.grad is None:
                p.grad = torch.empty_like(p).copy_(g)
            else:
                p.grad.add_(g)
        if offset != flat.numel():
            raise ValueError(f"gradient has {flat.numel()} entries, parameters {offset}")


def gram_stats(gram: Tensor) -> tuple[Tensor, Tensor]:
    """From the (K, K) Gram matrix: per-task norms and the mean pairwise cosine (NaN if undefined)."""
    import torch

    norms = gram.diagonal().clamp_min(0).sqrt()
    k = gram.shape[0]
    if k < 2:
        return norms, torch.full((), float("nan"), device=gram.device)
    iu = torch.triu_indices(k, k, 1, device=gram.device)
    denom = norms[iu[0]] * norms[iu[1]]
    cos = gram[iu[0], iu[1]] / denom
    cos = torch.where(denom > 0, cos, torch.full_like(cos, float("nan")))
    return norms, cos.mean()
