"""What a run carries across a stop: counters, the checkpoint dict, RNG at step boundaries, and
the signals (Ctrl-C, SIGTERM) that stop it at the next step boundary.

Resumable to the step: the sample order of an epoch is a pure function of (seed, epoch) and the RNG
is saved as it was at the last optimiser-step boundary, so a run resumed from `weights/last.pt`
replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medmtl.engine.utils import rng_state, set_rng_state
from medmtl.models.checkpoint import backbone_source, load_weights
from medmtl.models.checkpoint import checkpoint_dict as model_checkpoint


@dataclass
class RunState:
    """The counters of a run (epoch and step are 0-based; `step_in_epoch` optimiser steps are
    done in `epoch`, for a mid-epoch resume)."""

    epoch: int = 0
    step_in_epoch: int = 0
    best_fitness: float = float("-inf")
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_acc: dict[str, float] = field(default_factory=dict)  # running sums (plain floats)
    train_seconds: float = 0.0
    rng_at_step: dict[str, Any] | None = None  # the RNG at the last optimiser-step boundary

    def mark_step(self) -> None:
        self.rng_at_step = rng_state()


def checkpoint_dict(state: RunState, model: torch.nn.Module, ema: Any, config: dict[str, Any],
                    names: list[str], cls_names: list[str], optimizer: Any = None,
                    scheduler: Any = None, scaler: Any = None, balancer: Any = None,
                    ) -> dict[str, Any]:
    """The checkpoint: plain tensors and primitives (safe to load with weights_only=True). With
    an optimizer it is a resumable `last.pt`; without, a `best.pt` for evaluation and deployment."""
    st = model_checkpoint(model, config, names, cls_names, state.epoch, ema=ema,
                          step_in_epoch=state.step_in_epoch, best_fitness=state.best_fitness,
                          best_epoch=state.best_epoch, history=state.history,
                          train_seconds=state.train_seconds, sealed=False)
    if optimizer is not None:
        st.update({
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler else None,
            "balancer": balancer.state_dict(),
            "epoch_acc": dict(state.epoch_acc),
            "rng": state.rng_at_step or rng_state(),
        })
    return st


def restore(ck: dict[str, Any], model: torch.nn.Module, ema: Any, optimizer: Any, scheduler: Any,
            scaler: Any, balancer: Any, path: str | Path = "last.pt") -> RunState:
    """Load a `last.pt` into the components and the global RNG; returns its counters."""
    load_weights(model, ck["model"], path)
    if ema and ck.get("ema"):
        ema.load_state_dict(ck["ema"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    if scaler and ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    balancer.load_state_dict(ck["balancer"])
    set_rng_state(ck["rng"])
    return RunState(epoch=int(ck["epoch"]), step_in_epoch=int(ck["step_in_epoch"]),
                    best_fitness=float(ck["best_fitness"]), best_epoch=int(ck["best_epoch"]),
                    history=list(ck["history"]), epoch_acc=dict(ck.get("epoch_acc") or {}),
                    train_seconds=float(ck.get("train_seconds", 0.0)))


def keep_selection_rule(cfg: Any, saved: dict[str, Any], say: Callable[[str], Any]) -> None:
    """A resumed run keeps the selection rule its best checkpoint was chosen by (`saved`: the
    checkpoint's config; a run begun before --select existed used the composite score)."""
    rule = (saved.get("select", "composite"), dict(saved.get("select_refs") or {}))
    if rule != (cfg.select, dict(cfg.select_refs)):
        say(f"[yellow]resume: keeping the run's selection rule {rule[0]} {rule[1] or ''} "
            f"(asked: {cfg.select} {cfg.select_refs or ''})[/]")
        cfg.select, cfg.select_refs = rule[0], rule[1]


class StopAtStep(Exception):
    """Raised inside the epoch loop at a step boundary after a stop signal."""


class StopSignals:
    """Ctrl-C (SIGINT), or SIGTERM from a job scheduler or torchrun: `requested` turns True and the
    loop stops at the next step boundary and saves last.pt; a second signal aborts at once (last.pt
    keeps the previous save, intact: checkpoints are written atomically). Handlers are installed
    only in the main thread, for the `with` block."""

    def __init__(self, say: Callable[[str], Any]) -> None:
        self.say = say
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        self.say(f"{name}: finishing this step, then saving weights/last.pt "
                 "(signal again to abort without saving)")

    def __enter__(self) -> StopSignals:
        self.requested = False
        if threading.current_thread() is threading.main_thread():
            self._previous = {int(s): signal.signal(s, self._handler)
                              for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, h in self._previous.items():
            signal.signal(sig, h if h is not None else signal.SIG_DFL)
        self._previous = {}


__all__ = ["RunState", "StopAtStep", "StopSignals", "backbone_source", "checkpoint_dict", "restore"]
