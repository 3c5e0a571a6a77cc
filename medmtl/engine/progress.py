"""Training progress that reads the same in a terminal and in a log file.

In a terminal, a transient rich bar per epoch with the epoch's running mean task losses (read
every 10 batches); when the output is not a terminal (a pipe, a log file), no bar but a plain line
within a long epoch, every 30 s by default (``MEDMTL_PROGRESS_EVERY``: ``30s``, or ``40`` for every
40 batches): ``epoch 3/8  batch 40/120  loss det 4.912 cls 0.612  12s``. In both, one line per
epoch (`epoch_line`): train losses, validation metrics, task weights, lr, the epoch's time and
the ETA of the run, never wrapped. `train --no-progress` turns off the bar and the within-epoch
lines, not the epoch lines.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from medmtl.errors import InputError, clip_text

EVERY_ENV = "MEDMTL_PROGRESS_EVERY"
EVERY_DEFAULT_S = 30.0


def _scalar(v: Any) -> float:
    """A float of a loss without autograd's "requires_grad to scalar" warning."""
    detach = getattr(v, "detach", None)
    return float(detach() if detach is not None else v)


def log_interval() -> tuple[int, float]:
    """(batches, seconds) between the within-epoch lines of a log, one of them 0: from
    ``MEDMTL_PROGRESS_EVERY`` (``40``: every 40 batches; ``30s``: every 30 seconds), default every
    30 s. A bad value is an `InputError` naming the variable."""
    raw = os.environ.get(EVERY_ENV, "").strip()
    if not raw:
        return 0, EVERY_DEFAULT_S
    m = re.fullmatch(r"(\d+)\s*(s?)", raw)
    if not m or int(m[1]) < 1:
        raise InputError(f"{EVERY_ENV}={clip_text(raw)}: give a number of batches (40) or of "
                         "seconds (30s), at least 1")
    return (0, float(m[1])) if m[2] else (int(m[1]), 0.0)


class EpochProgress:
    """One epoch's progress: the bar (`enabled`: on a terminal) or, in a log, a line every
    `log_interval`. ``start``: batches of the epoch done before (a resumed epoch)."""

    def __init__(self, console: Console, title: str, total: int, enabled: bool = True,
                 start: int = 0) -> None:
        self.enabled = enabled and total > 0 and console.is_terminal
        self.logging = enabled and total > 0 and not console.is_terminal
        self.console, self.title, self.total, self.start = console, title, total, start
        self.losses = ""
        self.done = 0
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.t0 = self.last = time.perf_counter()
        if self.logging:
            self.every_n, self.every_s = log_interval()
        if not self.enabled:
            return
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeRemainingColumn(),
                                 TextColumn("{task.fields[losses]}"), console=console,
                                 transient=True)  # the epoch line replaces it
        self.task = self.progress.add_task(title, total=total, losses="")
        self.progress.start()

    def _means(self) -> dict[str, float]:
        return {k: _scalar(v) / self.counts[k] for k, v in self.sums.items()}

    def advance(self, losses: dict[str, Any] | None = None) -> None:
        """One batch done; ``losses``: its task losses (summed on their device; read only when
        shown)."""
        if not (self.enabled or self.logging):
            return
        self.done += 1
        for k, v in (losses or {}).items():
            detach = getattr(v, "detach", None)
            self.sums[k] = self.sums.get(k, 0.0) + (detach() if detach is not None else v)
            self.counts[k] = self.counts.get(k, 0) + 1
        if self.logging:
            self._log_line()
            return
        if (self.done - 1) % 10 == 0:
            self.losses = "  ".join(f"{k} {v:.3f}" for k, v in self._means().items())
        self.progress.update(self.task, advance=1, losses=self.losses)

    def _log_line(self) -> None:
        now = time.perf_counter()
        due = (self.done % self.every_n == 0) if self.every_n else now - self.last >= self.every_s
        if not due or self.done >= self.total:  # the epoch line follows the last batch
            return
        self.last = now
        parts = [self.title, f"batch {self.start + self.done}/{self.start + self.total}"]
        means = self._means()
        if means:
            parts.append("loss " + " ".join(f"{_SHORT.get(k, k)} {v:.3f}"
                                            for k, v in means.items()))
        parts.append(format_duration(now - self.t0))
        self.console.print("  ".join(parts), soft_wrap=True, markup=False, highlight=False)

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
