"""Aggregation over seeds: per-method mean ± std, relative differences, verdicts and delta-m.

Every number produced here is computed from the runs' ``metrics.json``; nothing is estimated.
The paired t-tests and values per seed live in :mod:`medmtl.report.significance`, the
recommendation texts in :mod:`medmtl.report.recommendations`; both are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medmtl.report.collect import METRIC_BY_KEY, METRICS, Run
from medmtl.report.recommendations import accuracy_first, efficiency_first, recommend
from medmtl.report.significance import (
    ALPHA,
    NOT_ENOUGH,
    UNDEFINED,
    betainc,
    compare,
    mean_std,
    paired_ttest,
    per_seed,
    t_cdf,
    t_two_sided_p,
)

__all__ = [
    "ALPHA",
    "DEFAULT_DELTA_M",
    "NOT_ENOUGH",
    "NO_VERDICT",
    "UNDEFINED",
    "accuracy_first",
    "aggregate",
    "betainc",
    "choose_baseline",
    "compare",
    "delta_m",
    "efficiency_first",
    "is_joint",
    "mean_std",
    "method_order",
    "paired_ttest",
    "per_seed",
    "recommend",
    "t_cdf",
    "t_two_sided_p",
]

# Weights are not "better" when larger: no verdict is drawn on them.
NO_VERDICT = {"weight_detect", "weight_classify"}
DEFAULT_DELTA_M = {"detect": "map50", "classify": "accuracy"}


# --- aggregation -------------------------------------------------------------------------------

def is_joint(runs: Sequence[Run], method: str) -> bool:
    """Both tasks evaluated in every finished run of the method."""
    done = [r for r in runs if r.method == method and r.metrics is not None]
    return bool(done) and all(r.metrics.get("detection") is not None  # type: ignore[union-attr]
                              and r.metrics.get("classification") is not None  # type: ignore[union-attr]
                              for r in done)


def method_order(methods: Sequence[str]) -> list[str]:
    """The presets' order (original, fixed, ..., detect, classify), unknown names after."""
    from medmtl.methods import method_names

    known = method_names()
    return sorted(set(methods), key=lambda m: (known.index(m) if m in known else len(known), m))


def choose_baseline(runs: Sequence[Run], baseline: str | None = None) -> str | None:
    methods = method_order([r.method for r in runs if r.finished])
    if baseline is not None:
        if baseline not in methods:
            raise ValueError(f"baseline {baseline!r} has no finished runs; "
                             f"methods: {', '.join(methods) or '(none)'}")
        return baseline
    if "fixed" in methods:
        return "fixed"
    joint = [m for m in methods if is_joint(runs, m)]
    return (joint or methods or [None])[0]


def delta_m(runs: Sequence[Run], method: str,
            references: dict[str, str] | None = None) -> dict[str, Any]:
    """Delta-m (Maninis et al. 2019) of a joint method against the single-task references.

    Δm = (1/T) Σ_t (-1)^{l_t} (M_m,t − M_b,t) / M_b,t × 100, with M_b,t the mean over the
    single-task runs ("detect" / "classify") and l_t = 1 where lower is better. Per seed, the
    method's run is compared with the same reference means, so the mean of the per-seed values
    equals Δm of the means.
    """
    references = references or DEFAULT_DELTA_M
    out: dict[str, Any] = {"available": False, "metrics": dict(references), "mean": None,
                           "std": None, "per_seed": {}, "terms": {}, "reference": {},
                           "reason": None}
    ref_means: dict[str, float] = {}
    for task, key in references.items():
        vals = list(per_seed(runs, task, key).values())
        if not vals:
            out["reason"] = (f"no finished single-task '{task}' runs with {key}; "
                             "Δm needs them as reference")
            return out
        ref_means[task] = float(np.mean(vals))
        if ref_means[task] == 0.0:
            out["reason"] = f"single-task '{task}' reference {key} is 0"
            return out
    out["reference"] = ref_means
    per_task = {task: per_seed(runs, method, key) for task, key in references.items()}
    seeds = sorted(set.intersection(*(set(v) for v in per_task.values())))
    if not seeds:
        out["reason"] = f"'{method}' has no finished run with every reference metric"
        return out
    terms_seed: dict[str, list[float]] = {t: [] for t in references}
    values: list[float] = []
    for s in seeds:
        terms = []
        for task, key in references.items():
            sign = 1.0 if METRIC_BY_KEY[key].higher_is_better else -1.0
            term = sign * (per_task[task][s] - ref_means[task]) / ref_means[task] * 100.0
            terms_seed[task].append(term)
            terms.append(term)
        values.append(float(np.mean(terms)))
        out["per_seed"][str(s)] = values[-1]
    out["mean"], out["std"] = mean_std(values)
    out["terms"] = {t: float(np.mean(v)) for t, v in terms_seed.items()}
    out["available"] = True
    return out


def aggregate(runs: Sequence[Run], baseline: str | None = None, alpha: float = ALPHA,
              delta_m_metrics: dict[str, str] | None = None) -> dict[str, Any]:
    """Per-method aggregates, relative differences, verdicts and Δm."""
    base = choose_baseline(runs, baseline)
    methods = method_order([r.method for r in runs])
    refs = dict(delta_m_metrics or DEFAULT_DELTA_M)
    bad = {t: k for t, k in refs.items() if t not in DEFAULT_DELTA_M or k not in METRIC_BY_KEY}
    if bad or not refs:
        raise ValueError(f"delta_m_metrics must map tasks {tuple(DEFAULT_DELTA_M)} to metric "
                         f"keys ({', '.join(METRIC_BY_KEY)}); got {refs!r}")
    base_seed = {m.key: per_seed(runs, base, m.key) for m in METRICS} if base else {}
    out: dict[str, Any] = {}
    for method in methods:
        mine = [r for r in runs if r.method == method]
        done = [r for r in mine if r.finished]
        entry: dict[str, Any] = {
            "seeds": sorted(r.seed for r in done),
            "unfinished_seeds": sorted(r.seed for r in mine if not r.finished),
            "n": len(done), "joint": is_joint(runs, method),
            "arch": next((r.arch for r in mine if r.arch), None),
            "metrics": {}, "relative_to_baseline_pct": {}, "significance": {}}
        for m in METRICS:
            vals = per_seed(runs, method, m.key)
            mean, std = mean_std(list(vals.values()))
            entry["metrics"][m.key] = {"mean": mean, "std": std, "n": len(vals),
                                       "per_seed": {str(s): v for s, v in sorted(vals.items())}}
            bmean = mean_std(list(base_seed.get(m.key, {}).values()))[0]
            rel = None
            if mean is not None and bmean not in (None, 0.0) and method != base:
                rel = (mean - bmean) / abs(bmean) * 100.0  # type: ignore[operator]
            entry["relative_to_baseline_pct"][m.key] = rel
            if method != base and vals and base_seed.get(m.key) and m.key not in NO_VERDICT:
                entry["significance"][m.key] = compare(vals, base_seed[m.key],
                                                       m.higher_is_better, alpha)
        entry["delta_m"] = (delta_m(runs, method, refs) if entry["joint"]
                            else {"available": False, "reason": "single-task reference"
                                  if method in refs else "not a joint method"})
        out[method] = entry
    return {"baseline": base, "alpha": alpha, "delta_m_metrics": refs, "methods": out}

