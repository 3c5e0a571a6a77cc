"""Equal budgets: a method that starts from another run (staged, distill) trained that run's
epochs too, so it is compared with a control that trained as long.

`epochs_total` counts a run's own epochs plus those of every stage it started from
(metrics.json ``training.stages``: the dual run staged and distill begin with). `add_budget` gives
each joint method a ``budget`` block: its total epochs, the baseline's, and -- when it trained
longer -- the budget-matched control (the baseline's method trained for as many epochs, e.g.
``fixed:epochs=16``, found by its total) with a paired t-test of the per-seed Δm against it. A
method that trained longer and has no such control, or does not beat it, is not named best by
the accuracy-first advice (`medmtl.report.evidence`).
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import mean
from typing import Any

from medmtl.report.collect import Run
from medmtl.report.significance import ALPHA, block_seeds, compare

__all__ = ["add_budget", "budget_gaps", "epochs_total"]


def epochs_total(run: Run) -> int | None:
    """Epochs the run's model saw, its sources' included; None without a training record."""
    tr = (run.metrics or {}).get("training") or {}
    stages = tr.get("stages")
    if isinstance(stages, list) and stages:
        total = [s.get("epochs") for s in stages if isinstance(s, dict)]
        if all(isinstance(e, int) for e in total):
            return int(sum(total))  # type: ignore[arg-type]
    ep = tr.get("epochs")
    return int(ep) if isinstance(ep, int) else None


def _method_epochs(runs: Sequence[Run], method: str) -> float | None:
    vals = [e for r in runs if r.method == method and r.finished
            if (e := epochs_total(r)) is not None]
    return float(mean(vals)) if vals else None


def _head(method: str) -> str:
    """The method of a spec, without its overrides (``fixed:epochs=16`` -> ``fixed``)."""
    return method.split(":", 1)[0]


def add_budget(runs: Sequence[Run], agg: dict[str, Any], alpha: float = ALPHA) -> None:
    """Set ``epochs_total`` and ``budget`` on every method of ``agg`` (in place)."""
    base = agg["baseline"]
    methods = agg["methods"]
    for m, e in methods.items():
        e["epochs_total"] = _method_epochs(runs, m)
    base_ep = methods[base]["epochs_total"] if base in methods else None
    plain = base.removesuffix("@tuned") if base else base  # fixed@tuned -> fixed
    for m, e in methods.items():
        mine = e["epochs_total"]
        block: dict[str, Any] = {"epochs_total": mine, "baseline_epochs": base_ep,
                                 "longer": bool(mine and base_ep and mine > base_ep),
                                 "control": None, "vs_control": None}
        if block["longer"] and e["joint"] and _head(m) in (base, plain):
            # the baseline's own method trained longer: the control of the others, not a remedy
            block["is_control"] = True
            block["text"] = (f"{m} is the baseline's method trained {mine:g} epochs, the control "
                             "of the methods that trained as long; its difference from the "
                             "baseline is what the longer training gives")
        elif block["longer"] and e["joint"]:
            # the baseline's method trained as long; for a tuned baseline (fixed@tuned) the same
            # method at its defaults counts too (compare trains `fixed:epochs=16`, not a tuned one)
            controls = sorted((c for c, ce in methods.items() if c != m and ce["joint"]
                               and ce["epochs_total"] == mine
                               and _head(c) in (base, plain)),
                              key=lambda c: _head(c) != base)
            if controls:
                c = controls[0]
                block["control"] = c
                block["vs_control"] = compare(block_seeds(e), block_seeds(methods[c]), True, alpha)
                what = ("the baseline" if _head(c) == base else
                        f"the baseline's method at its default settings ({plain})")
                block["text"] = (f"{m} trained {mine:g} epochs in total (its source's included), "
                                 f"the baseline {base_ep:g}; against {c}, {what} trained "
                                 f"as long: Δm {block['vs_control']['verdict']}")
            else:
                block["text"] = (f"{m} trained {mine:g} epochs in total (its source's included) "
                                 f"where the baseline trained {base_ep:g}, and no control trained "
                                 f"as long: add {plain}:epochs={mine:g} to the compare")
        e["budget"] = block


def budget_gaps(agg: dict[str, Any], method: str) -> list[str]:
    """Why ``method``'s lead may be its longer training (for the evidence rule)."""
    block = (agg["methods"].get(method) or {}).get("budget") or {}
    if not block.get("longer") or block.get("is_control"):
        return []
    vs = block.get("vs_control")
    if vs is not None and vs.get("verdict") == "better":
        return []
    return [block.get("text") or f"{method} trained longer than the baseline"]
