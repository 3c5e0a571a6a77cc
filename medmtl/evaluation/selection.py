"""Checkpoint selection: one score per validation, the same one the report decides by.

`--select delta-m` (the default) is the report's Δm over mAP@0.5, mAP@0.5:0.95, view accuracy
and macro-F1, restricted to the metrics the model has: the mean over them of
(M_k − r_k) / r_k × 100 with r_k the single-task reference (`select_refs`, which `compare` and
`tune` fill from the finished `detect` / `classify` runs' val figures). Where a reference is
missing (a run trained on its own, a single-task reference itself) the score is the unweighted
mean of the metrics × 100: the same ranking as Δm with every reference 1, recorded as such.
`composite` is the former rule (mean over tasks of 0.1 mAP@0.5 + 0.9 mAP@0.5:0.95 and view
accuracy); a metric name selects on that metric alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# task -> the metrics Δm averages over (shared with the report)
DELTA_M_METRICS: dict[str, tuple[str, ...]] = {"detect": ("map50", "map50_95"),
                                               "classify": ("accuracy", "macro_f1")}
_BLOCK = {"map50": "detection", "map50_95": "detection", "accuracy": "classification",
          "macro_f1": "classification"}
SELECT_CHOICES = ("delta-m", "composite", "map50", "map50_95", "accuracy", "macro_f1")


def metric_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The Δm metrics a metrics dict holds (None and absent blocks left out)."""
    out: dict[str, float] = {}
    for key, block in _BLOCK.items():
        v = (metrics.get(block) or {}).get(key)
        if v is not None:
            out[key] = float(v)
    return out


def delta_m_term(value: float, reference: float, higher_is_better: bool = True) -> float:
    """One metric's term of Δm (Maninis et al. 2019): (−1)^l (M − r) / r × 100, l = 1 where lower
    is better. Δm is the mean of the terms over its K metrics: the one definition, used by
    checkpoint selection here and by the report (`medmtl.report.stats.delta_m`)."""
    sign = 1.0 if higher_is_better else -1.0
    return sign * (value - reference) / reference * 100.0


def uses_references(select: str, refs: Mapping[str, float] | None,
                    values: Mapping[str, float]) -> bool:
    return select == "delta-m" and bool(refs) and bool(values) and all(
        k in refs and refs[k] > 0 and math.isfinite(refs[k]) for k in values)  # type: ignore[operator]


def selection_score(metrics: Mapping[str, Any], select: str = "delta-m",
                    refs: Mapping[str, float] | None = None) -> float:
    """The score a validation is ranked by (higher is better; 0.0 when nothing is scored)."""
    if select not in SELECT_CHOICES:
        raise ValueError(f"unknown selection metric {select!r}; one of {', '.join(SELECT_CHOICES)}")
    values = metric_values(metrics)
    if select == "composite":
        parts = []
        if "map50" in values and "map50_95" in values:
            parts.append(0.1 * values["map50"] + 0.9 * values["map50_95"])
        if "accuracy" in values:
            parts.append(values["accuracy"])
        return sum(parts) / len(parts) if parts else 0.0
    if select != "delta-m":
        return values.get(select, 0.0)
    if not values:
        return 0.0
    if uses_references(select, refs, values):
        assert refs is not None
        return sum(delta_m_term(v, refs[k]) for k, v in values.items()) / len(values)
    return sum(values.values()) / len(values) * 100.0


def describe(select: str, refs: Mapping[str, float] | None,
             metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `selection` fields of metrics.json: the rule, its references and whether they were
    used (False: the unweighted-mean fallback of delta-m)."""
    values = metric_values(metrics or {})
    used = uses_references(select, refs, values)
    return {"metric": select, "references": dict(refs) if refs else None,
            "references_used": used if select == "delta-m" else None,
            "score": None if metrics is None else selection_score(metrics, select, refs)}


def references_from(metrics_by_task: Mapping[str, list[Mapping[str, Any]]]) -> dict[str, float]:
    """Mean val figure of each Δm metric over the single-task runs (task -> their metrics.json
    val blocks): the references a comparison's joint runs select by. A mean of 0 (an untrained
    detector's mAP) cannot be a reference and is left out."""
    refs: dict[str, float] = {}
    for task, keys in DELTA_M_METRICS.items():
        runs = [metric_values(m) for m in metrics_by_task.get(task, [])]
        for k in keys:
            vals = [r[k] for r in runs if k in r and math.isfinite(r[k])]
            if vals and sum(vals) > 0:
                refs[k] = sum(vals) / len(vals)
    return refs
