"""One training epoch and one evaluation pass (DETR's engine.py): `train_one_epoch` and `evaluate`.

Both take the `Trainer` (medmtl/engine/trainer.py) as `t`: its components (model, criterion,
balancer, optimiser, data) and its `RunState`. A step: forward, the criterion's per-task losses of
the tasks labelled in the (global) batch, interference diagnostics on chosen steps, the balancer's
backward; after `accumulate` micro-steps, the optimiser step. Book-keeping is done only for
completed optimiser steps, so a resume replays exactly.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from pathlib import Path
from typing import Any

import torch

from medmtl.balancing.base import TaskSplit
from medmtl.engine.evaluate import (
    merge_inference,
    move_targets,
    prepare_images,
    run_inference,
    score,
)
from medmtl.engine.plugin_api import stage_label
from medmtl.engine.progress import EpochProgress
from medmtl.engine.run_state import StopAtStep
from medmtl.engine.utils import peak_memory_mb
from medmtl.errors import NonFiniteError
from medmtl.evaluation.interference import gradient_interference


def train_one_epoch(t: Any) -> dict[str, Any]:
    """Train the rest of epoch `t.state.epoch`; returns its history row (without val columns)."""
    cfg, st, comm, tasks = t.cfg, t.state, t.comm, t.tasks
    t.model.train()
    for p in t.plugins:  # e.g. staged training freezes the trunk (eval mode) for a while
        p.on_epoch_start(t, st.epoch)
    nb = t.data.batches_per_epoch()
    start_batch = st.step_in_epoch * cfg.accumulate
    loader = t.data.train_loader(st.epoch, start_batch)
    acc = st.epoch_acc
    sums = t.loss_sums = {k: torch.zeros((), device=t.device) for k in t.loss_tasks}
    # (losses, backward passes) of micro-steps whose optimiser step has not happened yet
    pending: list[tuple[dict[str, torch.Tensor], float]] = []
    diag_every = max(1, nb // cfg.diag_steps) if cfg.diag_steps > 0 else 0
    t0 = time.perf_counter()
    if t.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(t.device)
    bar = EpochProgress(t.console, f"epoch {st.epoch + 1}/{t.epochs}", nb - start_batch,
                        enabled=t.progress, start=start_batch)
    micro = 0
    guard, good = t.nonfinite, None  # counts across epochs
    for i, batch in enumerate(loader, start=start_batch):
        step_t = time.perf_counter()
        # which tasks have labels in the (global) batch: every rank must run the same passes
        has_det, has_view = comm.flags([float(batch["det_mask"].any()),
                                        float(batch["view_mask"].any())])
        present = {"detect": bool(has_det), "classify": bool(has_view)}
        if not any(present[k] for k in tasks):
            acc["skipped_batches"] = acc.get("skipped_batches", 0) + 1
            continue
        last_micro = (micro + 1) % cfg.accumulate == 0 or i + 1 == nb
        # DDP reduces during the backward only on the last micro-step of a single-pass
        # balancer; otherwise gradients are averaged once, before the optimiser step
        sync_ctx = t.eager.no_sync() if comm.active and (
            t.balancer.multi_backward or not last_micro) else contextlib.nullcontext()
        if micro == 0:
            good = guard.snapshot(t)
        with sync_ctx:
            losses, passes = guarded_micro_step(t, batch, present, i, diag_every, acc)
        last_batch = (batch, present)
        step_losses = global_losses(comm, losses)
        pending.append((step_losses, passes))
        micro += 1
        if last_micro:
            stepped = t.optimizer_step(micro, [v for sl, _ in pending for v in sl.values()])
            if stepped:
                guard.ok()
                balancer_after_step(t, *last_batch, step_losses)
            else:
                guard.skipped(t, good, acc)
            for step_losses, passes in pending:
                for k, v in step_losses.items() if stepped else ():
                    sums[k] += v
                    acc[f"n/loss/{k}"] = acc.get(f"n/loss/{k}", 0) + 1
                acc["backward_passes"] = acc.get("backward_passes", 0) + passes
                acc["steps"] = acc.get("steps", 0) + 1
            pending.clear()
            micro = 0
            st.step_in_epoch += 1
            acc["step_seconds"] = acc.get("step_seconds", 0.0) + time.perf_counter() - step_t
            flush_sums(t, sums)
            st.mark_step()
            # Ctrl-C reaches the ranks at different moments: stop when any rank has it
            if comm.flags([float(t.stop.requested)])[0] > 0:
                raise StopAtStep
        bar.advance(losses)  # summed on the device; read only when shown
    bar.close()
    flush_sums(t, sums, force=True)
    seconds = time.perf_counter() - t0
    st.train_seconds += seconds
    return _epoch_row(t, acc, seconds)


def _epoch_row(t: Any, acc: dict[str, Any], seconds: float) -> dict[str, Any]:
    tasks = t.loss_tasks
    epoch_losses = {k: acc[f"sum/loss/{k}"] / acc[f"n/loss/{k}"] for k in tasks
                    if acc.get(f"n/loss/{k}")}
    t.balancer.on_epoch_end(epoch_losses)
    weights = t.balancer.weights()
    row: dict[str, Any] = {"epoch": t.state.epoch + 1}
    for k in ("detect", "classify", *(k for k in tasks if k not in ("detect", "classify"))):
        row[f"loss/{k}"] = epoch_losses.get(k, "")
        row[f"weight/{k}"] = weights.get(k, 1.0) if k in tasks else ""
    for k in ("grad_cos", "grad_norm_ratio"):
        n = acc.get(f"n/{k}", 0)
        row[k] = acc[f"sum/{k}"] / n if n else ""
    for k in [k for k in acc if k.startswith("n/grad_cos/")]:
        stage = k[len("n/"):]
        row[stage] = acc[f"sum/{stage}"] / acc[k]
    steps = max(1, acc.get("steps", 0))
    row.update({"lr": t.optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3),
                "step_ms": round(1000 * acc.get("step_seconds", 0.0) / steps, 2),
                "backward_passes": acc.get("backward_passes", 0) / steps,
                "peak_mem_mb": round(peak_memory_mb(t.device), 1),
                "skipped_batches": acc.get("skipped_batches", 0),
                "nonfinite_steps": acc.get("nonfinite_steps", 0),
                "unreadable_samples": getattr(t.data.train_set, "unreadable", 0)})
    row.update(rank_spread(t, weights))
    stage = stage_label(t.plugins, t.state.epoch)  # runs with a plug-in say which stage
    if stage is not None:
        row["stage"] = stage
    return row


class NonFiniteGuard:
    """Counts optimiser steps skipped for a non-finite loss or gradient (`optimizer_step` skips
    them) and stops the run after `limit` in a row. A skipped step restores what its forward and
    backward changed outside the optimiser: BatchNorm statistics and the balancer's state."""

    def __init__(self, limit: int, run_dir: Path) -> None:
        self.limit, self.run_dir, self.in_a_row = limit, run_dir, 0

    @staticmethod
    def snapshot(t: Any) -> tuple[list[torch.Tensor], dict[str, Any]]:
        with torch.no_grad():
            buffers = [b.detach().clone() for b in t.model.buffers()]
        return buffers, copy.deepcopy(t.balancer.state_dict())

    def ok(self) -> None:
        self.in_a_row = 0

    def skipped(self, t: Any, good: tuple[list[torch.Tensor], dict[str, Any]],
                acc: dict[str, Any]) -> None:
        with torch.no_grad():
            for b, saved in zip(t.model.buffers(), good[0], strict=True):
                b.copy_(saved)
        t.balancer.load_state_dict(good[1])
        self.in_a_row += 1
        acc["nonfinite_steps"] = acc.get("nonfinite_steps", 0) + 1
        st = t.state
        t.console.print(f"[yellow]epoch {st.epoch + 1} step {st.step_in_epoch + 1}: non-finite "
                        f"loss, gradient or BatchNorm statistics, step skipped ({self.in_a_row} in a row, "
                        f"--nonfinite-limit {self.limit})[/]")
        if self.in_a_row >= self.limit:
            last = self.run_dir / "weights" / "last.pt"
            kept = f"the last good checkpoint is {last}" if last.exists() else \
                "no checkpoint was saved"
            raise NonFiniteError(
                f"{self.run_dir}: stopped at epoch {st.epoch + 1}, step {st.step_in_epoch + 1}: "
                f"{self.in_a_row} optimiser steps in a row had a non-finite (NaN/inf) loss or "
                f"gradient (or BatchNorm statistics); {kept}. Lower --lr, check the task weights, or look for broken labels")


def micro_step(t: Any, batch: dict[str, Any], present: dict[str, bool], i: int, diag_every: int,
               acc: dict[str, Any]) -> tuple[dict[str, torch.Tensor], float]:
    """Forward, the criterion's task losses, diagnostics, the balancer's backward. Returns the
    losses and the backward passes run."""
    losses, shared_features = forward_losses(t, batch, present, t.net)
    split = None if shared_features is None or t.task_params is None else \
        TaskSplit(list(shared_features), t.task_params)
    scale = float(t.scaler.get_scale()) if t.scaler else 1.0
    pair = {k: v for k, v in losses.items() if k in ("detect", "classify")}
    if diag_every and len(pair) == 2 and t.shared and i % diag_every == 0:
        d = gradient_interference(
            pair, t.shared, t.model.shared_stages() if t.cfg.diag_per_stage else None,
            scale=scale)
        for k, v in d.items():
            if isinstance(v, float) and math.isfinite(v):
                acc[f"sum/{k}"] = acc.get(f"sum/{k}", 0.0) + v
                acc[f"n/{k}"] = acc.get(f"n/{k}", 0) + 1
    kw = {"split": split} if t.balancer.uses_split else {}
    blog = t.balancer.backward(losses, t.shared, t.last_shared, scale, **kw)
    return losses, blog.get("backward_passes", 1)


def forward_losses(t: Any, batch: dict[str, Any], present: dict[str, bool], net: Any,
                   ) -> tuple[dict[str, torch.Tensor], Any]:
    """The one forward + loss of training: the batch through ``net`` (the trainer's DDP-wrapped
    `net`, or the bare `model`) under the run's autocast, the criterion's per-task losses of the
    ``present`` tasks, then each plug-in's loss terms (distillation). Returns the losses and the
    shared features the model kept for GradNorm's fast path (None when it kept none)."""
    images = prepare_images(batch["images"], t.device, t.channels_last)
    with t.amp_context():
        out = net(images)
    shared_features = t.model.take_shared_features()
    losses = t.criterion(out, move_targets(batch, t.device), present, t.comm)
    for p in t.plugins:
        losses.update(p.extra_losses(t, images, batch, out))
    return losses, shared_features


def balancer_after_step(t: Any, batch: dict[str, Any], present: dict[str, bool],
                        losses: dict[str, torch.Tensor]) -> None:
    """The balancer's update after an optimiser step: from the global losses of the step, or of
    `batch` under the new weights when it re-forwards (FAMO)."""
    t.balancer.after_step(reforward_losses(t, batch, present) if t.balancer.reforward
                          else losses)


@torch.no_grad()
def reforward_losses(t: Any, batch: dict[str, Any], present: dict[str, bool],
                     ) -> dict[str, torch.Tensor]:
    """The global losses of `batch` under the just-updated weights: one forward, no backward
    (FAMO's Algorithm 1 measures its improvement on the same batch). Train mode, as the step's own
    forward; the BatchNorm statistics it would move are restored, so it changes nothing but what
    the balancer learns."""
    saved = [(b, b.clone()) for b in t.model.buffers()]
    losses, _ = forward_losses(t, batch, present, t.model)  # no DDP machinery without grad
    for b, s in saved:
        b.copy_(s)
    return global_losses(t.comm, losses)


def guarded_micro_step(t: Any, batch: dict[str, Any], present: dict[str, bool], i: int,
                       diag_every: int, acc: dict[str, Any],
                       ) -> tuple[dict[str, torch.Tensor], float]:
    """The first compiled micro-step runs guarded: if compilation (of the forward or of a
    backward) fails, gradients, buffers (BatchNorm statistics) and balancer state are restored
    and training goes on eager."""
    if t.net is t.eager or t.compile_checked:
        return micro_step(t, batch, present, i, diag_every, acc)
    params = [p for g in t.optimizer.param_groups for p in g["params"]]
    grads = [None if p.grad is None else p.grad.clone() for p in params]
    bal_state = copy.deepcopy(t.balancer.state_dict())
    buffers = [(b, b.clone()) for b in t.model.buffers()]
    try:
        out = micro_step(t, batch, present, i, diag_every, acc)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        t.console.print(f"[yellow]torch.compile failed ({type(e).__name__}: {msg}); "
                        "continuing without it[/]")
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        t.balancer.load_state_dict(bal_state)
        t.net = t.eager
        return micro_step(t, batch, present, i, diag_every, acc)
    t.compile_checked = True
    return out


def global_losses(comm: Any, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached losses of the global batch (the ranks' mean: the normalisers are global)."""
    if not comm.active:
        return {k: v.detach() for k, v in losses.items()}
    vals = comm.mean(torch.stack([v.detach().float() for v in losses.values()]))
    return dict(zip(losses, vals.unbind(), strict=True))


def flush_sums(t: Any, sums: dict[str, torch.Tensor], force: bool = False) -> None:
    """Move the device-side loss sums into the epoch's running sums (one host sync per flush)."""
    acc = t.state.epoch_acc
    for k, v in sums.items():
        if force or t.device.type == "cpu" or t.state.step_in_epoch % 50 == 0:
            acc[f"sum/loss/{k}"] = acc.get(f"sum/loss/{k}", 0.0) + float(v)
            v.zero_()


def rank_spread(t: Any, weights: dict[str, float]) -> dict[str, float]:
    """Distributed runs: the largest difference between ranks in task weights and in the sum of
    the parameters (both must be 0 up to float rounding), logged in history.csv."""
    comm = t.comm
    if not comm.active:
        return {}
    with torch.no_grad():
        psum = float(sum(p.detach().double().sum() for p in t.model.parameters()))
    mine = ([weights.get(k, 1.0) for k in t.tasks], psum)
    everyone = comm.gather(mine)
    out: dict[str, float] = {}
    if everyone is not None:
        w0, p0 = everyone[0]
        out["ddp/weight_spread"] = max(abs(a - b) for w, _ in everyone
                                       for a, b in zip(w, w0, strict=True))
        out["ddp/param_spread"] = max(abs(p - p0) for _, p in everyone)
    return comm.broadcast(out)


def evaluate(t: Any, model: torch.nn.Module, out_dir: Path | None = None, plots: bool = False,
             split: str = "val") -> dict[str, Any]:
    """Scores of `model` on the val (or test) split. Distributed: each rank infers on every
    world_size-th image, rank 0 scores the merged predictions, every rank gets the result."""
    cfg, comm = t.cfg, t.comm
    inf = run_inference(model, t.data.eval_loader(split), t.device, cfg.conf_thres,
                        cfg.iou_thres, cfg.max_det, t.criterion.detect, t.criterion.view_eval,
                        t.autocast, t.channels_last)
    parts = comm.gather(inf)
    metrics = None
    if parts is not None:
        metrics = score(merge_inference(parts), t.data.index(split).records, t.names,
                        t.cls_names, t.tasks, split=split, out_dir=out_dir, plots=plots,
                        clip_regex=cfg.clip_regex)
    return comm.broadcast(metrics)


__all__ = ["NonFiniteGuard", "balancer_after_step", "evaluate", "global_losses", "micro_step",
           "train_one_epoch"]
