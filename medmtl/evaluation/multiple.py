"""Multiple comparisons: Holm's step-down adjustment, shared by the report's verdicts
(:mod:`medmtl.report.significance`) and the automatic branching rule
(:mod:`medmtl.engine.autobranch`). numpy only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["holm"]


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order.

    Sorted ascending, p_(i) (i = 1..m) becomes max_{j <= i} min(1, (m - j + 1) p_(j)): never
    below an earlier adjusted value and capped at 1; tied raw values get equal adjusted ones.
    Rejecting where the adjusted value is < alpha is Holm's procedure at family-wise level alpha.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or not np.all((p >= 0.0) & (p <= 1.0)):
        raise ValueError(f"p-values must be a flat sequence in [0, 1], got {pvalues!r}")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped) if m else stepped
    return adjusted.tolist()
