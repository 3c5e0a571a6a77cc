"""Balancer base class, the BALANCERS registry and small shared helpers.

A balancer turns per-task losses into parameter gradients (LibMTL's principle: it never knows which
model it drives, only the task losses and the shared parameters it is handed).

Conventions every balancer follows (docs/ARCHITECTURE.md, "Balancers"):

* `backward` *accumulates* (`+=`) into `.grad`; it never zeroes anything.
* `losses` holds only the tasks with labels in the batch. With a single task the balancer
  back-propagates that loss with its current weight and leaves learned weights alone.
* `scale` is the AMP loss scale: `scale * loss` is back-propagated, whatever is read from gradients
  (norms, dot products, projections) is divided by `scale`, and `scale * combined` is written.
* Gradient scale: every method keeps the scale of `fixed` with unit weights, i.e. a task gradient
  enters with a weight of about 1 and the weights sum to the number of tasks in the batch. CAGrad
  and FAMO are written in their papers as a convex combination (the average gradient); we multiply
  them by the number of tasks in the batch (a constant factor: an lr change under SGD, almost
  nothing under Adam) so that methods and one-task batches share one scale.
* Logged weights read 1.0 for "equal".
* Data parallelism: `self.comm` (set by the trainer) averages over ranks whatever a balancer reads
  from losses or gradients, so its weights are those of the global batch and equal on every rank
  (medmtl/distributed.py). `multi_backward` balancers run several `.backward()` per step; the
  trainer then keeps DDP's reducer out and averages the gradients itself.
* torch is imported inside the methods (`Tensor` and `Parameter` only under `TYPE_CHECKING`): the
  CLI imports every balancer module to generate its options, and `medmtl --help` stays free of
  torch (tests/test_cli_startup.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from medmtl.config import BalancerConfig
from medmtl.registry import Registry

if TYPE_CHECKING:  # torch loads when a balancer is built, not when the CLI lists the options
    import torch
    from torch import Tensor
    from torch.nn import Parameter

    from medmtl.distributed import Comm


@dataclass
class TaskSplit:
    """Where the shared graph ends: `boundary` holds the tensors through which every task branch
    consumes the shared parameters (the trunk's output features), `task_params` each task's own
    parameters. A balancer given one can back-propagate each task's branch once and the shared
    trunk once (GradNorm's fast path) instead of traversing the branches twice."""

    boundary: list[Tensor]
    task_params: dict[str, list[Parameter]] = field(default_factory=dict)


class BalancerOptions(BaseModel):
    """A balancer's own hyper-parameters. A balancer with options subclasses this, declares its
    fields with defaults, range constraints and a `description` (the CLI help), and sets it as its
    `Options`. They live flat in the `balancer:` block of config.yaml, next to `name` and `weights`.
    `medmtl train` gets a flag per field: `--<balancer>-<field>` (underscores as dashes), or the
    flag named by `json_schema_extra={"flag": "--alpha"}`. A `validation_alias` (AliasChoices)
    adds short names, e.g. CAGrad's `cagrad_c` also reads as `c`. `json_schema_extra={"search":
    {"low": 0, "high": 3, "log": False}}` makes the field part of `medmtl tune`'s search."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class Balancer:
    """Base class; subclasses implement `backward` and usually `weights`, set `name`, declare
    their `Options` and register with `@BALANCERS.register(name)`."""

    Options: ClassVar[type[BalancerOptions]] = BalancerOptions

    # whether `backward` accepts a `split: TaskSplit | None` keyword (the trainer passes it then)
    uses_split = False
    # whether the balancer learns task weights (and so takes `init_weights`, --init-weights)
    learns_weights = False

    name = "base"

    def __init__(self, tasks: Sequence[str], cfg: BalancerConfig) -> None:
        from medmtl.distributed import LOCAL

        if not tasks:
            raise ValueError("a balancer needs at least one task")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"duplicate task names: {list(tasks)}")
        self.tasks: list[str] = list(tasks)
        self.cfg = cfg
        # this balancer's validated options (defaults filled; the options of other balancers,
        # which configs written before the options were per balancer carry, are left out)
        self.opts = parse_options(type(self), cfg.model_extra or {}, strict=False)
        # backward passes per full (all tasks present) step; the log dict carries the actual count
        self.backward_passes: int = 1
        # several .backward() calls per step (gradient surgery): DDP's reducer must stay out
        self.multi_backward: bool = False
        # after_step wants the losses of the *same* batch re-computed with the updated model
        # (FAMO as published): the trainer then runs one extra forward per optimiser step
        self.reforward: bool = False
        self.comm: Comm = LOCAL
        # False: `backward` returns only {"backward_passes": n}, sparing the host sync of reading
        # weights and statistics off the device at every step (the trainer reads `weights()` once
        # per epoch)
        self.detailed_log: bool = True

    # --- API -----------------------------------------------------------------------------------
    def parameters(self) -> list[Parameter]:
        """Parameters the *model* optimiser must learn (only `uncertainty` has any)."""
        return []

    def backward(self, losses: dict[str, Tensor], shared: Sequence[Parameter],
                 last_shared: Parameter | None = None, scale: float = 1.0) -> dict[str, float]:
        raise NotImplementedError

    def after_step(self, losses: Mapping[str, float | Tensor]) -> None:
        """Called after the optimiser step with the losses of the updated model (FAMO)."""

    def on_epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        """Called with the epoch's average training loss per task (DWA)."""

    def weights(self) -> dict[str, float]:
        return {t: 1.0 for t in self.tasks}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def initial_weights(self, normalise: bool = False) -> list[float]:
        """`cfg.init_weights` per task (1.0 for unnamed tasks); `normalise`: scaled to sum to the
        number of tasks (the balancers whose weights always do)."""
        given = self.cfg.init_weights or {}
        w = [float(given.get(t, 1.0)) for t in self.tasks]
        return [x * len(w) / sum(w) for x in w] if normalise else w

    def to(self, device: torch.device | str) -> Balancer:
        """Move internal tensors; call before building the optimiser (uncertainty's parameters)."""
        return self

    # --- helpers for subclasses ----------------------------------------------------------------
    def _present(self, losses: Mapping[str, Tensor]) -> list[str]:
        unknown = [t for t in losses if t not in self.tasks]
        if unknown:
            raise KeyError(f"unknown task(s) {unknown}; this balancer has {self.tasks}")
        return [t for t in self.tasks if t in losses]

    def _start(self, losses: Mapping[str, Tensor]) -> list[str]:
        """The tasks present in `losses` (validated); learned state follows the losses' device."""
        present = self._present(losses)
        if present:
            self.to(device_of(losses))
        return present

    def _log(self, extra: Mapping[str, float] | None = None, passes: int = 1) -> dict[str, float]:
        if not self.detailed_log:
            return {"backward_passes": float(passes)}
        out = {f"weight/{t}": float(w) for t, w in self.weights().items()}
        out["backward_passes"] = float(passes)
        if extra:
            out.update(extra)
        return out


def weighted_backward(losses: Mapping[str, Tensor], weights: Mapping[str, float | Tensor],
                      scale: float = 1.0) -> int:
    """backward(scale * sum_i w_i L_i); accumulates into .grad. Returns the passes run (0 or 1)."""
    total: Tensor | None = None
    for t, loss in losses.items():
        term = weights[t] * loss
        total = term if total is None else total + term
    if total is None or not total.requires_grad:
        return 0
    (total * scale).backward()
    return 1


def device_of(losses: Mapping[str, Tensor]) -> torch.device:
    return next(iter(losses.values())).device


class TinyAdam:
    """Adam (Kingma & Ba) on one small tensor, updated in place, without host syncs.

    Used by the balancers that learn weights with their own optimiser (GradNorm, FAMO).
    `weight_decay` is coupled L2 (added to the gradient) like `torch.optim.Adam`. `ok` (a bool
    tensor) turns a step into a no-op, so non-finite gradients (AMP overflow) are skipped on device.
    State is plain tensors, so it round-trips through `torch.load(weights_only=True)`.
    """

    def __init__(self, n: int, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        import torch

        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.m = torch.zeros(n)
        self.v = torch.zeros(n)
        self.t = torch.zeros(())

    def to(self, device: torch.device | str) -> TinyAdam:
        self.m, self.v, self.t = self.m.to(device), self.v.to(device), self.t.to(device)
        return self

    def step(self, param: Tensor, grad: Tensor, ok: Tensor | None = None) -> None:
        import torch

        with torch.no_grad():
            b1, b2 = self.betas
            if self.weight_decay:
                grad = grad + self.weight_decay * param
            t = self.t + 1
            m = b1 * self.m + (1 - b1) * grad
            v = b2 * self.v + (1 - b2) * grad * grad
            step = self.lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + self.eps)
            if ok is None:
                param.sub_(step)
                self.m, self.v, self.t = m, v, t
            else:
                param.copy_(torch.where(ok, param - step, param))
                self.m = torch.where(ok, m, self.m)
                self.v = torch.where(ok, v, self.v)
                self.t = torch.where(ok, t, self.t)

    def state_dict(self) -> dict[str, Tensor]:
        return {"m": self.m.detach().cpu(), "v": self.v.detach().cpu(), "t": self.t.detach().cpu()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        import torch

        dev = self.m.device
        self.m, self.v, self.t = (state[k].to(dev, torch.float32) for k in ("m", "v", "t"))


BALANCERS: Registry[Balancer] = Registry("balancer")


def option_keys(options: type[BalancerOptions]) -> dict[str, str]:
    """Every key that sets a field of `options` (its name and aliases) -> the field name."""
    keys: dict[str, str] = {}
    for fname, f in options.model_fields.items():
        keys[fname] = fname
        alias = f.validation_alias
        for a in getattr(alias, "choices", [alias] if isinstance(alias, str) else []):
            if isinstance(a, str):
                keys[a] = fname
    return keys


def parse_options(cls: type[Balancer], given: Mapping[str, Any], strict: bool = True,
                  ) -> BalancerOptions:
    """`cls.Options` from the flat option keys of a `balancer:` block. A key of another registered
    balancer is an error when `strict`, else ignored (configs written before options were per
    balancer hold every balancer's defaults); a key no balancer knows is always an error."""
    own = option_keys(cls.Options)
    mine = {k: v for k, v in given.items() if k in own}
    rest = [k for k in given if k not in own]
    foreign = {k: n for n in BALANCERS.names() for k in option_keys(_options_of(n))}
    unknown = [k for k in rest if strict or k not in foreign]
    if unknown:
        k = unknown[0]
        known = ", ".join(sorted(cls.Options.model_fields)) or "none"
        where = f" (an option of {foreign[k]})" if k in foreign else ""
        raise ValueError(f"balancer {cls.name!r} has no option {k!r}{where}; its options: {known}")
    return cls.Options.model_validate(mine)


def _options_of(name: str) -> type[BalancerOptions]:
    return getattr(BALANCERS.get(name), "Options", BalancerOptions)


def resolve_config(cfg: BalancerConfig, strict: bool = False) -> BalancerConfig:
    """`cfg` with exactly its balancer's options, validated and with their defaults filled: what
    config.yaml records. Raises KeyError for an unknown balancer, ValueError for a bad option."""
    cls = BALANCERS.get(cfg.name)
    opts = parse_options(cls, cfg.model_extra or {}, strict=strict)
    if cfg.init_weights and not getattr(cls, "learns_weights", False):
        learners = [n for n in BALANCERS.names() if getattr(BALANCERS.get(n), "learns_weights",
                                                              False)]
        raise ValueError(f"balancer {cfg.name!r} does not learn task weights: init weights "
                         f"apply to {', '.join(learners)} (fixed weights: --weights)")
    init = {"init_weights": dict(cfg.init_weights)} if cfg.init_weights else {}
    return BalancerConfig(name=cfg.name, weights=dict(cfg.weights), **init, **opts.model_dump())
