"""Paired comparison across seeds: values per seed, mean ± std and paired t-tests (no scipy).

A method is compared with a reference on the seeds both have: :func:`per_seed` reads one metric
per seed from the runs' ``metrics.json``, :func:`compare` runs a two-sided paired t-test of the
differences (:func:`paired_ttest`) and turns it into a verdict (better / worse /
indistinguishable, or why none can be drawn). Student's t distribution comes from the
regularized incomplete beta function, so scipy is not needed. Used by the aggregation
(:mod:`medmtl.report.stats`, which re-exports these names) and by
:mod:`medmtl.report.recommendations`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medmtl.report.collect import Run, extract

__all__ = [
    "ALPHA",
    "NOT_ENOUGH",
    "UNDEFINED",
    "betainc",
    "compare",
    "mean_std",
    "paired_ttest",
    "per_seed",
    "t_cdf",
    "t_two_sided_p",
]

ALPHA = 0.05
NOT_ENOUGH = "not enough seeds to tell"
UNDEFINED = "undefined (non-finite value)"


# --- Student t distribution via the regularized incomplete beta function ----------------------

def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b) (modified Lentz's method)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
                    -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value P(|T| >= |t|)."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, int]:
    """Paired two-sided t-test of a - b: (t, p, df). Needs >= 2 pairs.

    With zero spread of the differences the statistic is +-inf (p = 0) unless every difference is
    zero (t = 0, p = 1).
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = d.size
    if n < 2:
        raise ValueError("a paired t-test needs at least 2 pairs")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    else:
        t = mean / (sd / math.sqrt(n))
    return t, t_two_sided_p(t, n - 1), n - 1


def compare(method: dict[int, float], baseline: dict[int, float], higher_is_better: bool,
            alpha: float = ALPHA) -> dict[str, Any]:
    """Verdict of a method against the baseline, pairing runs by seed."""
    seeds = sorted(set(method) & set(baseline))
    out: dict[str, Any] = {"n_pairs": len(seeds), "t": None, "p": None, "df": None,
                           "mean_diff": None}
    if seeds:
        out["mean_diff"] = float(np.mean([method[s] - baseline[s] for s in seeds]))
    if len(seeds) < 2:
        out["verdict"] = NOT_ENOUGH
        return out
    if not all(math.isfinite(v) for s in seeds for v in (method[s], baseline[s])):
        out["verdict"] = UNDEFINED  # a diverged run (NaN/inf) is never "indistinguishable"
        return out
    t, p, df = paired_ttest([method[s] for s in seeds], [baseline[s] for s in seeds])
    out.update(t=None if math.isinf(t) else t, p=p, df=df)
    if p < alpha and out["mean_diff"] != 0.0:
        up = out["mean_diff"] > 0
        out["verdict"] = "better" if up == higher_is_better else "worse"
    else:
        out["verdict"] = "indistinguishable"
    return out


# --- values per seed ---------------------------------------------------------------------------

def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1; None with fewer than two values)."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def per_seed(runs: Sequence[Run], method: str, key: str) -> dict[int, float]:
    """Metric ``key`` of the method's evaluated runs, by seed (runs without a value left out)."""
    out: dict[int, float] = {}
    for r in runs:
        if r.method == method and r.metrics is not None:
            v = extract(r.metrics)[key]
            if v is not None:
                out[r.seed] = v
    return out
