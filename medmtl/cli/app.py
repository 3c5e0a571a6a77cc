"""The typer application and what every command module shares."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True)
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

Opt = typer.Option


def _version(value: bool) -> None:
    if value:
        import platform

        import torch

        import medmtl

        print(f"medmtl {medmtl.__version__} (torch {torch.__version__}, "
              f"Python {platform.python_version()})")
        raise typer.Exit()


@app.callback()
def _root(version: bool = Opt(False, "--version", callback=_version, is_eager=True,
                              help="Print medmtl's version and exit")) -> None:
    """Joint detection + view classification, and honest comparisons of gradient-interference
    remedies. Errors are one line; add --debug anywhere (or set MEDMTL_DEBUG=1) to see the
    traceback."""


def print_metrics(path: Path) -> None:
    m = json.loads(path.read_text())
    parts = []
    if m.get("detection"):
        d = m["detection"]
        parts.append(f"mAP@0.5 {d['map50']:.3f}  mAP@0.5:0.95 {d['map50_95']:.3f}  "
                     f"P {d['precision']:.3f}  R {d['recall']:.3f}")
    if m.get("classification"):
        c = m["classification"]
        parts.append(f"view accuracy {c['accuracy']:.3f}  macro-F1 {c['macro_f1']:.3f}")
        if c.get("clip_accuracy") is not None:
            parts.append(f"against clip-majority labels {c['accuracy_clip_majority_labels']:.3f}"
                         f"  per clip {c['clip_accuracy']:.3f} ({c['clips']} clips)")
    console.print(f"[bold]{m['split']}[/] ({m['images']} images): " + " | ".join(parts))
    console.print(f"wrote {path}")



def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]
