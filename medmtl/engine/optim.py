"""Optimiser, learning-rate schedule and the optimiser step (unscale, accumulation average, clip,
step, schedule, EMA)."""

from __future__ import annotations

import math
from typing import Any

import torch

from medmtl.config import TrainConfig
from medmtl.distributed import Comm, average_gradients


def build_optimizer(model: torch.nn.Module, extra: list[torch.nn.Parameter], cfg: TrainConfig,
                    device: torch.device) -> torch.optim.Optimizer:
    """Weight decay on weights (ndim > 1) only; `extra` (a balancer's own parameters) undecayed.
    The backbone's parameters learn at --lr times --backbone-lr-mult (their own groups, after
    the others: group 0, whose rate the history logs, runs at --lr)."""
    from medmtl.models.backbone import Backbone

    mult = cfg.backbone_lr_mult
    in_backbone = {id(p) for m in model.modules() if isinstance(m, Backbone)
                   for p in m.parameters()} if mult != 1.0 else set()
    decay, no_decay, bb_decay, bb_no_decay = [], [], [], []
    for p in model.parameters():
        if p.requires_grad:
            bb = id(p) in in_backbone
            if p.ndim > 1:
                (bb_decay if bb else decay).append(p)
            else:
                (bb_no_decay if bb else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if bb_decay or bb_no_decay:
        groups += [{"params": bb_decay, "weight_decay": cfg.weight_decay, "lr": cfg.lr * mult},
                   {"params": bb_no_decay, "weight_decay": 0.0, "lr": cfg.lr * mult}]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999), **fused)


class WarmupCosine:
    """LambdaLR factor: linear warm-up over `warmup_epochs`, then cosine down to `min_lr_ratio`."""

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int, total_steps: int) -> None:
        self.warm = max(1, int(cfg.warmup_epochs * steps_per_epoch))
        self.total, self.floor = total_steps, cfg.min_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warm:
            return (step + 1) / self.warm
        t = (step - self.warm) / max(1, self.total - self.warm)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                   scaler: Any, ema: Any, balancer: Any, comm: Comm, n_micro: int,
                   clip_grad: float, losses: list[torch.Tensor] | None = None) -> bool:
    """Average (DDP multi-backward), unscale, divide by the micro-steps, clip, step, schedule,
    EMA. Returns False, having zeroed the gradients without stepping the optimiser or the EMA,
    when one of `losses`, the gradient norm or a BatchNorm statistic is not finite (the
    non-finite guard; under fp16
    AMP the GradScaler already skips overflowing gradients, so only the losses are checked). The
    schedule advances either way, so a skipped step keeps the run's step count."""
    if comm.active:
        # the balancer's own parameters are outside DDP; gradient surgery bypassed its reducer
        params = list(balancer.parameters())
        if balancer.multi_backward:
            params = [*model.parameters(), *params]
        average_gradients(comm, params)
    if scaler:
        scaler.unscale_(optimizer)
    if n_micro > 1:
        for p in (p for g in optimizer.param_groups for p in g["params"]):
            if p.grad is not None:
                p.grad.div_(n_micro)
    checks = [v.detach().float().reshape(()) for v in losses or []]
    # the total norm (clip = inf leaves the gradients as they are): one value to check
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                          clip_grad if clip_grad > 0 else float("inf"))
    if scaler is None:
        checks.append(norm.detach().float().reshape(()).to(checks[0].device if checks
                                                          else norm.device))
    # BatchNorm statistics: a forward through exploding weights can overflow them while the
    # loss stays finite (batch statistics are used in training)
    bufs = [b.detach() for b in model.buffers() if b.is_floating_point() and b.numel()]
    if bufs:
        device = checks[0].device if checks else bufs[0].device
        checks += [n.float().reshape(()).to(device) for n in torch._foreach_norm(bufs)]
    finite = bool(torch.isfinite(torch.stack(checks)).all()) if checks else True
    if not finite:
        optimizer.zero_grad(set_to_none=True)
        if scaler:
            scaler.update()
        scheduler.step()
        return False
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    if ema:
        ema.update(model)
    return True


__all__ = ["WarmupCosine", "build_optimizer", "optimizer_step"]
