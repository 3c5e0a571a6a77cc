"""The Trainer: builds a run's pieces and orchestrates epochs, validation, checkpoints and the
final scoring. The pieces live in files of their own:

| file            | what                                                                     |
|-----------------|--------------------------------------------------------------------------|
| data_setup.py   | the splits, datasets and persistent loaders (per-rank slices)            |
| loop.py         | `train_one_epoch` (steps, accumulation, DDP sync, compile guard), `evaluate` |
| optim.py        | optimiser, warm-up + cosine schedule, the optimiser step                 |
| run_state.py    | counters, checkpoint dict, resume, stop signals                          |
| history.py      | history.csv                                                              |
| ../losses/criterion.py | model output + batch -> per-task losses                           |

Resumable to the step (run_state.py). Data parallel under torchrun (medmtl/distributed.py):
`cfg.batch` is the global batch; rank r takes the r-th slice of every global batch of the same
epoch order, so N processes train on exactly the batches one process would. Rank 0 alone writes the
run directory; validation is sharded over the ranks and scored on rank 0.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from medmtl.balancing import create_balancer, resolve_config
from medmtl.config import TrainConfig
from medmtl.devices import use_channels_last
from medmtl.distributed import (
    cleanup,
    convert_sync_batchnorm,
    init_distributed,
    world_size_from_env,
)
from medmtl.engine.checkpoint import atomic_write_text, remove_stale_temps, save_checkpoint
from medmtl.engine.data_setup import RunData
from medmtl.engine.ema import ModelEMA
from medmtl.engine.history import training_summary, val_columns, write_history
from medmtl.engine.loop import (
    NonFiniteGuard,
    balancer_after_step,
    evaluate,
    flush_sums,
    forward_losses,
    global_losses,
    micro_step,
    train_one_epoch,
)
from medmtl.engine.optim import WarmupCosine, build_optimizer, optimizer_step
from medmtl.engine.plugin_api import MethodPlugin
from medmtl.engine.plugins import plugin_classes
from medmtl.engine.progress import epoch_line
from medmtl.engine.run_state import (
    RunState,
    StopAtStep,
    StopSignals,
    backbone_source,
    checkpoint_dict,
    keep_selection_rule,
    restore,
)
from medmtl.engine.runlock import RunLock
from medmtl.engine.stages import copy_source_files
from medmtl.engine.utils import amp_dtype, compile_module, seed_everything, select_device
from medmtl.errors import NonFiniteError
from medmtl.evaluation.selection import describe, selection_score
from medmtl.losses import MultiTaskCriterion
from medmtl.models import build_model
from medmtl.models.checkpoint import load_checkpoint, load_weights, nonfinite_tensors


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, progress: bool = True,
                 console: Console | None = None) -> None:
        self.run_dir = Path(cfg.out)
        self.lock: RunLock | None = None
        if world_size_from_env() <= 1 or int(os.environ.get("RANK", "0")) == 0:  # one writer
            self.lock = RunLock(self.run_dir).acquire()
            if self.lock.stale_owner and progress:
                Console(stderr=True).print(f"{self.run_dir}: took over the lock of "
                                           f"{self.lock.stale_owner}, which is gone")
        try:
            self._setup(cfg, resume, progress, console)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run folder (the lock); the end of `fit` does it."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _setup(self, cfg: TrainConfig, resume: bool, progress: bool,
               console: Console | None) -> None:
        ckpt = None
        last = self.run_dir / "weights" / "last.pt"
        removed = remove_stale_temps(self.run_dir / "weights")
        if resume:
            ckpt = load_checkpoint(last)
            cfg = TrainConfig.model_validate(ckpt["config"])
        elif last.exists():
            raise FileExistsError(f"{self.run_dir} already holds a run (weights/last.pt): pass "
                                  "--resume to continue it or choose another --out")
        cfg.balancer = resolve_config(cfg.balancer)  # exactly its balancer's options, filled
        self.cfg = cfg
        world = world_size_from_env()  # checked before joining the process group
        if cfg.batch % world:
            raise ValueError(f"--batch {cfg.batch} is the global batch and must be divisible by the "
                             f"{world} processes")
        self.comm, ddp_device = init_distributed(cfg.device)
        self.is_main = self.comm.is_main
        self.console = console or Console(stderr=True, quiet=not self.is_main, soft_wrap=True)
        self.progress = progress and self.is_main
        if removed:
            self.console.print(f"removed {len(removed)} partial checkpoint file(s) left by a "
                               f"killed save: {', '.join(p.name for p in removed)}")
        seed_everything(cfg.seed, cfg.deterministic)
        self.device = ddp_device or select_device(cfg.device)
        if self.device.type == "cpu":
            # denormal floats appear in gradients of small random-init models and make x86 CPU
            # steps several times slower; flushing them to zero costs no measurable accuracy
            torch.set_flush_denormal(True)
        self.autocast = amp_dtype(self.device, cfg.amp)

        self.data = RunData(cfg, self.comm, self.device, self.console, self.run_dir)
        self.names, self.cls_names = self.data.names, self.data.cls_names
        cfg.model.num_classes, cfg.model.num_views = len(self.names), len(self.cls_names)
        self.model = build_model(cfg.model)
        # the method's plug-ins (staged, distill, auto, or one of a package): hooks, no branches
        self.plugins: list[MethodPlugin] = [c(cfg) for c in plugin_classes(cfg)]
        for p in self.plugins if ckpt is None else ():
            line = p.init_model(self.model, self.names, self.cls_names, world > 1)
            if line:
                self.console.print(line)
        if cfg.sync_bn and self.comm.active:
            self.model = convert_sync_batchnorm(self.model, self.device)
        self.model = self.model.to(self.device)
        self.channels_last = use_channels_last(cfg.channels_last, self.device, self.model)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.tasks = tuple(self.model.tasks)
        # the balancer's tasks: the model's, then the plug-ins' loss terms (distill)
        extra = tuple(k for p in self.plugins for k in p.extra_tasks())
        self.loss_tasks = (*self.tasks, *extra)
        self.criterion = MultiTaskCriterion(self.tasks, cfg.model.num_classes,
                                            cfg.model.num_views, cfg.model.reg_max,
                                            self.model.strides, cfg.loss,
                                            self.data.view_counts(), self.data.corruption_matrix)
        self.balancer = create_balancer(self.loss_tasks, cfg.balancer)
        self.balancer.comm = self.comm
        self.balancer.detailed_log = False  # no per-step host sync for a log nobody reads
        # GradNorm's fast path: the model hands out the trunk's output features
        self.task_params = None
        if self.balancer.uses_split and self.model.shared_boundary_valid():
            self.model.expose_shared = True
            self.task_params = {t: self.model.task_parameters(t) for t in self.tasks}
            for k in extra:  # a plug-in's loss term reaches every task branch
                self.task_params[k] = [p for t in self.tasks for p in self.task_params[t]]
        self.balancer.to(self.device)
        self.net = self._wrap_model()
        self.refresh_shared()
        self.optimizer = build_optimizer(self.model, list(self.balancer.parameters()), cfg,
                                         self.device)
        self.steps_per_epoch = max(1, self.data.batches_per_epoch() // cfg.accumulate)
        # epochs of --epochs a plug-in spent before this run (--arch auto's probe)
        self.spent_epochs = sum(p.budget_epochs(self.run_dir) for p in self.plugins)
        self.total_steps = self.steps_per_epoch * self.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(cfg, self.steps_per_epoch, self.total_steps))
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast == torch.float16 else None
        self.ema = ModelEMA(self.model, cfg.ema_decay, tau=max(100.0, self.total_steps / 20)) \
            if cfg.ema else None
        for p in self.plugins:
            p.setup(self)

        self.state = RunState()
        self.stop = StopSignals(self.console.print)
        self.nonfinite = NonFiniteGuard(cfg.nonfinite_limit, self.run_dir)
        self.loss_sums: dict[str, torch.Tensor] = {}
        if ckpt is not None:
            self.state = restore(ckpt, self.model, self.ema, self.optimizer, self.scheduler,
                                 self.scaler, self.balancer, last)
            self.console.print(f"resuming {self.run_dir} at epoch {self.state.epoch + 1}, "
                               f"step {self.state.step_in_epoch}")
            keep_selection_rule(self.cfg, ckpt.get("config") or {}, self.console.print)

    @property
    def epochs(self) -> int:
        """The epochs this run trains: --epochs less those a plug-in spent (auto's probe)."""
        return self.cfg.epochs - self.spent_epochs

    def start_from(self, state: dict[str, Any]) -> None:
        """Begin from these weights (e.g. `--arch auto`'s probe), the EMA too."""
        self.model.load_state_dict(state, strict=True)
        if self.ema is not None:
            self.ema.module.load_state_dict(self.model.state_dict())

    @property
    def val_index(self) -> Any:
        return self.data.val_index

    @property
    def train_index(self) -> Any:
        return self.data.train_index

    def _wrap_model(self) -> torch.nn.Module:
        """The module the training forward runs through: DDP around the model when distributed,
        then `torch.compile` when asked (falling back to eager if compilation fails). `eager` is
        the uncompiled one (DDP's `no_sync` lives there)."""
        net: torch.nn.Module = self.model
        self.eager = net
        if self.comm.active:
            from torch.nn.parallel import DistributedDataParallel

            # with partial labels a global batch may lack a task, leaving its head without
            # gradients; DDP must then look for unused parameters (a graph walk per step)
            partial = len(self.tasks) > 1 and self.data.partial_labels()
            net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=partial)
            self.eager = net
        self.compile_checked = False
        if self.cfg.compile and self.balancer.backward_passes > 1:
            # a compiled model is one autograd node: every partial or per-task backward
            # recomputes the whole model's backward (measured: GradNorm 2.8x, PCGrad 1.4x slower
            # per step than eager on the CPU, docs/benchmarks.md)
            self.console.print(f"[yellow]--compile ignored: {self.balancer.name} runs "
                               f"{self.balancer.backward_passes} backward passes per step, each "
                               "of which would recompute the whole compiled model[/]")
        elif self.cfg.compile:
            net = compile_module(net)
        return net

    # ------------------------------------------------------------------ the step (TrainStep)
    def refresh_shared(self) -> None:
        """The shared parameters that train now (a plug-in may have frozen some), and GradNorm's
        last shared weight (None while it is frozen)."""
        self.shared = [p for p in self.model.shared_parameters() if p.requires_grad]
        last = self.model.last_shared_parameter()
        self.last_shared = last if last is not None and last.requires_grad else None

    def amp_context(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.autocast,
                              enabled=self.autocast is not None)

    def forward_losses(self, batch: dict[str, Any], present: Any, net: Any = None
                       ) -> tuple[dict[str, torch.Tensor], Any]:
        return forward_losses(self, batch, present, self.net if net is None else net)

    def optimizer_step(self, n_micro: int, losses: Any = None) -> bool:
        return optimizer_step(self.model, self.optimizer, self.scheduler, self.scaler, self.ema,
                              self.balancer, self.comm, n_micro, self.cfg.clip_grad,
                              None if losses is None else list(losses))

    def train_step(self, batch: dict[str, Any], present: Any, acc: dict[str, Any],
                   diagnose: bool = True) -> dict[str, torch.Tensor]:
        losses, _ = micro_step(self, batch, present, 0, 1 if diagnose else 0, acc)
        if self.optimizer_step(1, list(losses.values())):
            balancer_after_step(self, batch, present, global_losses(self.comm, losses))
        return losses

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, with_optimizer: bool = True) -> dict[str, Any]:
        extra = (self.optimizer, self.scheduler, self.scaler, self.balancer) if with_optimizer \
            else ()
        return checkpoint_dict(self.state, self.model, self.ema, self.cfg.model_dump(mode="json"),
                               self.names, self.cls_names, *extra)

    def save_last(self) -> None:
        if self.is_main:
            self._check_finite()
            save_checkpoint(self._checkpoint(), self.run_dir / "weights" / "last.pt")

    def _check_finite(self) -> None:
        """No checkpoint is saved with NaN/inf weights: the run stops, keeping the last good one."""
        bad = nonfinite_tensors(self.model.state_dict())
        if self.ema:
            bad += [f"ema.{k}" for k in nonfinite_tensors(self.ema.module.state_dict())]
        if bad:
            last = self.run_dir / "weights" / "last.pt"
            kept = f"the last good checkpoint is {last}" if last.exists() else \
                "no checkpoint was saved"
            raise NonFiniteError(f"{self.run_dir}: weights turned non-finite (NaN/inf) at epoch "
                                 f"{self.state.epoch} in {len(bad)} tensor(s), first "
                                 f"{', '.join(bad[:3])}; not saved ({kept}). Lower --lr or "
                                 "check the data")

    # ------------------------------------------------------------------ loop
    def fit(self, finalize: Callable[[Trainer], Any] | None = None) -> Path:
        """Train the remaining epochs, then score: `finalize(self)` when given (e.g. the label-issue
        fold runs score their final weights on the held-out fold), else `Trainer.finalize`
        (metrics.json of the best checkpoint). Scoring happens while the run folder is held."""
        cfg, st = self.cfg, self.state
        if self.is_main:
            (self.run_dir / "weights").mkdir(parents=True, exist_ok=True)
            cfg.to_yaml(self.run_dir / "config.yaml")
            copy_source_files(self.run_dir, [d for p in self.plugins for _, d in p.sources()])
        bad_epochs = 0
        run_t0, start_epoch = time.perf_counter(), st.epoch
        with self.stop, contextlib.ExitStack() as stack:
            stack.callback(self.close)
            try:
                while st.epoch < self.epochs:
                    row = train_one_epoch(self)
                    self._check_finite()
                    validate = (st.epoch + 1) % cfg.val_every == 0 or st.epoch + 1 == self.epochs
                    improved = False
                    if validate:
                        metrics = self.validate()
                        row.update(val_columns(metrics))
                        fit = selection_score(metrics, cfg.select, cfg.select_refs)
                        improved = math.isfinite(fit) and fit > st.best_fitness
                        if improved:
                            st.best_fitness, st.best_epoch = fit, st.epoch
                    st.history.append(row)
                    if self.is_main:
                        write_history(self.run_dir / "history.csv", st.history)
                    self._print_epoch(row, run_t0, st.epoch + 1 - start_epoch)
                    st.epoch += 1
                    st.step_in_epoch = 0
                    st.epoch_acc = {}
                    self.save_last()
                    if improved:
                        if self.is_main:
                            save_checkpoint(self._checkpoint(with_optimizer=False),
                                            self.run_dir / "weights" / "best.pt")
                        bad_epochs = 0
                    elif validate:
                        bad_epochs += 1
                    if cfg.patience and bad_epochs >= cfg.patience:
                        self.console.print(f"early stop: no improvement for {bad_epochs} "
                                           "validations")
                        break
            except StopAtStep:
                # stopped at an optimiser-step boundary after a signal: the saved state is exactly
                # what an uninterrupted run had at this point and --resume replays the rest
                flush_sums(self, self.loss_sums, force=True)
                self.save_last()
                self.console.print(f"interrupted: state saved to "
                                   f"{self.run_dir / 'weights/last.pt'}; continue with --resume")
                raise KeyboardInterrupt from None
            self.comm.barrier()  # best.pt is written before any rank reads it
            (finalize or Trainer.finalize)(self)
        return self.run_dir

    def _print_epoch(self, row: dict[str, Any], run_t0: float, done: int) -> None:
        """One unwrapped line per epoch (terminal and log file alike); the ETA extrapolates the
        mean time of this process's epochs so far, validation included."""
        left = self.epochs - (self.state.epoch + 1)
        eta = (time.perf_counter() - run_t0) / max(done, 1) * left
        self.console.print(epoch_line(row, self.epochs, eta), soft_wrap=True, markup=False,
                           highlight=False)

    # ------------------------------------------------------------------ evaluation
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema else self.model

    def validate(self, out_dir: Path | None = None, plots: bool = False,
                 split: str = "val") -> dict[str, Any]:
        """Scores of the evaluation model (EMA if on) on the val (or test) split."""
        return evaluate(self, self.eval_model(), out_dir, plots, split)

    def finalize(self) -> dict[str, Any]:
        """metrics.json from the best checkpoint (chosen on val), with the COCO exports and plots
        under eval/; with a test split, its scores as the `test` block and its exports under
        eval/test/. The top-level keys stay the val scores (outside tools read them)."""
        best = self.run_dir / "weights" / "best.pt"
        if best.exists():
            ck = load_checkpoint(best)
            load_weights(self.eval_model(), ck["ema"]["module"] if ck.get("ema") else ck["model"],
                         best)
        metrics = self.validate(out_dir=self.run_dir / "eval", plots=True)
        test = None
        if self.data.test_set is not None:
            test = self.validate(out_dir=self.run_dir / "eval" / "test", plots=True, split="test")
        if not self.is_main:
            return metrics
        if test is not None:
            metrics["test"] = test
        metrics["selection"] = {"split": "val",
                                "test_split": self.cfg.test_split if test is not None else None,
                                **describe(self.cfg.select, self.cfg.select_refs, metrics)}
        metrics["data"] = self.data.data_record()
        metrics["backbone_weights"] = backbone_source(self.model)
        from medmtl.engine.abstention import record_abstention
        from medmtl.inference.efficiency import efficiency

        metrics["view_abstention"] = record_abstention(self.run_dir, best)  # into best.pt too
        metrics["efficiency"] = efficiency(self.eval_model(), self.cfg.imgsz, best)
        metrics["training"] = training_summary(self)
        for p in self.plugins:  # --arch auto: the choice
            metrics.update(p.record(self.run_dir))
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2))
        return metrics


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train per `cfg`, writing the run directory; returns its path. Under torchrun every process
    calls this; the process group is torn down at the end."""
    trainer = None
    try:
        start = None
        for plugin in plugin_classes(cfg) if not resume else ():  # auto: probe, choose
            cfg, state = plugin.prepare(cfg, Trainer)
            start = state if state is not None else start
        trainer = Trainer(cfg, resume=resume, progress=progress)
        if start is not None:
            trainer.start_from(start)
        return trainer.fit()
    finally:
        if trainer is not None:
            trainer.close()
            cleanup(trainer.comm)


__all__ = ["Trainer", "train"]
