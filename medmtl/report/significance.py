"""Paired comparison across seeds: values per seed, mean ± std, paired t-tests with confidence
intervals, and Holm's correction over a family of comparisons.

A method is compared with a reference on the seeds both have: :func:`per_seed` reads one metric
per seed from the runs' ``metrics.json``, :func:`compare` runs a two-sided paired t-test of the
differences (:func:`paired_ttest`, ``scipy.stats.ttest_rel``) with the t interval of the mean
difference, and turns it into a verdict (better / worse / indistinguishable, or why none can be
drawn). :func:`holm` adjusts the p-values of a family of comparisons and :func:`apply_holm`
redraws the family's verdicts from the adjusted values. Used by the aggregation
(:mod:`medmtl.report.stats`, which re-exports these names) and by
:mod:`medmtl.report.recommendations`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from medmtl.evaluation.multiple import holm
from medmtl.report.collect import Run, extract

__all__ = [
    "ALPHA",
    "CONFIDENCE",
    "NOT_ENOUGH",
    "NO_SPREAD",
    "UNDEFINED",
    "apply_holm",
    "compare",
    "holm",
    "mean_std",
    "paired_ttest",
    "block_seeds",
    "per_seed",
    "seed_block",
    "verdict_of",
]

ALPHA = 0.05
CONFIDENCE = 0.95
NOT_ENOUGH = "not enough seeds to tell"
NO_SPREAD = "no test: the same difference in every seed (zero spread)"
UNDEFINED = "undefined (non-finite value)"


def paired_ttest(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE,
                 ) -> tuple[float, float, int, tuple[float, float]]:
    """Two-sided paired t-test of a - b: (t, p, df, (ci_low, ci_high)), the interval being the
    t interval of the mean difference at ``confidence``. Needs >= 2 pairs.

    With zero spread of the differences (spread below 1e-12 of the values' magnitude is
    rounding and counts as zero) there is no test: t and p are NaN and the interval is the point
    itself. Identical differences in every seed come from deterministic quantities (parameters,
    the same architecture's latency), not from evidence of a difference: a p of 0 would claim
    certainty no data gave.
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = d.size
    if n < 2:
        raise ValueError("a paired t-test needs at least 2 pairs")
    mean = float(d.mean())
    eps = 1e-12 * float(np.max(np.abs(np.concatenate([np.ravel(a), np.ravel(b)]))))
    if float(d.std(ddof=1)) <= eps:
        return math.nan, math.nan, n - 1, (mean, mean)
    res = sps.ttest_rel(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    ci = res.confidence_interval(confidence_level=confidence)
    return float(res.statistic), float(res.pvalue), n - 1, (float(ci.low), float(ci.high))


def verdict_of(p: float, mean_diff: float, higher_is_better: bool, alpha: float = ALPHA) -> str:
    """'better' / 'worse' when p < alpha and the difference is not zero, else 'indistinguishable'."""
    if p < alpha and mean_diff != 0.0:
        return "better" if (mean_diff > 0) == higher_is_better else "worse"
    return "indistinguishable"


def compare(method: dict[int, float], baseline: dict[int, float], higher_is_better: bool,
            alpha: float = ALPHA, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Verdict of a method against the baseline, pairing runs by seed.

    ``mean_diff`` is the mean over the paired seeds of method - baseline; ``ci_low`` /
    ``ci_high`` its t interval at ``confidence`` (None with fewer than 2 pairs or a non-finite
    value); ``p`` the raw two-sided p-value (the verdict here uses it; :func:`apply_holm` redraws
    it from the adjusted one).
    """
    seeds = sorted(set(method) & set(baseline))
    out: dict[str, Any] = {"n_pairs": len(seeds), "t": None, "p": None, "df": None,
                           "mean_diff": None, "ci_low": None, "ci_high": None,
                           "confidence": confidence}
    if seeds:
        out["mean_diff"] = float(np.mean([method[s] - baseline[s] for s in seeds]))
    if len(seeds) < 2:
        out["verdict"] = NOT_ENOUGH
        return out
    if not all(math.isfinite(v) for s in seeds for v in (method[s], baseline[s])):
        out["verdict"] = UNDEFINED  # a diverged run (NaN/inf) is never "indistinguishable"
        return out
    t, p, df, (lo, hi) = paired_ttest([method[s] for s in seeds], [baseline[s] for s in seeds],
                                      confidence)
    if math.isnan(p):  # zero spread: no test, no p-value (left out of the Holm family)
        out.update(df=df, ci_low=lo, ci_high=hi, verdict=NO_SPREAD)
        return out
    out.update(t=t, p=p, df=df, ci_low=lo, ci_high=hi)
    out["verdict"] = verdict_of(p, out["mean_diff"], higher_is_better, alpha)
    return out


# --- multiple comparisons ----------------------------------------------------------------------

def apply_holm(entries: Sequence[tuple[dict[str, Any], bool]], alpha: float = ALPHA) -> int:
    """Holm over the given :func:`compare` results (each with its metric's higher_is_better).

    Every entry with a p-value is one comparison of the family; its ``p_adj`` is set and its
    ``verdict`` redrawn from it (the raw verdict stays as ``verdict_unadjusted``). Entries
    without a p-value (not enough seeds, non-finite values) are not tests and keep their verdict.
    Returns the family size.
    """
    tested = [(e, hib) for e, hib in entries if e.get("p") is not None]
    for (e, hib), padj in zip(tested, holm([e["p"] for e, _ in tested]), strict=True):
        e["p_adj"] = padj
        e["verdict_unadjusted"] = e["verdict"]
        e["verdict"] = verdict_of(padj, e["mean_diff"], hib, alpha)
    return len(tested)


# --- values per seed ---------------------------------------------------------------------------

def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1; None with fewer than two values)."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def seed_block(values: dict[int, float]) -> dict[str, Any]:
    """A summary block of per-seed values: mean, sample std, count and the values by seed (the
    cells of summary.json's ``metrics``)."""
    mean, std = mean_std(list(values.values()))
    return {"mean": mean, "std": std, "n": len(values),
            "per_seed": {str(s): v for s, v in sorted(values.items())}}


def block_seeds(entry: dict[str, Any], key: str = "delta_m") -> dict[int, float]:
    """The per-seed values of a method's aggregated block (``entry[key]["per_seed"]``, e.g. its
    Δm on test or, with ``key="delta_m_val"``, on val) by integer seed; {} when it has none."""
    return {int(s): v for s, v in (entry.get(key) or {}).get("per_seed", {}).items()}


def per_seed(runs: Sequence[Run], method: str, key: str) -> dict[int, float]:
    """Metric ``key`` of the method's evaluated runs, by seed (runs without a value left out)."""
    out: dict[int, float] = {}
    for r in runs:
        if r.method == method and r.metrics is not None:
            v = extract(r.metrics)[key]
            if v is not None:
                out[r.seed] = v
    return out
