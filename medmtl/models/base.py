"""The interface every architecture implements, and the ARCHS registry.

An architecture is one file in `medmtl/models/archs/` that registers a builder
`fn(cfg: ModelConfig) -> MultiTaskNet` under a name (`@ARCHS.register("name")`, or with a
`pattern=` for a parametrised family such as `split<k>`); `build_model(cfg)` calls the builder
named by `cfg.arch`. Nothing else in medmtl knows which architectures exist.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence

from torch import Tensor, nn

from ..config import ModelConfig
from ..registry import Registry
from .backbone import OUT_STRIDES


def unique_parameters(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """`params` without repeats, first occurrence kept."""
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def parameters_of(*modules: nn.Module | None) -> list[nn.Parameter]:
    """The parameters of `modules` (None skipped), without repeats, in registration order."""
    return unique_parameters(p for m in modules if m is not None for p in m.parameters())


class MultiTaskNet(nn.Module, ABC):
    """Base class of every architecture: what the trainer, the balancers, evaluation, export and
    inference rely on, and nothing more.

    Attributes (set by `__init__` from the `ModelConfig`):
        `arch` (the name it was built as, e.g. `split2`), `tasks` (tuple, the order of
        `cfg.tasks`), `strides` (detection level strides, default `[8, 16, 32]`), `num_classes`,
        `num_views`, `reg_max`, `size`; `expose_shared` (False; the trainer sets it, see below).

    Must implement:
        `forward(images)`: images float (B, 3, S, S) in [0, 1] (S a multiple of the largest
        stride; any input normalisation is the model's own) -> a dict with one entry per task of
        `tasks`: `"detect"`: a list with one raw map per stride, (B, 4 * reg_max + num_classes,
        S / stride, S / stride) (the `DetectHead` layout); `"classify"`: logits (B, num_views).
        `task_reach(task)`: every parameter that task's loss can send a gradient to.
        (tests/test_models.py checks it against autograd for the built-in archs: keep it exact.)

    Derived from `task_reach` (override only for a different order or a cheaper rule):
        `shared_parameters()`: what every task reaches ([] with one task); the balancers'
        gradient surgery and the interference diagnostics work on these.
        `task_parameters(task)`: `task_reach(task)` minus the shared ones.

    Optional, with safe defaults:
        `last_shared_parameter()`: the weight GradNorm measures task gradients on; default: the
        last shared parameter with >= 2 dimensions (a conv / linear weight) in registration
        order, None when nothing is shared (GradNorm then keeps its weights). Override it when
        modules are registered in another order than they run.
        `shared_stages()`: shared parameters grouped into named stages for per-stage
        diagnostics; default [] (no per-stage numbers).
        `shared_boundary_valid()`: True only if, with `expose_shared` set, a training forward
        leaves in `self.shared_features` the tensors through which the task branches consume the
        shared parameters (and nothing else of the shared graph), so that one backward from them
        covers every shared parameter; default False, which keeps GradNorm on its plain path.
        `take_shared_features()`: hands those tensors over once (and forgets them); by default
        whatever the forward left in `self.shared_features` (None: nothing).
    """

    def __init__(self, cfg: ModelConfig, arch: str | None = None,
                 strides: Sequence[int] = OUT_STRIDES) -> None:
        super().__init__()
        self.arch = arch if arch is not None else cfg.arch
        self.tasks = tuple(cfg.tasks)
        self.strides = list(strides)
        self.num_classes, self.num_views, self.reg_max = cfg.num_classes, cfg.num_views, cfg.reg_max
        self.size = cfg.size
        # An attribute, not an output: wrappers such as DDP may replace output tensors.
        self.expose_shared = False
        self.shared_features: list[Tensor] | None = None

    # --- must implement ----------------------------------------------------------------------
    @abstractmethod
    def forward(self, images: Tensor) -> dict[str, Tensor | list[Tensor]]: ...

    @abstractmethod
    def task_reach(self, task: str) -> list[nn.Parameter]: ...

    # --- derived -----------------------------------------------------------------------------
    def check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise KeyError(f"task {task!r} not in {self.tasks}")

    def shared_parameters(self) -> list[nn.Parameter]:
        if len(self.tasks) < 2:
            return []
        first, *rest = self.tasks
        common = set.intersection(*({id(p) for p in self.task_reach(t)} for t in rest))
        return [p for p in self.task_reach(first) if id(p) in common]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        shared = {id(p) for p in self.shared_parameters()}
        return [p for p in self.task_reach(task) if id(p) not in shared]

    # --- optional ----------------------------------------------------------------------------
    def last_shared_parameter(self) -> nn.Parameter | None:
        shared = {id(p) for p in self.shared_parameters()}
        weights = [p for p in self.parameters() if id(p) in shared and p.dim() >= 2]
        return weights[-1] if weights else None

    def shared_stages(self) -> list[tuple[str, list[nn.Parameter]]]:
        return []

    def shared_boundary_valid(self) -> bool:
        return False

    def take_shared_features(self) -> list[Tensor] | None:
        feats, self.shared_features = self.shared_features, None
        return feats


ArchBuilder = Callable[[ModelConfig], MultiTaskNet]

ARCHS: Registry[MultiTaskNet] = Registry("arch")
