"""K short training runs on patient-grouped folds: the out-of-fold predictions of the label-issue
ranking.

A fold run is an ordinary run directory whose val split is the held-out fold (patients never cross
folds: scikit-learn's GroupKFold over `GroupPattern.patient_of`, sizes balanced). It is validated once, after the
last epoch, so nothing is selected on the held-out labels; its `eval/view_predictions.json` and
`eval/predictions.json` are the out-of-fold predictions, read back by
`medmtl.labelissues.oof.read_runs` exactly as a user's own runs are.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from medmtl.data.groups import GroupPattern
from medmtl.data.splits import write_file_lists
from medmtl.engine.checkpoint import atomic_write_text
from medmtl.engine.trainer import Trainer
from medmtl.labelissues.oof import Pool, plural
from medmtl.methods import build_config


def score_fold(t: Trainer) -> dict[str, Any]:
    """A fold run's scoring (`Trainer.fit(finalize=score_fold)`): the final weights on the
    held-out fold, eval/ and metrics.json (no plots, no latency timing: the run exists for its
    predictions)."""
    m = t.validate(out_dir=t.run_dir / "eval", plots=False) or {}
    if t.is_main:
        atomic_write_text(t.run_dir / "metrics.json", json.dumps(m, indent=2))
    return m


def assign_folds(pool: Pool, folds: int, pattern: GroupPattern) -> np.ndarray:
    """(N,) fold index per image: scikit-learn's GroupKFold over patients, unshuffled (it then
    balances the folds' image counts, largest patient first; shuffled it does not, and one
    patient can hold a sixth of the frames). Deterministic; no seed."""
    from sklearn.model_selection import GroupKFold

    patients = [pattern.patient_of(r.path) for r in pool.records]
    n_groups = len(set(patients))
    if folds < 2 or n_groups < folds:
        raise ValueError(f"--folds {folds}: needs 2 <= folds <= patients ({n_groups} with "
                         f"--group-regex {pattern.patient!r})")
    out = np.full(len(patients), -1, np.int64)
    kf = GroupKFold(n_splits=folds)
    for k, (_, held) in enumerate(kf.split(np.zeros(len(patients)), groups=patients)):
        out[held] = k
    return out


def _fold_config(yml: str, run: str, task: str, epochs: int, imgsz: int, size: str, batch: int,
                 workers: int, seed: int, device: str, corrections: Path | None = None) -> Any:
    return build_config("classify" if task == "classify" else "fixed", {
        "data": yml, "out": run, "epochs": epochs, "imgsz": imgsz, "batch": batch,
        "workers": workers, "seed": seed, "device": device, "val_every": epochs,
        "test_split": "none", "diag_steps": 0, "model": {"size": size},
        "corrections": None if corrections is None else str(corrections)})


def step_seconds(pool: Pool, *, task: str, imgsz: int, size: str, batch: int, device: str,
                 steps: int = 2) -> float:
    """Seconds per training step of a fold model, timed now: one warm-up and `steps` forward +
    backward passes on random images of one batch (image loading and the loss not counted)."""
    import torch

    from medmtl.devices import select_device
    from medmtl.models import build_model

    cfg = _fold_config("", "", task, 1, imgsz, size, batch, 0, 0, device)
    cfg.model.num_classes, cfg.model.num_views = len(pool.spec.names), len(pool.spec.cls_names)
    dev = select_device(device)
    model = build_model(cfg.model).to(dev).train()
    x = torch.rand(batch, 3, imgsz, imgsz, device=dev)

    def total(o: Any) -> Any:
        if isinstance(o, torch.Tensor):
            return o.float().mean()
        parts = [total(v) for v in (o.values() if isinstance(o, dict) else o)]
        return sum(p for p in parts if p is not None) if parts else None

    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        total(model(x)).backward()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def fold_plan(pool: Pool, fold_of: np.ndarray, out: Path, *, task: str, epochs: int,
              imgsz: int, size: str, batch: int, device: str) -> tuple[str, float | None]:
    """The line printed before the fold runs (folds x epochs x images, and the estimated time
    from `step_seconds`) and the estimate in seconds (None when every fold finished earlier).
    A held-out image costs about a third of a training image (forward only)."""
    folds = int(fold_of.max()) + 1
    todo = [k for k in range(folds)
            if not (out / f"fold{k}" / "eval" / "view_predictions.json").is_file()]
    n_train = [int((fold_of != k).sum()) for k in todo]
    n_held = [int((fold_of == k).sum()) for k in todo]
    head = (f"plan: {plural(folds, 'fold')} × {plural(epochs, 'epoch')} × ~"
            f"{round(float(np.mean([int((fold_of != k).sum()) for k in range(folds)])))} "
            f"training images (of {len(fold_of)}, patient-grouped); each fold then scores the "
            "images it held out, once")
    if not todo:
        return head + f"; all {folds} folds are done already and kept", None
    sec = step_seconds(pool, task=task, imgsz=imgsz, size=size, batch=batch, device=device)
    steps = sum(epochs * max(1, n // batch) for n in n_train)
    est = sec * (steps + sum(n_held) / batch / 3)
    left = "" if len(todo) == folds else f" for the {len(todo)} unfinished"
    return (head + f"; estimated ~{_duration(est)}{left} ({steps} training steps at {sec:.2f} s "
            f"per step of {batch} images at {imgsz} px, timed just now; image loading adds to "
            "it)"), est


def _duration(sec: float) -> str:
    if sec < 10:
        return f"{sec:.1f} s"
    return f"{sec:.0f} s" if sec < 90 else f"{sec / 60:.1f} min" if sec < 5400 \
        else f"{sec / 3600:.1f} h"


def train_folds(pool: Pool, fold_of: np.ndarray, out: Path, *, task: str = "classify",
                epochs: int = 3, imgsz: int = 128, size: str = "n", batch: int = 16,
                seed: int = 0, device: str = "auto", workers: int = 0,
                log: Callable[[str], None] = print, estimate: float | None = None,
                corrections: Path | None = None) -> list[Path]:
    """One short run per fold (train: the other folds, val: this fold) under ``out/fold<k>``;
    a finished fold (its eval files exist) is kept, an interrupted one resumed. Each fold logs
    when it starts and when it is done, with the time elapsed (of ``estimate`` seconds)."""
    if task not in ("classify", "joint"):
        raise ValueError(f"--task must be classify or joint, got {task!r}")
    if epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {epochs}")
    runs = []
    folds = int(fold_of.max()) + 1
    t0 = time.perf_counter()
    of = "" if estimate is None else f" of ~{_duration(estimate)} estimated"
    for k in range(folds):
        run = out / f"fold{k}"
        runs.append(run)
        held = [r.path for r, f in zip(pool.records, fold_of, strict=True) if f == k]
        if (run / "eval" / "view_predictions.json").is_file():
            log(f"fold {k + 1}/{folds}: kept {run} (finished earlier)")
            continue
        keep = [r.path for r, f in zip(pool.records, fold_of, strict=True) if f != k]
        yml = write_file_lists(out / f"fold{k}-data", {"train": keep, "val": held}, pool.spec, {},
                               f"# fold {k} of {folds} (patient-grouped): "
                               f"{len(keep)} train / {len(held)} held-out images\n")
        cfg = _fold_config(str(yml), str(run), task, epochs, imgsz, size, batch, workers, seed,
                           device, corrections)
        log(f"fold {k + 1}/{folds} started: {len(keep)} train images, {len(held)} held out; "
            f"elapsed {_duration(time.perf_counter() - t0)}{of}")
        resume = (run / "weights" / "last.pt").is_file()
        if run.exists() and not resume:
            shutil.rmtree(run)  # a fold folder of ours that never saved a checkpoint
        trainer = Trainer(cfg, resume=resume, progress=False,
                          console=Console(stderr=True, quiet=True))
        scores: dict[str, Any] = {}
        trainer.fit(finalize=lambda t, into=scores: into.update(score_fold(t)))
        acc = (scores.get("classification") or {}).get("accuracy")
        det = (scores.get("detection") or {}).get("map50")
        log(f"fold {k + 1}/{folds} done: {len(keep)} train / {len(held)} held-out images, "
            f"{trainer.state.train_seconds:.0f} s; held-out view accuracy "
            f"{'-' if acc is None else f'{acc:.3f}'}"
            + ("" if det is None else f", mAP@0.5 {det:.3f}")
            + f"; elapsed {_duration(time.perf_counter() - t0)}{of}")
        del trainer
    return runs


__all__ = ["assign_folds", "fold_plan", "score_fold", "step_seconds", "train_folds"]
