"""history.csv: one row per epoch (the run-directory contract in docs/ARCHITECTURE.md)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from medmtl.engine.checkpoint import atomic_write_text

BASE_COLUMNS = ["epoch", "loss/detect", "loss/classify", "weight/detect", "weight/classify",
                "grad_cos", "grad_norm_ratio", "lr", "seconds", "step_ms", "backward_passes",
                "peak_mem_mb"]


def val_columns(m: dict[str, Any]) -> dict[str, Any]:
    """The `val/...` columns of a validation's metrics."""
    row: dict[str, Any] = {}
    det = m.get("detection")
    if det:
        for k in ("map50", "map50_95", "precision", "recall", "f1"):
            row[f"val/{k}"] = det[k]
    cls = m.get("classification")
    if cls:
        row["val/accuracy"] = cls["accuracy"]
        row["val/macro_f1"] = cls["macro_f1"]
        for k in ("accuracy_clip_majority_labels", "clip_accuracy"):  # issue #17's view measures
            if k in cls:
                row[f"val/{k}"] = cls[k]
    for t, v in (m.get("val_loss") or {}).items():
        row[f"val/loss/{t}"] = v
    return row


def write_history(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """The base columns first, then every other column in order of first appearance."""
    cols = list(BASE_COLUMNS)
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, restval="")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v



def training_summary(trainer: Any) -> dict[str, Any]:
    """metrics.json's `training` block of a finished trainer (medmtl.engine.trainer.Trainer), with
    the stages its plug-ins record: the runs it started from, and stages before its training."""
    from medmtl.engine.stages import training_stages

    st, cfg, tasks = trainer.state, trainer.cfg, trainer.loss_tasks
    weights = trainer.balancer.weights()
    return {
        "seconds": round(st.train_seconds, 2), "epochs": st.epoch,
        "peak_mem_mb": max([r.get("peak_mem_mb", 0.0) for r in st.history] or [0.0]),
        "best_epoch": st.best_epoch + 1, "method": cfg.method,
        "arch": cfg.model.arch, "balancer": cfg.balancer.name,
        "seed": cfg.seed, "device": str(trainer.device),
        "world_size": trainer.comm.world_size, "global_batch": cfg.batch,
        "sync_bn": bool(cfg.sync_bn and trainer.comm.active),
        "final_weights": {t: weights.get(t, 1.0) for t in tasks} if len(tasks) > 1 else None,
        **training_stages(cfg, st.train_seconds, st.epoch,
                          [src for p in trainer.plugins for src in p.sources()],
                          [s for p in trainer.plugins for s in p.stages_before(trainer.run_dir)]),
    }

__all__ = ["BASE_COLUMNS", "training_summary", "val_columns", "write_history"]
