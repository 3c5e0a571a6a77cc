"""Aggregation over seeds: per-method mean ± std, relative differences, verdicts and delta-m.

Every number produced here is computed from the runs' ``metrics.json``; nothing is estimated.
The paired t-tests, intervals, Holm's correction and values per seed live in
:mod:`medmtl.report.significance`, the recommendation texts in
:mod:`medmtl.report.recommendations`; both are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from medmtl.evaluation.selection import DELTA_M_METRICS, delta_m_term
from medmtl.report.collect import METRIC_BY_KEY, METRICS, Run, compressed_runs
from medmtl.report.pareto import analyse
from medmtl.report.recommendations import accuracy_first, efficiency_first, recommend
from medmtl.report.significance import (
    ALPHA,
    CONFIDENCE,
    NOT_ENOUGH,
    UNDEFINED,
    apply_holm,
    compare,
    holm,
    mean_std,
    paired_ttest,
    per_seed,
    seed_block,
)

__all__ = [
    "ALPHA",
    "CONFIDENCE",
    "DEFAULT_DELTA_M",
    "DELTA_M_MAIN",
    "FAMILY_METRICS",
    "NOT_ENOUGH",
    "NO_VERDICT",
    "UNDEFINED",
    "accuracy_first",
    "aggregate",
    "choose_baseline",
    "compare",
    "delta_m",
    "efficiency_first",
    "holm",
    "is_joint",
    "mean_std",
    "method_order",
    "paired_ttest",
    "per_seed",
    "recommend",
]

# Weights are not "better" when larger: no verdict is drawn on them. Nor on the efficiency
# quantities (parameters, FLOPs, size: deterministic; times and memory: measurements with a noise
# band, not samples of a seed distribution): they are reported as measured, mean ± std over runs.
NO_VERDICT = {"weight_detect", "weight_classify"}
VERDICT_KINDS = ("metric", "loss")
# Δm's two-metric form (configurable) and the main, four-metric one.
DEFAULT_DELTA_M = {"detect": "map50", "classify": "accuracy"}
DELTA_M_MAIN: dict[str, tuple[str, ...]] = DELTA_M_METRICS  # the checkpoint selection's too
# The family Holm's correction runs over: every non-baseline method x these metrics (the
# verdicts the report shows).
FAMILY_METRICS = ("map50", "map50_95", "accuracy", "macro_f1", "val_loss_detect",
                  "val_loss_classify")


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
            references: Mapping[str, str | Sequence[str]] | None = None) -> dict[str, Any]:
    """Delta-m (Maninis et al. 2019) of a joint method against the single-task references.

    Δm = (1/K) Σ_k (-1)^{l_k} (M_m,k − M_b,k) / M_b,k × 100 over the K metrics that
    ``references`` names (task -> one metric key, or several), with M_b,k the mean over that
    task's single-task runs ("detect" / "classify") and l_k = 1 where lower is better. With one
    metric per task this is the per-task form. Per seed, the method's run is compared with the
    same reference means, so the mean of the per-seed values equals Δm of the means. ``terms``
    holds each task's mean term, ``metric_terms`` each metric's; ``reference`` the reference
    means (task -> value, or task -> {key: value} when a task has several metrics).
    """
    references = references or DEFAULT_DELTA_M
    keys = {t: [k] if isinstance(k, str) else list(k) for t, k in references.items()}
    single = all(isinstance(k, str) for k in references.values())
    out: dict[str, Any] = {"available": False,
                           "metrics": {t: k if isinstance(k, str) else list(k)
                                       for t, k in references.items()},
                           "mean": None, "std": None, "per_seed": {}, "terms": {},
                           "metric_terms": {}, "reference": {}, "reason": None}
    pairs = [(task, key) for task, ks in keys.items() for key in ks]
    ref_means: dict[tuple[str, str], float] = {}
    for task, key in pairs:
        vals = list(per_seed(runs, task, key).values())
        if not vals:
            out["reason"] = (f"no finished single-task '{task}' runs with {key}; "
                             "Δm needs them as reference")
            return out
        ref_means[task, key] = float(np.mean(vals))
        if ref_means[task, key] == 0.0:
            out["reason"] = f"single-task '{task}' reference {key} is 0"
            return out
    out["reference"] = {t: ref_means[t, ks[0]] if single else {k: ref_means[t, k] for k in ks}
                        for t, ks in keys.items()}
    mine = {pair: per_seed(runs, method, pair[1]) for pair in pairs}
    seeds = sorted(set.intersection(*(set(v) for v in mine.values())))
    if not seeds:
        out["reason"] = f"'{method}' has no finished run with every reference metric"
        return out
    terms_seed: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
    values: list[float] = []
    for s in seeds:
        for task, key in pairs:
            terms_seed[task, key].append(delta_m_term(mine[task, key][s], ref_means[task, key],
                                                      METRIC_BY_KEY[key].higher_is_better))
        values.append(float(np.mean([terms_seed[pair][-1] for pair in pairs])))
        out["per_seed"][str(s)] = values[-1]
    out["mean"], out["std"] = mean_std(values)
    out["metric_terms"] = {key: float(np.mean(terms_seed[task, key])) for task, key in pairs}
    out["terms"] = {t: float(np.mean([terms_seed[t, k] for k in ks])) for t, ks in keys.items()}
    out["available"] = True
    return out


def aggregate(runs: Sequence[Run], baseline: str | None = None, alpha: float = ALPHA,
              delta_m_metrics: dict[str, str] | None = None,
              family: Sequence[str] = FAMILY_METRICS) -> dict[str, Any]:
    """Per-method aggregates, relative differences, verdicts (Holm-adjusted over the family:
    every non-baseline method x the ``family`` metrics) and Δm (``delta_m``: the four metrics of
    DELTA_M_MAIN; ``delta_m_two``: one metric per task, ``delta_m_metrics``)."""
    base = choose_baseline(runs, baseline)
    methods = method_order([r.method for r in runs])
    refs = dict(delta_m_metrics or DEFAULT_DELTA_M)
    bad = {t: k for t, k in refs.items() if t not in DEFAULT_DELTA_M or k not in METRIC_BY_KEY}
    if bad or not refs:
        raise ValueError(f"delta_m_metrics must map tasks {tuple(DEFAULT_DELTA_M)} to metric "
                         f"keys ({', '.join(METRIC_BY_KEY)}); got {refs!r}")
    base_seed = {m.key: per_seed(runs, base, m.key) for m in METRICS} if base else {}
    # the same runs scored on val, where a held-out test block exists: the split that chooses
    held_out = bool(runs) and all(r.split == "test" for r in runs if r.finished)
    val_runs = [replace(r, metrics=r.val_metrics, split="val") for r in runs] if held_out else []
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
            entry["metrics"][m.key] = seed_block(vals)
            mean = entry["metrics"][m.key]["mean"]
            bmean = mean_std(list(base_seed.get(m.key, {}).values()))[0]
            rel = None
            if mean is not None and bmean not in (None, 0.0) and method != base:
                rel = (mean - bmean) / abs(bmean) * 100.0  # type: ignore[operator]
            entry["relative_to_baseline_pct"][m.key] = rel
            if method != base and vals and base_seed.get(m.key) and m.key not in NO_VERDICT \
                    and m.kind in VERDICT_KINDS:
                sig = compare(vals, base_seed[m.key], m.higher_is_better, alpha)
                sig.update(p_adj=None, correction="holm" if m.key in family else "none")
                entry["significance"][m.key] = sig
        unavailable = {"available": False, "reason": "single-task reference"
                       if method in refs else "not a joint method"}
        entry["delta_m"] = delta_m(runs, method, DELTA_M_MAIN) if entry["joint"] \
            else dict(unavailable)
        entry["delta_m_two"] = delta_m(runs, method, refs) if entry["joint"] \
            else dict(unavailable)
        entry["delta_m_val"] = delta_m(val_runs, method, DELTA_M_MAIN) \
            if entry["joint"] and held_out else dict(unavailable, reason="no held-out test "
                                                      "split: the runs are scored on val")
        out[method] = entry
    members = [(method, key) for method in out if method != base for key in family
               if key in out[method]["significance"]]
    size = apply_holm([(out[m]["significance"][k], METRIC_BY_KEY[k].higher_is_better)
                       for m, k in members], alpha)
    tested = [[m, k] for m, k in members if out[m]["significance"][k]["p"] is not None]
    return {"baseline": base, "alpha": alpha, "confidence": CONFIDENCE,
            "delta_m_metrics": refs,
            "delta_m_main_metrics": {t: list(k) for t, k in DELTA_M_MAIN.items()},
            "multiple_comparisons": {"correction": "holm", "family_size": size,
                                     "metrics": list(family), "comparisons": tested},
            "methods": out}



def compressed_entries(runs: Sequence[Run], variants: Sequence[Run]) -> dict[str, Any]:
    """`aggregate`-style entries (``n``, ``joint``, ``delta_m``, ``compressed``, ``of``) of the
    compressed variants (`collect.compressed_runs`), their Δm against the same single-task
    references as the float runs, for the Pareto front."""
    everything = list(runs) + list(variants)
    out: dict[str, Any] = {}
    for name in sorted({v.method for v in variants}):
        of, kind = name.rsplit("+", 1)
        if not is_joint(runs, of):
            continue
        out[name] = {"n": sum(v.method == name for v in variants), "joint": True,
                     "compressed": kind, "of": of,
                     "delta_m": delta_m(everything, name, DELTA_M_MAIN)}
    return out


def deployment_points(runs: Sequence[Run], agg: dict[str, Any], runtime: str) -> dict[str, Any]:
    """`pareto.analyse` of the methods and their compressed variants (`collect.compressed_runs`:
    ``<run>/compressed/<kind>/metrics.json``, when present)."""
    variants = compressed_runs(runs)
    methods = {**agg["methods"], **compressed_entries(runs, variants)}
    return analyse(list(runs) + variants, {**agg, "methods": methods}, runtime)
