"""One training loop for any set of tasks, any architecture and any balancer.

Resumable to the step: the sample order of an epoch is a pure function of (seed, epoch), so a run
killed (or interrupted with Ctrl-C) and resumed from `weights/last.pt` replays exactly what an
uninterrupted run would have done.

Data parallel under torchrun (medmtl/distributed.py): `cfg.batch` is the global batch; rank r takes
the r-th slice of every global batch of the same epoch order, so N processes train on exactly the
batches one process would. Rank 0 alone writes the run directory; validation is sharded over the
ranks and scored on rank 0.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from medmtl.balancing import create_balancer
from medmtl.balancing.base import TaskSplit
from medmtl.config import TrainConfig
from medmtl.data import MTLDataset, collate, load_data_yaml, scan_split
from medmtl.distributed import (
    average_gradients,
    cleanup,
    convert_sync_batchnorm,
    init_distributed,
    world_size_from_env,
)
from medmtl.engine.checkpoint import atomic_write_text, save_checkpoint
from medmtl.engine.ema import ModelEMA
from medmtl.engine.evaluate import (
    fitness,
    merge_inference,
    move_targets,
    prepare_images,
    run_inference,
    score,
)
from medmtl.engine.progress import EpochProgress
from medmtl.engine.utils import (
    amp_dtype,
    compile_module,
    peak_memory_mb,
    rng_state,
    seed_everything,
    select_device,
    set_rng_state,
)
from medmtl.evaluation.interference import gradient_interference
from medmtl.losses import DetectionLoss, ViewLoss
from medmtl.models import build_model
from medmtl.models.checkpoint import load_checkpoint

BASE_COLUMNS = ["epoch", "loss/detect", "loss/classify", "weight/detect", "weight/classify",
                "grad_cos", "grad_norm_ratio", "lr", "seconds", "step_ms", "backward_passes",
                "peak_mem_mb"]


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, progress: bool = True,
                 console: Console | None = None) -> None:
        self.run_dir = Path(cfg.out)
        ckpt = None
        last = self.run_dir / "weights" / "last.pt"
        if resume:
            ckpt = load_checkpoint(last)
            cfg = TrainConfig.model_validate(ckpt["config"])
        elif last.exists():
            raise FileExistsError(f"{self.run_dir} already holds a run (weights/last.pt): pass "
                                  "--resume to continue it or choose another --out")
        self.cfg = cfg
        world = world_size_from_env()  # checked before joining the process group
        if cfg.batch % world:
            raise ValueError(f"--batch {cfg.batch} is the global batch and must be divisible by the "
                             f"{world} processes")
        self.comm, ddp_device = init_distributed(cfg.device)
        self.is_main = self.comm.is_main
        self.console = console or Console(stderr=True, quiet=not self.is_main)
        self.progress = progress and self.is_main
        self.local_batch = cfg.batch // self.comm.world_size
        seed_everything(cfg.seed, cfg.deterministic)
        self.device = ddp_device or select_device(cfg.device)
        if self.device.type == "cpu":
            # denormal floats appear in gradients of small random-init models and make x86 CPU
            # steps several times slower; flushing them to zero costs no measurable accuracy
            torch.set_flush_denormal(True)
        self.autocast = amp_dtype(self.device, cfg.amp)
        self.channels_last = self.device.type == "cuda"

        self._build_data()
        self._loaders: dict[str, torch.utils.data.DataLoader] = {}
        self.model = build_model(cfg.model)
        if cfg.sync_bn and self.comm.active:
            self.model = convert_sync_batchnorm(self.model, self.device)
        self.model = self.model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.tasks = tuple(self.model.tasks)
        self.det_loss = DetectionLoss(cfg.model.num_classes, cfg.model.reg_max,
                                      list(self.model.strides), cfg.loss)
        self.view_loss = ViewLoss(cfg.model.num_views, cfg.loss)
        self.balancer = create_balancer(self.tasks, cfg.balancer)
        self.balancer.comm = self.comm
        self.balancer.detailed_log = False  # no per-step host sync for a log nobody reads
        # GradNorm's fast path: the model hands out the trunk's output features
        self._task_params = None
        if self.balancer.uses_split and self.model.shared_boundary_valid():
            self.model.expose_shared = True
            self._task_params = {t: self.model.task_parameters(t) for t in self.tasks}
        self.balancer.to(self.device)
        self.net = self._wrap_model()
        self.shared = list(self.model.shared_parameters())
        self.last_shared = self.model.last_shared_parameter()
        self.optimizer = self._build_optimizer()
        self.steps_per_epoch = max(1, self.batches_per_epoch() // cfg.accumulate)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda)
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast == torch.float16 else None
        self.ema = ModelEMA(self.model, cfg.ema_decay, tau=max(100.0, self.total_steps / 20)) \
            if cfg.ema else None

        self.epoch = 0
        self.step_in_epoch = 0  # optimiser steps already done in self.epoch (mid-epoch resume)
        self.best_fitness = -math.inf
        self.best_epoch = -1
        self.history: list[dict[str, Any]] = []
        self.epoch_acc: dict[str, float] = {}  # running sums of the epoch (plain floats)
        self._rng_at_step: dict[str, Any] | None = None
        self._stop_requested = False
        self._sums: dict[str, torch.Tensor] = {}
        self.train_seconds = 0.0
        if ckpt is not None:
            self._load_state(ckpt)
            self.console.print(f"resuming {self.run_dir} at epoch {self.epoch + 1}, "
                               f"step {self.step_in_epoch}")

    # ------------------------------------------------------------------ set-up
    def _build_data(self) -> None:
        cfg = self.cfg
        spec = load_data_yaml(cfg.data)
        self.names, self.cls_names = list(spec.names), list(spec.cls_names)
        cfg.model.num_classes, cfg.model.num_views = len(self.names), len(self.cls_names)
        self.train_index = scan_split(spec, "train", strict=cfg.strict)
        self.val_index = scan_split(spec, "val", strict=cfg.strict)
        for name, idx in (("train", self.train_index), ("val", self.val_index)):
            _print_summary(self.console, name, idx)
        self.train_set = MTLDataset(self.train_index.records, cfg.imgsz, train=True,
                                    augment=cfg.augment, cache=cfg.cache, seed=cfg.seed)
        self.val_set = MTLDataset(self.val_index.records, cfg.imgsz, train=False,
                                  augment=cfg.augment, cache=cfg.cache, seed=cfg.seed)
        if self.comm.active and len(self.train_set) < cfg.batch:
            raise ValueError(f"{cfg.data}: {len(self.train_set)} training images, fewer than the "
                             f"global batch {cfg.batch}: lower --batch or --devices")

    def _wrap_model(self) -> torch.nn.Module:
        """The module the training forward runs through: DDP around the model when distributed,
        then `torch.compile` when asked (falling back to eager if compilation fails). `_eager` is
        the uncompiled one (DDP's `no_sync` lives there)."""
        net: torch.nn.Module = self.model
        self._eager = net
        if self.comm.active:
            from torch.nn.parallel import DistributedDataParallel

            # with partial labels a global batch may lack a task, leaving its head without
            # gradients; DDP must then look for unused parameters (a graph walk per step)
            partial = len(self.tasks) > 1 and any(
                not (r.has_boxes and r.has_view) for r in self.train_index.records)
            net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=partial)
            self._eager = net
        self._compile_checked = False
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

    def batches_per_epoch(self) -> int:
        n, b = len(self.train_set), self.cfg.batch
        return n // b if n > b else 1  # a ragged last batch is dropped (BatchNorm)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (decay if p.ndim > 1 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        extra = list(self.balancer.parameters())
        if extra:
            groups.append({"params": extra, "weight_decay": 0.0})
        fused = {"fused": True} if self.device.type == "cuda" else {}
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999), **fused)

    def _lr_lambda(self, step: int) -> float:
        warm = max(1, int(self.cfg.warmup_epochs * self.steps_per_epoch))
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, self.total_steps - warm)
        floor = self.cfg.min_lr_ratio
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    def _loader(self, dataset: MTLDataset, indices: list[int], train: bool) -> torch.utils.data.DataLoader:
        """One DataLoader per split for the whole run, so worker processes start once (not once
        per epoch); each epoch only swaps the sampler's index list. Augmentation draws from
        (seed, epoch, index) through the dataset's shared epoch, never from worker seeds."""
        cfg = self.cfg
        key = "train" if train else "val"
        loader = self._loaders.get(key)
        if loader is None:
            sampler = _IndexSampler()
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=self.local_batch, sampler=sampler, collate_fn=collate,
                num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
                drop_last=train and len(dataset) > cfg.batch,
                persistent_workers=cfg.workers > 0,
                generator=torch.Generator().manual_seed(cfg.seed * 100003 + (0 if train else 7)))
            self._loaders[key] = loader
        loader.sampler.indices = list(indices)
        return loader

    def rank_indices(self, order: list[int], first_batch: int, end_batch: int) -> list[int]:
        """This rank's samples of global batches [first_batch, end_batch): the rank-th slice of
        each (all of them in a single process)."""
        b, lb, r = self.cfg.batch, self.local_batch, self.comm.rank
        if not self.comm.active:
            return order[first_batch * b: end_batch * b]
        return [i for k in range(first_batch, end_batch)
                for i in order[k * b + r * lb: k * b + (r + 1) * lb]]

    def epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch)
        return torch.randperm(len(self.train_set), generator=g).tolist()

    # ------------------------------------------------------------------ state
    def _state(self, with_optimizer: bool = True) -> dict[str, Any]:
        st: dict[str, Any] = {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "config": self.cfg.model_dump(mode="json"),
            "names": self.names, "cls_names": self.cls_names,
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "best_fitness": self.best_fitness, "best_epoch": self.best_epoch,
            "history": self.history, "train_seconds": self.train_seconds,
        }
        if with_optimizer:
            st.update({
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "balancer": self.balancer.state_dict(),
                "epoch_acc": dict(self.epoch_acc),
                # the RNG as it was at the last optimiser-step boundary, where a resume restarts
                "rng": self._rng_at_step or rng_state(),
            })
        return st

    def _load_state(self, ck: dict[str, Any]) -> None:
        self.model.load_state_dict(ck["model"])
        if self.ema and ck.get("ema"):
            self.ema.load_state_dict(ck["ema"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        if self.scaler and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.balancer.load_state_dict(ck["balancer"])
        self.epoch, self.step_in_epoch = int(ck["epoch"]), int(ck["step_in_epoch"])
        self.best_fitness, self.best_epoch = float(ck["best_fitness"]), int(ck["best_epoch"])
        self.history = list(ck["history"])
        self.epoch_acc = dict(ck.get("epoch_acc") or {})
        self.train_seconds = float(ck.get("train_seconds", 0.0))
        set_rng_state(ck["rng"])

    def save_last(self) -> None:
        if self.is_main:
            save_checkpoint(self._state(), self.run_dir / "weights" / "last.pt")

    # ------------------------------------------------------------------ loop
    def fit(self) -> Path:
        cfg = self.cfg
        if self.is_main:
            (self.run_dir / "weights").mkdir(parents=True, exist_ok=True)
            cfg.to_yaml(self.run_dir / "config.yaml")
        bad_epochs = 0
        self._stop_requested = False
        previous = _install_stop_handlers(self._on_sigint)
        try:
            while self.epoch < cfg.epochs:
                row = self._train_epoch()
                validate = (self.epoch + 1) % cfg.val_every == 0 or self.epoch + 1 == cfg.epochs
                improved = False
                if validate:
                    metrics = self.validate()
                    row.update(_val_columns(metrics))
                    fit = fitness(metrics)
                    improved = fit > self.best_fitness
                    if improved:
                        self.best_fitness, self.best_epoch = fit, self.epoch
                self.history.append(row)
                if self.is_main:
                    self._write_history()
                self.epoch += 1
                self.step_in_epoch = 0
                self.epoch_acc = {}
                self.save_last()
                if improved:
                    if self.is_main:
                        save_checkpoint(self._state(with_optimizer=False),
                                        self.run_dir / "weights" / "best.pt")
                    bad_epochs = 0
                elif validate:
                    bad_epochs += 1
                if cfg.patience and bad_epochs >= cfg.patience:
                    self.console.print(f"early stop: no improvement for {bad_epochs} validations")
                    break
        except _StopAtStep:
            # Ctrl-C was pressed: we stopped at an optimiser-step boundary, so the saved state is
            # exactly what an uninterrupted run had at this point and --resume replays the rest.
            self._flush_sums(self._sums, force=True)
            self.save_last()
            self.console.print(f"interrupted: state saved to {self.run_dir / 'weights/last.pt'}; "
                               "continue with --resume")
            raise KeyboardInterrupt from None
        finally:
            _restore_handlers(previous)
        self.comm.barrier()  # best.pt is written before any rank reads it
        self.finalize()
        return self.run_dir

    def _train_epoch(self) -> dict[str, Any]:
        cfg = self.cfg
        model, tasks = self.model, self.tasks
        model.train()
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(self.epoch)
        order = self.epoch_order(self.epoch)
        nb = self.batches_per_epoch()
        start_batch = self.step_in_epoch * cfg.accumulate
        loader = self._loader(self.train_set, self.rank_indices(order, start_batch, nb), True)
        acc = self.epoch_acc
        sums = self._sums = {t: torch.zeros((), device=self.device) for t in tasks}
        # (losses, backward passes) of micro-steps whose optimiser step has not happened yet
        pending: list[tuple[dict[str, torch.Tensor], float]] = []
        diag_every = max(1, nb // cfg.diag_steps) if cfg.diag_steps > 0 else 0
        t0 = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        bar = EpochProgress(self.console, f"epoch {self.epoch + 1}/{cfg.epochs}", nb - start_batch,
                            enabled=self.progress)
        micro = 0
        comm = self.comm
        for i, batch in enumerate(loader, start=start_batch):
            step_t = time.perf_counter()
            # which tasks have labels in the (global) batch: every rank must run the same passes
            has_det, has_view = comm.flags([float(batch["det_mask"].any()),
                                            float(batch["view_mask"].any())])
            if not ("detect" in tasks and has_det or "classify" in tasks and has_view):
                acc["skipped_batches"] = acc.get("skipped_batches", 0) + 1
                continue
            last_micro = (micro + 1) % cfg.accumulate == 0 or i + 1 == nb
            # DDP reduces during the backward only on the last micro-step of a single-pass
            # balancer; otherwise gradients are averaged once, before the optimiser step
            sync_ctx = self._eager.no_sync() if comm.active and (
                self.balancer.multi_backward or not last_micro) else contextlib.nullcontext()
            with sync_ctx:
                losses = self._guarded_micro_step(batch, bool(has_det), bool(has_view), i,
                                                  diag_every, acc)
            step_losses = self._global_losses(losses)
            pending.append((step_losses, self._last_passes))
            micro += 1
            if last_micro:
                self._optimizer_step(micro)
                self.balancer.after_step(step_losses)
                # book-keeping only for completed optimiser steps, so a resume replays exactly
                for step_losses, passes in pending:
                    for t, v in step_losses.items():
                        sums[t] += v
                        acc[f"n/loss/{t}"] = acc.get(f"n/loss/{t}", 0) + 1
                    acc["backward_passes"] = acc.get("backward_passes", 0) + passes
                    acc["steps"] = acc.get("steps", 0) + 1
                pending.clear()
                micro = 0
                self.step_in_epoch += 1
                acc["step_seconds"] = acc.get("step_seconds", 0.0) + time.perf_counter() - step_t
                self._flush_sums(sums)
                self._rng_at_step = rng_state()
                # Ctrl-C reaches the ranks at different moments: stop when any rank has it
                if comm.flags([float(self._stop_requested)])[0] > 0:
                    raise _StopAtStep
            bar.advance(losses if i % 10 == 0 else None)
        bar.close()
        self._flush_sums(sums, force=True)
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        epoch_losses = {t: acc[f"sum/loss/{t}"] / acc[f"n/loss/{t}"] for t in tasks
                        if acc.get(f"n/loss/{t}")}
        self.balancer.on_epoch_end(epoch_losses)
        weights = self.balancer.weights()
        spread = self._rank_spread(weights)
        row: dict[str, Any] = {"epoch": self.epoch + 1}
        for t in ("detect", "classify"):
            row[f"loss/{t}"] = epoch_losses.get(t, "")
            row[f"weight/{t}"] = weights.get(t, 1.0) if t in tasks else ""
        for k in ("grad_cos", "grad_norm_ratio"):
            n = acc.get(f"n/{k}", 0)
            row[k] = acc[f"sum/{k}"] / n if n else ""
        for k in [k for k in acc if k.startswith("n/grad_cos/")]:
            stage = k[len("n/"):]
            row[stage] = acc[f"sum/{stage}"] / acc[k]
        steps = max(1, acc.get("steps", 0))
        row.update({"lr": self.optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3),
                    "step_ms": round(1000 * acc.get("step_seconds", 0.0) / steps, 2),
                    "backward_passes": acc.get("backward_passes", 0) / steps,
                    "peak_mem_mb": round(peak_memory_mb(self.device), 1),
                    "skipped_batches": acc.get("skipped_batches", 0)})
        row.update(spread)
        return row

    def _micro_step(self, batch: dict[str, Any], has_det: bool, has_view: bool, i: int,
                    diag_every: int, acc: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Forward, the task losses present in the (global) batch, diagnostics, backward."""
        tasks, comm = self.tasks, self.comm
        images = prepare_images(batch["images"], self.device, self.channels_last)
        tgt = move_targets(batch, self.device)
        with torch.autocast(self.device.type, dtype=self.autocast,
                            enabled=self.autocast is not None):
            out = self.net(images)
        shared_features = self.model.take_shared_features()
        split = None if shared_features is None or self._task_params is None else \
            TaskSplit(list(shared_features), self._task_params)
        losses: dict[str, torch.Tensor] = {}
        if "detect" in tasks and has_det:
            losses["detect"] = self.det_loss([p.float() for p in out["detect"]], tgt, comm)[0]
        if "classify" in tasks and has_view:
            vl = self.view_loss(out["classify"].float(), tgt["view"], tgt["view_mask"], comm,
                                present=True)
            if vl is not None:
                losses["classify"] = vl
        self._backward(losses, i, diag_every, acc, split)
        return losses

    def _guarded_micro_step(self, batch: dict[str, Any], has_det: bool, has_view: bool, i: int,
                            diag_every: int, acc: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The first compiled micro-step runs guarded: if compilation (of the forward or of a
        backward) fails, gradients, buffers (BatchNorm statistics) and balancer state are restored
        and training goes on eager."""
        if self.net is self._eager or self._compile_checked:
            return self._micro_step(batch, has_det, has_view, i, diag_every, acc)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grads = [None if p.grad is None else p.grad.clone() for p in params]
        bal_state = copy.deepcopy(self.balancer.state_dict())
        buffers = [(b, b.clone()) for b in self.model.buffers()]
        try:
            losses = self._micro_step(batch, has_det, has_view, i, diag_every, acc)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            self.console.print(f"[yellow]torch.compile failed ({type(e).__name__}: {msg}); "
                               "continuing without it[/]")
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            self.balancer.load_state_dict(bal_state)
            self.net = self._eager
            return self._micro_step(batch, has_det, has_view, i, diag_every, acc)
        self._compile_checked = True
        return losses

    def _backward(self, losses: dict[str, torch.Tensor], i: int, diag_every: int,
                  acc: dict[str, Any], split: TaskSplit | None = None) -> None:
        """Interference diagnostics on the chosen steps, then the balancer's backward."""
        if diag_every and len(losses) == 2 and self.shared and i % diag_every == 0:
            d = gradient_interference(
                losses, self.shared, self.model.shared_stages() if self.cfg.diag_per_stage else None,
                scale=float(self.scaler.get_scale()) if self.scaler else 1.0)
            for k, v in d.items():
                if isinstance(v, float) and math.isfinite(v):
                    acc[f"sum/{k}"] = acc.get(f"sum/{k}", 0.0) + v
                    acc[f"n/{k}"] = acc.get(f"n/{k}", 0) + 1
        scale = float(self.scaler.get_scale()) if self.scaler else 1.0
        kw = {"split": split} if self.balancer.uses_split else {}
        blog = self.balancer.backward(losses, self.shared, self.last_shared, scale, **kw)
        self._last_passes = blog.get("backward_passes", 1)

    def _global_losses(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Detached losses of the global batch (the ranks' mean: the normalisers are global)."""
        if not self.comm.active:
            return {t: v.detach() for t, v in losses.items()}
        vals = self.comm.mean(torch.stack([v.detach().float() for v in losses.values()]))
        return dict(zip(losses, vals.unbind(), strict=True))

    def _rank_spread(self, weights: dict[str, float]) -> dict[str, float]:
        """Distributed runs: the largest difference between ranks in task weights and in the sum
        of the parameters (both must be 0 up to float rounding), logged in history.csv."""
        if not self.comm.active:
            return {}
        with torch.no_grad():
            psum = float(sum(p.detach().double().sum() for p in self.model.parameters()))
        mine = ([weights.get(t, 1.0) for t in self.tasks], psum)
        everyone = self.comm.gather(mine)
        out: dict[str, float] = {}
        if everyone is not None:
            w0, p0 = everyone[0]
            out["ddp/weight_spread"] = max(abs(a - b) for w, _ in everyone for a, b in zip(w, w0, strict=True))
            out["ddp/param_spread"] = max(abs(p - p0) for _, p in everyone)
        return self.comm.broadcast(out)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """Ctrl-C (SIGINT), or SIGTERM from a job scheduler or torchrun: stop at the next step
        boundary and save last.pt; a second signal aborts at once (last.pt keeps the previous
        save, intact: checkpoints are written atomically)."""
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        import signal

        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        self.console.print(f"{name}: finishing this step, then saving weights/last.pt "
                           "(signal again to abort without saving)")

    def _flush_sums(self, sums: dict[str, torch.Tensor], force: bool = False) -> None:
        """Move the device-side loss sums into epoch_acc (one host sync per flush)."""
        for t, v in sums.items():
            if force or self.device.type == "cpu" or self.step_in_epoch % 50 == 0:
                self.epoch_acc[f"sum/loss/{t}"] = self.epoch_acc.get(f"sum/loss/{t}", 0.0) + float(v)
                v.zero_()

    def _optimizer_step(self, n_micro: int) -> None:
        if self.comm.active:
            # the balancer's own parameters are outside DDP; gradient surgery bypassed its reducer
            params = list(self.balancer.parameters())
            if self.balancer.multi_backward:
                params = [*self.model.parameters(), *params]
            average_gradients(self.comm, params)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if n_micro > 1:
            for p in (p for g in self.optimizer.param_groups for p in g["params"]):
                if p.grad is not None:
                    p.grad.div_(n_micro)
        if self.cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema:
            self.ema.update(self.model)

    # ------------------------------------------------------------------ evaluation
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema else self.model

    def validate(self, out_dir: Path | None = None, plots: bool = False) -> dict[str, Any]:
        """Scores of the evaluation model on the val split. Distributed: each rank infers on
        every world_size-th image, rank 0 scores the merged predictions, all ranks get the result."""
        cfg, comm = self.cfg, self.comm
        shard = list(range(comm.rank, len(self.val_set), comm.world_size))
        loader = self._loader(self.val_set, shard, False)
        inf = run_inference(self.eval_model(), loader, self.device, cfg.conf_thres, cfg.iou_thres,
                            cfg.max_det, self.det_loss, self.view_loss, self.autocast,
                            self.channels_last)
        parts = comm.gather(inf)
        metrics = None
        if parts is not None:
            metrics = score(merge_inference(parts), self.val_index.records, self.names,
                            self.cls_names, self.tasks, split="val", out_dir=out_dir, plots=plots)
        return comm.broadcast(metrics)

    def finalize(self) -> dict[str, Any]:
        """metrics.json from the best checkpoint, with the COCO exports and plots under eval/."""
        best = self.run_dir / "weights" / "best.pt"
        if best.exists():
            ck = load_checkpoint(best)
            target = self.eval_model()
            target.load_state_dict(ck["ema"]["module"] if ck.get("ema") else ck["model"])
        metrics = self.validate(out_dir=self.run_dir / "eval", plots=True)
        if not self.is_main:
            return metrics
        from medmtl.evaluation.latency import efficiency

        metrics["efficiency"] = efficiency(self.eval_model(), self.cfg.imgsz,
                                           self.run_dir / "weights" / "best.pt")
        weights = self.balancer.weights()
        metrics["training"] = {
            "seconds": round(self.train_seconds, 2), "epochs": self.epoch,
            "peak_mem_mb": max([r.get("peak_mem_mb", 0.0) for r in self.history] or [0.0]),
            "best_epoch": self.best_epoch + 1, "method": self.cfg.method,
            "arch": self.cfg.model.arch, "balancer": self.cfg.balancer.name,
            "seed": self.cfg.seed, "device": str(self.device),
            "world_size": self.comm.world_size, "global_batch": self.cfg.batch,
            "sync_bn": bool(self.cfg.sync_bn and self.comm.active),
            "final_weights": {t: weights.get(t, 1.0) for t in self.tasks} if len(self.tasks) > 1
            else None,
        }
        import json

        atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2))
        return metrics

    def _write_history(self) -> None:
        cols = list(BASE_COLUMNS)
        for r in self.history:
            for k in r:
                if k not in cols:
                    cols.append(k)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, restval="")
        w.writeheader()
        for r in self.history:
            w.writerow({k: _fmt(v) for k, v in r.items()})
        atomic_write_text(self.run_dir / "history.csv", buf.getvalue())


class _IndexSampler(torch.utils.data.Sampler[int]):
    """A sampler whose index list the trainer replaces before each pass (persistent workers)."""

    def __init__(self) -> None:
        self.indices: list[int] = []

    def __iter__(self) -> Any:
        return iter(list(self.indices))

    def __len__(self) -> int:
        return len(self.indices)


class _StopAtStep(Exception):
    """Raised inside the epoch loop at a step boundary after Ctrl-C."""


def _install_stop_handlers(handler: Any) -> dict[int, Any]:
    """Install `handler` for SIGINT and SIGTERM (main thread only); returns the previous ones."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {int(sig): signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_handlers(previous: dict[int, Any]) -> None:
    import signal

    for sig, h in previous.items():
        signal.signal(sig, h if h is not None else signal.SIG_DFL)


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _val_columns(m: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    det = m.get("detection")
    if det:
        for k in ("map50", "map50_95", "precision", "recall", "f1"):
            row[f"val/{k}"] = det[k]
    cls = m.get("classification")
    if cls:
        row["val/accuracy"] = cls["accuracy"]
        row["val/macro_f1"] = cls["macro_f1"]
    for t, v in (m.get("val_loss") or {}).items():
        row[f"val/loss/{t}"] = v
    return row


def _print_summary(console: Console, split: str, index: Any) -> None:
    s = index.summary
    console.print(f"[bold]{split}[/]: " + ", ".join(f"{k} {v}" for k, v in s.items()
                                                    if not isinstance(v, dict)))
    problems = getattr(index, "problems", [])
    if problems:
        from medmtl.data import format_problems

        console.print(format_problems(problems, limit=10))


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train per `cfg`, writing the run directory; returns its path. Under torchrun every process
    calls this; the process group is torn down at the end."""
    trainer = None
    try:
        trainer = Trainer(cfg, resume=resume, progress=progress)
        return trainer.fit()
    finally:
        if trainer is not None:
            cleanup(trainer.comm)


__all__ = ["Trainer", "train"]
