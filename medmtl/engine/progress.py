"""A rich progress bar per epoch with live task losses (reads losses only every few steps)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class EpochProgress:
    def __init__(self, console: Console, title: str, total: int, enabled: bool = True) -> None:
        self.enabled = enabled and total > 0
        self.losses = ""
        if not self.enabled:
            return
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeRemainingColumn(),
                                 TextColumn("{task.fields[losses]}"), console=console,
                                 transient=False)
        self.task = self.progress.add_task(title, total=total, losses="")
        self.progress.start()

    def advance(self, losses: dict[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        if losses:
            self.losses = "  ".join(f"{k} {float(v):.3f}" for k, v in losses.items())
        self.progress.update(self.task, advance=1, losses=self.losses)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()
