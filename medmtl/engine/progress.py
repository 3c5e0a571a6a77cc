"""Training progress that reads the same in a terminal and in a log file.

In a terminal, a transient rich bar per epoch with live task losses (read only every few steps);
when the output is not a terminal (a pipe, a log file, `compare`'s run logs), no bar at all. In
both, one line per epoch (`epoch_line`): train losses, validation metrics, task weights, lr,
the epoch's time and the ETA of the run, never wrapped.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def _scalar(v: Any) -> float:
    """A float of a loss without autograd's "requires_grad to scalar" warning."""
    detach = getattr(v, "detach", None)
    return float(detach() if detach is not None else v)


class EpochProgress:
    def __init__(self, console: Console, title: str, total: int, enabled: bool = True) -> None:
        self.enabled = enabled and total > 0 and console.is_terminal
        self.losses = ""
        if not self.enabled:
            return
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeRemainingColumn(),
                                 TextColumn("{task.fields[losses]}"), console=console,
                                 transient=True)  # the epoch line replaces it
        self.task = self.progress.add_task(title, total=total, losses="")
        self.progress.start()

    def advance(self, losses: dict[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        if losses:
            self.losses = "  ".join(f"{k} {_scalar(v):.3f}" for k, v in losses.items())
        self.progress.update(self.task, advance=1, losses=self.losses)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()


_SHORT = {"detect": "det", "classify": "cls"}
_VAL = (("val/map50", "mAP50"), ("val/map50_95", "mAP"), ("val/accuracy", "acc"),
        ("val/macro_f1", "F1"))


def format_duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def epoch_line(row: dict[str, Any], epochs: int, eta_seconds: float | None) -> str:
    """``epoch 3/30  loss det 1.234 cls 0.567  val mAP50 0.412 mAP 0.201 acc 0.850 F1 0.811  w
    det 1.00 cls 0.10  lr 1.9e-03  4.1s  ETA 1m50s``: the parts the row has."""
    parts = [f"epoch {row['epoch']}/{epochs}"]
    losses = [f"{_SHORT.get(k, k)} {row[f'loss/{k}']:.3f}" for k in ("detect", "classify")
              if isinstance(row.get(f"loss/{k}"), int | float)]
    if losses:
        parts.append("loss " + " ".join(losses))
    val = [f"{name} {row[k]:.3f}" for k, name in _VAL if isinstance(row.get(k), int | float)]
    if val:
        parts.append("val " + " ".join(val))
    weights = [f"{_SHORT.get(k, k)} {row[f'weight/{k}']:.2f}" for k in ("detect", "classify")
               if isinstance(row.get(f"weight/{k}"), int | float)]
    if len(weights) > 1:
        parts.append("w " + " ".join(weights))
    if isinstance(row.get("lr"), int | float):
        parts.append(f"lr {row['lr']:.1e}")
    if isinstance(row.get("seconds"), int | float):
        parts.append(format_duration(row["seconds"]))
    if eta_seconds is not None:
        parts.append(f"ETA {format_duration(eta_seconds)}")
    return "  ".join(parts)


def run_end_line(r: Any, seconds: float) -> str:
    """``done   fixed-s0  method fixed  seed 0  mAP50 0.412  view acc 0.850  1m20s``: the line
    `compare` prints when a run (a `compare.PlannedRun`) ends."""
    head = f"{r.status:<6} {r.name}  method {r.cfg.method}  seed {r.cfg.seed}"
    if r.status != "done":
        return (f"{head}  exit {r.returncode}  {format_duration(seconds)}  log: "
                f"{r.run_dir.parent / (r.name + '.log')}")
    try:
        m = json.loads((r.run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        m = {}
    parts = [head]
    if m.get("detection"):
        parts.append(f"mAP50 {m['detection']['map50']:.3f}")
    if m.get("classification"):
        parts.append(f"view acc {m['classification']['accuracy']:.3f}")
    parts.append(format_duration(seconds))
    return "  ".join(parts)
