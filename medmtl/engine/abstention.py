"""The view-abstention threshold of a finished run (`medmtl.evaluation.abstention`): measured on
the val predictions of the best checkpoint (``eval/view_predictions.json``), written into
``weights/best.pt`` (``view_abstention``, which `medmtl predict` applies by default) and
returned for metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.engine.checkpoint import load_checkpoint, save_checkpoint
from medmtl.evaluation.abstention import abstention_threshold

__all__ = ["record_abstention"]


def record_abstention(run_dir: Path, best: Path) -> dict[str, Any] | None:
    """The threshold from ``run_dir/eval/view_predictions.json`` (labelled frames only), stored
    in ``best`` when it exists; None for a run without the view task."""
    path = run_dir / "eval" / "view_predictions.json"
    if not path.is_file():
        return None
    rows = [r for r in json.loads(path.read_text())["images"] if r.get("view") is not None]
    probs = np.array([max(r["probs"]) for r in rows], np.float64)
    correct = np.array([r["pred"] == r["view"] for r in rows], bool)
    rec = abstention_threshold(probs, correct) | {"split": "val"}
    if best.is_file():
        ck = load_checkpoint(best)
        ck["view_abstention"] = rec
        save_checkpoint(ck, best)
    return rec
