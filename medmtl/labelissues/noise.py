"""Systematic view-label noise, clip by clip (issue #27): the corruption matrix estimated from
trusted clips (gold loss correction), the clean-view posterior under it, the clip ranking, and
the suggested review list.

Why a second finder: where whole clips are mislabelled the same way across patients, a model
trained on the labels learns the error, and confident learning, which estimates the noise from
that model alone, takes it for the truth (``benchmarks/label_noise.py`` measures it). A few
clips whose view a person judged (`medmtl.data.trusted`) tell how the labels are corrupted.

Notation: K views; for a clip, ``p`` = the mean over its frames of the out-of-sample
probabilities of a model trained on the label files, an estimate of P(given label | frames);
``g`` = the clip's given label (its frames' majority); ``C[i, j]`` = P(given j | true i).

* **Estimate** (Hendrycks et al. 2018, gold loss correction, with clips as the unit):
  ``C[i] = mean of p over the trusted clips whose trusted view is i``. A row without a trusted
  clip is not estimated (identity, reported). Uncertainty: percentile bootstrap over trusted
  clips, resampled within each true view; it covers the sampling of the trusted clips, not the
  model's own softness (a model is never certain, so an entry that is truly 0 comes out at a
  few per cent). ``counted[i, j]`` (how many trusted clips of true view i carry label j), with
  exact binomial (Clopper-Pearson) intervals, is reported beside it as a model-free check.
* **Without trusted clips**: ``C`` from cleanlab's confident joint (`estimate_noise_matrices`),
  i.e. from the noisy model alone: the benchmark shows what that can and cannot find.
* **Clean posterior**: ``q`` = the point of the simplex closest to solving ``C^T q = p`` (the
  label distribution the model learned is the clean one pushed through the corruption), by
  non-negative least squares with the sum-to-one row weighted in.
* **Label posterior**: ``post_i ∝ q_i C_s[i, g]`` (``C_s`` = C smoothed by 1 % towards uniform
  so that no label is impossible); ``score = 1 - post_g`` = P(the clip's label is wrong),
  ``suggested = argmax post``. Trusted clips get their trusted view and score 0 or 1.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SMOOTH = 0.01


@dataclass
class ClipTable:
    """One row per clip with a view label and out-of-sample probabilities."""

    clips: list[str]
    patients: list[str]
    given: np.ndarray  # (N,) majority label of the clip's frames
    probs: np.ndarray  # (N, K) mean out-of-sample probabilities of its frames
    frames: np.ndarray  # (N,) frames with a view label and probabilities
    agree: np.ndarray  # (N,) share of those frames carrying the given label
    stems: list[list[str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def row(self) -> dict[str, int]:
        """clip -> its row."""
        return {c: j for j, c in enumerate(self.clips)}


def build_clip_table(clips: list[str], patients: list[str], labels: list[int],
                     probs: np.ndarray, stems: list[str] | None = None,
                     num_views: int | None = None) -> ClipTable:
    """Group frames (one entry per labelled frame with probabilities) into clips."""
    probs = np.asarray(probs, np.float64)
    k = num_views or probs.shape[1]
    order: dict[str, list[int]] = {}
    for i, c in enumerate(clips):
        order.setdefault(c, []).append(i)
    names = sorted(order)
    given, mean, n, agree, pats, st = [], [], [], [], [], []
    for c in names:
        idx = order[c]
        votes = Counter(labels[i] for i in idx)
        top = max(range(k), key=lambda v: (votes.get(v, 0), -v))  # ties: lowest class index
        given.append(top)
        mean.append(probs[idx].mean(0))
        n.append(len(idx))
        agree.append(votes[top] / len(idx))
        pats.append(patients[idx[0]])
        st.append([stems[i] for i in idx] if stems is not None else [])
    return ClipTable(names, pats, np.asarray(given, np.int64),
                     np.asarray(mean).reshape(-1, k), np.asarray(n, np.int64),
                     np.asarray(agree, np.float64), st)


@dataclass
class CorruptionEstimate:
    matrix: np.ndarray  # (K, K)
    low: np.ndarray  # (K, K) 2.5 % bootstrap percentile
    high: np.ndarray  # (K, K) 97.5 %
    counted: np.ndarray  # (K, K) trusted clips of true i with given label j
    clips_per_class: np.ndarray  # (K,)
    source: str  # "trusted" or "confident-joint"
    notes: list[str] = field(default_factory=list)

    def counted_interval(self) -> tuple[np.ndarray, np.ndarray]:
        """Clopper-Pearson 95 % intervals of ``counted`` as row shares (exact binomial: the
        model-free check; a row without trusted clips is [0, 1])."""
        from scipy.stats import beta

        n = self.counted.sum(1, keepdims=True)
        x = self.counted
        with np.errstate(invalid="ignore", divide="ignore"):
            lo = np.where(x > 0, beta.ppf(0.025, x, n - x + 1), 0.0)
            hi = np.where(x < n, beta.ppf(0.975, x + 1, n - x), 1.0)
        return np.nan_to_num(lo, nan=0.0), np.nan_to_num(hi, nan=1.0)

    def record(self, classes: list[str]) -> dict[str, Any]:
        r4 = lambda a: np.round(a, 4).tolist()  # noqa: E731
        clo, chi = self.counted_interval()
        return {"classes": list(classes), "matrix": r4(self.matrix), "ci95_low": r4(self.low),
                "ci95_high": r4(self.high), "counted": self.counted.astype(int).tolist(),
                "counted_ci95_low": r4(clo), "counted_ci95_high": r4(chi),
                "trusted_clips_per_class": dict(zip(classes, self.clips_per_class.tolist(),
                                                    strict=True)),
                "condition_number": round(float(np.linalg.cond(self.matrix)), 2),
                "source": self.source, "notes": list(self.notes),
                "meaning": "matrix[i][j] = P(label file says j | true view i); rows: true"}


def estimate_corruption(probs: np.ndarray, given: np.ndarray, true: np.ndarray,
                        num_views: int, n_boot: int = 2000, seed: int = 0,
                        prior_clips: float = 1.0) -> CorruptionEstimate:
    """Gold loss correction's estimate from the trusted clips (``probs``: their mean
    out-of-sample probabilities; ``true``: their trusted views; ``given``: their file labels,
    for the counted check), with a bootstrap over clips within each true view."""
    probs = np.asarray(probs, np.float64).reshape(-1, num_views)
    true = np.asarray(true, np.int64)
    given = np.asarray(given, np.int64)
    k = num_views
    m, low, high = np.eye(k), np.eye(k), np.eye(k)
    counted = np.zeros((k, k))
    per = np.bincount(true, minlength=k)
    notes = []
    rng = np.random.default_rng(seed)
    for i in range(k):
        idx = np.flatnonzero(true == i)
        counted[i] = np.bincount(given[idx], minlength=k)
        if len(idx) == 0:
            notes.append(f"row {i}: no trusted clip of this view; identity assumed")
            continue
        w = len(idx) / (len(idx) + prior_clips)  # shrinkage towards "the label is right"
        m[i] = w * probs[idx].mean(0) + (1 - w) * np.eye(k)[i]
        boot = w * probs[idx][rng.integers(0, len(idx), (n_boot, len(idx)))].mean(1) \
            + (1 - w) * np.eye(k)[i]
        low[i], high[i] = np.percentile(boot, [2.5, 97.5], axis=0)
        if len(idx) < 3:
            notes.append(f"row {i} rests on {len(idx)} trusted clip(s): its bootstrap interval "
                         "understates the uncertainty")
    return CorruptionEstimate(m / m.sum(1, keepdims=True), low, high, counted, per, "trusted",
                              notes)


def confident_joint_corruption(frame_labels: np.ndarray, frame_probs: np.ndarray,
                               num_views: int) -> CorruptionEstimate:
    """C from cleanlab's confident joint on the frames (no trusted clip): what the noisy model
    alone says about the noise."""
    from cleanlab.count import compute_confident_joint, estimate_latent

    labels = np.asarray(frame_labels, np.int64)
    cj = compute_confident_joint(labels, np.asarray(frame_probs, np.float64))
    _, nm, _ = estimate_latent(cj, labels)
    c = np.asarray(nm, np.float64).T  # cleanlab: noise_matrix[given][true]
    c = np.clip(c, 0, None)
    c = c / np.maximum(c.sum(1, keepdims=True), 1e-12)
    z = np.zeros((num_views, num_views))
    return CorruptionEstimate(c, c.copy(), c.copy(), z, np.zeros(num_views, np.int64),
                              "confident-joint", ["estimated from the noisy model alone "
                                                  "(cleanlab's confident joint); no interval"])


def clean_posterior(probs: np.ndarray, matrix: np.ndarray, sum_weight: float = 10.0
                    ) -> np.ndarray:
    """Per row, the simplex point q closest to ``matrix^T q = p`` (non-negative least squares)."""
    from scipy.optimize import nnls

    probs = np.atleast_2d(np.asarray(probs, np.float64))
    k = matrix.shape[0]
    a = np.vstack([matrix.T, sum_weight * np.ones((1, k))])
    out = np.empty_like(probs)
    for r, p in enumerate(probs):
        q, _ = nnls(a, np.concatenate([p, [sum_weight]]))
        s = q.sum()
        out[r] = q / s if s > 0 else np.full(k, 1.0 / k)
    return out


def label_posterior(q: np.ndarray, given: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """P(true view | appearance, given label) ∝ q_i C_s[i, g]."""
    k = matrix.shape[0]
    cs = (1 - SMOOTH) * matrix + SMOOTH / k
    post = q * cs[:, np.asarray(given, np.int64)].T
    return post / np.maximum(post.sum(1, keepdims=True), 1e-12)


def rank_clips(table: ClipTable, est: CorruptionEstimate,
               trusted: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Clip rows, most likely wrong first: score = P(label wrong), suggested view, the clean
    posterior and its entropy (uncertainty, 0..1). Trusted clips carry their verdict."""
    trusted = trusted or {}
    k = table.probs.shape[1] if len(table) else est.matrix.shape[0]
    q = clean_posterior(table.probs, est.matrix) if len(table) else np.zeros((0, k))
    post = label_posterior(q, table.given, est.matrix) if len(table) else q
    ent = -(post * np.log(np.clip(post, 1e-12, 1))).sum(1) / np.log(k)
    rows = []
    for j, c in enumerate(table.clips):
        g = int(table.given[j])
        t = trusted.get(c)
        if t is not None:
            score, sugg = float(t != g), int(t)
        else:
            score, sugg = float(1.0 - post[j, g]), int(post[j].argmax())
        rows.append({"clip": c, "patient": table.patients[j], "given": g, "suggested": sugg,
                     "score": score, "uncertainty": float(ent[j]) if t is None else 0.0,
                     "frames": int(table.frames[j]), "agree": float(table.agree[j]),
                     "posterior": post[j].round(4).tolist(),
                     "probs": table.probs[j].round(4).tolist(), "trusted": t is not None})
    # ties (a saturated posterior) go to the clip whose given label the model believes least
    rows.sort(key=lambda r: (-r["score"], r["probs"][r["given"]], r["clip"]))
    return rows


def appearance_disagreement(features: np.ndarray, given: np.ndarray, num_views: int,
                            clusters: int | None = None, seed: int = 0,
                            trusted: np.ndarray | None = None) -> np.ndarray:
    """Per clip (mean pretrained features), 1 - the share of its label among the *other* clips of
    its k-means cluster; trusted clips vote with their trusted view, 3 times over. NaN for a
    clip alone in its cluster."""
    from scipy.cluster.vq import kmeans2

    x = np.asarray(features, np.float64)
    n = len(x)
    if n == 0:
        return np.zeros(0)
    k = clusters or max(2, min(n // 4, 3 * num_views))
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    _, assign = kmeans2(x, k, seed=seed, minit="++")
    votes = np.zeros((k, num_views))
    lab = np.asarray(given, np.int64).copy()
    weight = np.ones(n)
    if trusted is not None:
        has = np.asarray(trusted) >= 0
        lab[has] = np.asarray(trusted)[has]
        weight[has] = 3.0
    np.add.at(votes, (assign, lab), weight)
    out = np.full(n, np.nan)
    for j in range(n):
        v = votes[assign[j]].copy()
        v[lab[j]] -= weight[j]
        if v.sum() > 0:
            out[j] = 1.0 - v[int(given[j])] / v.sum()
    return out


def suggest_review(rows: list[dict[str, Any]], budget: int = 20,
                   disagreement: dict[str, float] | None = None,
                   patient_decay: float = 0.6, class_decay: float = 0.85
                   ) -> list[dict[str, Any]]:
    """The clips to review first: value = 0.6 score + 0.2 uncertainty + 0.2 appearance
    disagreement (weights renormalised where a signal is missing); picked greedily, each pick
    discounting the other clips of its patient by ``patient_decay`` and of its (given,
    suggested) pair by ``class_decay``, so that a short review covers patients and classes.
    Trusted clips are already decided and never suggested."""
    disagreement = disagreement or {}
    cand = [r for r in rows if not r["trusted"]]
    base = {}
    for r in cand:
        parts = [(0.6, r["score"]), (0.2, r["uncertainty"])]
        d = disagreement.get(r["clip"])
        if d is not None and np.isfinite(d):
            parts.append((0.2, float(d)))
        base[r["clip"]] = sum(w * v for w, v in parts) / sum(w for w, _ in parts)
    picked: list[dict[str, Any]] = []
    per_patient: Counter[str] = Counter()
    per_pair: Counter[tuple[int, int]] = Counter()
    left = list(cand)
    while left and len(picked) < budget:
        def value(r: dict[str, Any]) -> float:
            return base[r["clip"]] * patient_decay ** per_patient[r["patient"]] \
                * class_decay ** per_pair[(r["given"], r["suggested"])]
        best = max(left, key=lambda r: (value(r), r["clip"]))
        picked.append(best | {"review_value": round(value(best), 4),
                              "review_order": len(picked) + 1})
        per_patient[best["patient"]] += 1
        per_pair[(best["given"], best["suggested"])] += 1
        left.remove(best)
    return picked


def topk_metrics(rows: list[dict[str, Any]], wrong: set[str], k: int | None = None,
                 key: str = "clip") -> dict[str, float]:
    """Recall and precision of the clips in ``wrong`` among the first ``k`` rows (k = how many
    are wrong by default), trusted rows left out."""
    rows = [r for r in rows if not r.get("trusted")]
    k = len(wrong) if k is None else k
    top = [r[key] for r in rows[:k]]
    hit = sum(c in wrong for c in top)
    return {"k": k, "planted": len(wrong), "found": hit,
            "recall": hit / len(wrong) if wrong else float("nan"),
            "precision": hit / len(top) if top else float("nan")}


__all__ = ["ClipTable", "CorruptionEstimate", "appearance_disagreement", "build_clip_table",
           "clean_posterior", "confident_joint_corruption", "estimate_corruption",
           "label_posterior", "rank_clips", "suggest_review", "topk_metrics"]
