"""The method plug-in interface: what a method does beyond its preset's config, as typed hooks.

A *method* (`medmtl.methods`) is a preset (arch, balancer and their options) and, for the hybrids,
one or more plug-ins: `MethodPlugin` subclasses registered in `PLUGINS`. The trainer knows no
method. It asks which plug-ins a run uses (`uses(cfg)`: a config field, such as `--init-from`,
or the name listed in `cfg.plugins`) and calls every hook of every one at fixed points:

| hook                               | when                                | built-in use             |
|------------------------------------|-------------------------------------|--------------------------|
| `prepare(cfg, trainer_cls)`        | before the trainer is built (class) | auto: probe, choose arch |
| `init_model(model, names, ...)`    | model built, before it moves        | staged: source's weights |
| `extra_tasks()`                    | the balancer's tasks                | distill: `distill`       |
| `setup(step)`                      | every piece of the trainer built    | distill: teacher, tap    |
| `on_epoch_start(step, epoch)`      | each epoch, after `model.train()`   | staged: trunk frozen     |
| `extra_losses(step, images, ...)`  | each forward, after the task losses | distill: the KD loss     |
| `stage(epoch)`                     | history.csv's `stage` column        | staged, distill          |
| `budget_epochs(run_dir)`           | epochs of `--epochs` already spent  | auto: the probe's        |
| `sources()`, `stages_before()`     | metrics.json `training.stages`      | staged, distill, auto    |
| `record()`                         | extra metrics.json blocks           | auto: `auto_branch`      |

A hook that is not overridden does nothing. The trainer reaches a plug-in through `TrainStep`, the
typed view of itself that every hook and the probe of `--arch auto` use (no private trainer
calls). A new hybrid is one file: a `MethodPlugin` subclass under `@PLUGINS.register(name)` plus a
preset naming it (`medmtl.methods.register_method(name, {..., "plugins": [name]})`); a package
makes both visible to the command line through the `medmtl.plugins` entry-point group
(docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from medmtl.registry import Registry

if TYPE_CHECKING:  # torch loads with the trainer, not with the CLI's help
    import torch
    from rich.console import Console
    from torch import Tensor, nn

    from medmtl.config import TrainConfig


class TrainStep(Protocol):
    """What a plug-in (and `--arch auto`'s probe) may use of a trainer: its pieces and three
    operations. `medmtl.engine.trainer.Trainer` implements it."""

    cfg: TrainConfig
    run_dir: Path
    model: nn.Module
    device: torch.device
    console: Console
    data: Any  # medmtl.engine.data_setup.RunData
    criterion: Any  # medmtl.losses.MultiTaskCriterion
    balancer: Any  # medmtl.balancing.Balancer
    comm: Any  # medmtl.distributed.Comm
    tasks: tuple[str, ...]
    channels_last: bool
    names: list[str]
    cls_names: list[str]

    def amp_context(self) -> Any:
        """The run's autocast context (mixed precision on CUDA; disabled otherwise)."""

    def forward_losses(self, batch: dict[str, Any], present: Mapping[str, bool],
                       net: Any = None) -> tuple[dict[str, Tensor], Any]:
        """One forward of `batch` (through the DDP-wrapped net, or `net`) and every loss: the
        tasks', then each plug-in's `extra_losses`; also the shared features GradNorm's fast path
        uses (None when the model kept none)."""

    def train_step(self, batch: dict[str, Any], present: Mapping[str, bool],
                   acc: dict[str, Any], diagnose: bool = True) -> dict[str, Tensor]:
        """Forward, losses, gradient diagnostics (into `acc`) and the balancer's backward of one
        micro-batch, then the optimiser step and the balancer's `after_step`. Returns the
        losses."""

    def optimizer_step(self, n_micro: int, losses: Sequence[Tensor] | None = None) -> bool:
        """The optimiser step after `n_micro` micro-batches (False: skipped, non-finite)."""

    def refresh_shared(self) -> None:
        """Re-read the shared parameters after a plug-in froze or released some."""


class MethodPlugin:
    """A hybrid method's behaviour. Subclass, override the hooks you need, register with
    `@PLUGINS.register("name")`. One instance per run, made by the trainer from the run's config."""

    name: ClassVar[str] = ""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    @classmethod
    def uses(cls, cfg: TrainConfig) -> bool:
        """Whether a run with `cfg` uses this plug-in; by default, when `cfg.plugins` names it."""
        return cls.name in cfg.plugins

    # --- before training -----------------------------------------------------------------------
    @classmethod
    def prepare(cls, cfg: TrainConfig, trainer_cls: type[Any]
                ) -> tuple[TrainConfig, dict[str, Tensor] | None]:
        """Before the run's trainer is built (not on resume): the config it trains with and the
        weights it starts from (None: its own initialisation)."""
        return cfg, None

    def init_model(self, model: nn.Module, names: list[str], cls_names: list[str],
                   distributed: bool) -> str | None:
        """Initialise the freshly built model (not on resume); a line for the log, or None."""
        return None

    def extra_tasks(self) -> tuple[str, ...]:
        """Loss terms this plug-in adds, weighed by the balancer as tasks of their own. Under
        GradNorm's fast path an extra term is taken to reach every task branch."""
        return ()

    def setup(self, step: TrainStep) -> None:
        """Every piece of the trainer exists (model on its device, criterion, balancer)."""

    # --- during training -----------------------------------------------------------------------
    def on_epoch_start(self, step: TrainStep, epoch: int) -> None:
        """Epoch `epoch` (0-based) begins; the model is in train mode."""

    def extra_losses(self, step: TrainStep, images: Tensor, batch: dict[str, Any],
                     out: dict[str, Any]) -> dict[str, Tensor]:
        """Loss terms of this forward (`extra_tasks` names them) from the model's output."""
        return {}

    def stage(self, epoch: int) -> str | None:
        """The name of the training stage of `epoch` (history.csv), or None."""
        return None

    # --- the record ----------------------------------------------------------------------------
    def budget_epochs(self, run_dir: Path) -> int:
        """Epochs of `--epochs` spent before this run's training (they are not trained again)."""
        return 0

    def sources(self) -> list[tuple[str, str]]:
        """(kind, run dir) of every finished run this one starts from (their cost counts)."""
        return []

    def stages_before(self, run_dir: Path) -> list[dict[str, Any]]:
        """Training stages of this run before its own training (metrics.json)."""
        return []

    def record(self, run_dir: Path) -> dict[str, Any]:
        """Extra top-level metrics.json blocks."""
        return {}


PLUGINS: Registry[MethodPlugin] = Registry("method plug-in")


def stage_label(plugins: Sequence[MethodPlugin], epoch: int) -> str | None:
    """history.csv's `stage` of `epoch`: the plug-ins' names of it, joined by '+'; None without."""
    names = [s for p in plugins if (s := p.stage(epoch))]
    return "+".join(names) if names else None


__all__ = ["PLUGINS", "MethodPlugin", "TrainStep", "stage_label"]
