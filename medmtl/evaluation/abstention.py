"""View abstention: when `medmtl predict` says "view uncertain" instead of a view.

Two rules, both documented in docs/reliability.md:

* a confidence threshold on the largest softmax probability, measured on val when a run
  finishes (`abstention_threshold`): the lowest threshold at which the accuracy of the val
  frames it accepts (max probability >= threshold) reaches ``ABSTAIN_TARGET``. It is the point
  of the val risk-coverage curve with the widest coverage at that accuracy. A model that
  reaches the target on no share of val gets threshold 1.0: every view is reported uncertain.
* an out-of-distribution guard for blank or constant frames (`is_blank`): a pixel standard
  deviation below ``BLANK_STD`` (of 255) is no echo image, whatever the softmax says.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ABSTAIN_TARGET", "BLANK_STD", "abstention_threshold", "is_blank"]

ABSTAIN_TARGET = 0.9  # val accuracy of the accepted frames the threshold is set for
BLANK_STD = 2.0  # pixel std (0-255) below which a frame is blank: a constant or near-constant


def is_blank(rgb: np.ndarray, min_std: float = BLANK_STD) -> bool:
    """Whether an image holds (nearly) one value: its pixel standard deviation is below
    ``min_std`` on the 0-255 scale (an echo frame, black around the sector, is far above)."""
    return rgb.size == 0 or float(np.asarray(rgb, np.float32).std()) < min_std


def abstention_threshold(max_prob: np.ndarray, correct: np.ndarray,
                         target: float = ABSTAIN_TARGET) -> dict[str, Any]:
    """The threshold on the max softmax probability (see the module docstring) from labelled
    val frames: ``max_prob`` (N,) and ``correct`` (N,) bool (argmax == label). Returns
    ``threshold``, ``target``, ``reached``, ``frames``, ``accepted`` (val frames at or above
    it), ``coverage``, ``accuracy_accepted`` and ``accuracy_all``."""
    p = np.asarray(max_prob, np.float64).reshape(-1)
    c = np.asarray(correct, bool).reshape(-1)
    n = int(p.size)
    out: dict[str, Any] = {"rule": f"lowest max-probability threshold whose accepted val frames "
                                   f"reach accuracy {target:g}",
                           "target": float(target), "frames": n, "threshold": 1.0,
                           "reached": False, "accepted": 0, "coverage": 0.0,
                           "accuracy_accepted": None,
                           "accuracy_all": float(c.mean()) if n else None}
    if n == 0:
        return out
    order = np.argsort(-p, kind="stable")
    ps, cs = p[order], c[order]
    acc = np.cumsum(cs) / np.arange(1, n + 1)
    # the accepted set of threshold ps[k] is every frame with p >= ps[k]: the prefix up to the
    # last frame tied with it
    last = np.searchsorted(-ps, -ps, side="right") - 1
    ok = acc[last] >= target - 1e-12
    if ok.any():
        k = int(last[np.flatnonzero(ok).max()])  # the widest accepted prefix at the target
        out.update(threshold=float(ps[k]), reached=True, accepted=k + 1,
                   coverage=(k + 1) / n, accuracy_accepted=float(acc[k]))
    return out
