"""A known-truth benchmark for systematic view-label noise (issue #27).

Synthetic clips: each patient has a few clips, each clip a true view and a few frames; a frame's
appearance is a feature vector = its view's centre + its clip's offset + frame noise (what a
pretrained backbone's embedding of a frame looks like to a linear classifier). Noise is
planted the way the echo data shows it: **whole clips of one view labelled as another, across
patients** (``rate`` of the ``src`` view's clips carry the ``dst`` label), plus a few single
frames flipped at random inside clips (the mixed clips the data also has).

Out-of-sample probabilities come from a logistic regression trained on the noisy labels in
patient-grouped folds, as ``medmtl audit --label-issues --probs`` would be given them. Three
finders rank the clips, trusted clips left out of every list:

* ``today``: `medmtl.labelissues.rank.rank_views` (confident learning + clip consistency), its
  frame scores averaged per clip;
* ``confident-joint``: the clip ranking of `medmtl.labelissues.noise` with the corruption matrix
  from cleanlab's confident joint (no trusted clip);
* ``trusted``: the same with the matrix estimated from ``trusted_fraction`` of the clips whose
  true view is known (gold loss correction).

A planted error is a clip whose given (majority) label is not its true view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from medmtl.labelissues.noise import (
    build_clip_table,
    confident_joint_corruption,
    estimate_corruption,
    rank_clips,
    topk_metrics,
)

NAMES = ("A4C", "PLAX", "PSAX")


@dataclass
class SimData:
    names: list[str]
    stems: list[str]
    clips: list[str]
    patients: list[str]
    true: np.ndarray  # per frame
    given: np.ndarray  # per frame
    features: np.ndarray  # per frame
    clip_true: dict[str, int] = field(default_factory=dict)
    planted: set[str] = field(default_factory=set)  # clips whose majority label is wrong
    settings: dict[str, Any] = field(default_factory=dict)


def simulate(seed: int = 0, patients: int = 80, clips_per_patient: tuple[int, int] = (1, 4),
             frames: tuple[int, int] = (6, 14), dim: int = 16, sep: float = 1.6,
             clip_sd: float = 1.0, frame_sd: float = 0.7,
             priors: tuple[float, ...] = (0.25, 0.45, 0.30), src: int = 0, dst: int = 1,
             rate: float = 0.5, frame_flip: float = 0.03) -> SimData:
    """Draw the clips and plant the noise (see the module docstring)."""
    rng = np.random.default_rng(seed)
    k = len(priors)
    centres = rng.normal(0, sep, (k, dim))
    stems, clips, pats, true, feats = [], [], [], [], []
    clip_true: dict[str, int] = {}
    for p in range(patients):
        pid = f"P{p:03d}"
        for c in range(int(rng.integers(clips_per_patient[0], clips_per_patient[1] + 1))):
            cid = f"{pid}-c{c}"
            y = int(rng.choice(k, p=np.asarray(priors) / sum(priors)))
            clip_true[cid] = y
            off = rng.normal(0, clip_sd, dim)
            for f in range(int(rng.integers(frames[0], frames[1] + 1))):
                stems.append(f"{cid}.mp4-{f}")
                clips.append(cid)
                pats.append(pid)
                true.append(y)
                feats.append(centres[y] + off + rng.normal(0, frame_sd, dim))
    true_a = np.asarray(true, np.int64)
    given = true_a.copy()
    src_clips = sorted(c for c, y in clip_true.items() if y == src)
    flipped = set(rng.choice(src_clips, size=int(round(rate * len(src_clips))), replace=False)
                  .tolist()) if src_clips else set()
    clip_arr = np.asarray(clips)
    for c in flipped:
        given[clip_arr == c] = dst
    flip = rng.random(len(given)) < frame_flip
    given[flip] = (given[flip] + rng.integers(1, k, flip.sum())) % k
    data = SimData(list(NAMES[:k]) if k <= len(NAMES) else [f"v{i}" for i in range(k)],
                   stems, clips, pats, true_a, given, np.asarray(feats), clip_true)
    # a planted error: the clip's majority label (as the finders see it) is not its view
    table = build_clip_table(clips, pats, given.tolist(), np.eye(k)[given], num_views=k)
    data.planted = {c for c, g in zip(table.clips, table.given.tolist(), strict=True)
                    if g != clip_true[c]}
    data.settings = {"seed": seed, "patients": patients, "clips": len(clip_true),
                     "frames": len(stems), "src": src, "dst": dst, "rate": rate,
                     "frame_flip": frame_flip, "sep": sep, "clip_sd": clip_sd,
                     "frame_sd": frame_sd, "dim": dim, "priors": list(priors)}
    return data


def oof_probs(features: np.ndarray, labels: np.ndarray, groups: list[str], folds: int = 5,
              c: float = 1.0) -> np.ndarray:
    """Out-of-fold probabilities of a logistic regression trained on ``labels``, patient-grouped
    folds (deterministic: lbfgs, no shuffling)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    k = int(labels.max()) + 1
    out = np.zeros((len(labels), k))
    for tr, te in GroupKFold(n_splits=folds).split(features, labels, groups):
        m = LogisticRegression(C=c, max_iter=2000)
        m.fit(features[tr], labels[tr])
        pr = np.zeros((len(te), k))
        pr[:, m.classes_] = m.predict_proba(features[te])
        out[te] = pr
    return out


def _today_clip_rows(data: SimData, probs: np.ndarray) -> tuple[list[dict[str, Any]],
                                                                 list[dict[str, Any]]]:
    """Today's finder on the simulated pool: its frame rows and their per-clip mean score."""
    from medmtl.data.groups import GroupPattern
    from medmtl.data.labels import ImageRecord
    from medmtl.labelissues.oof import OOF, Pool
    from medmtl.labelissues.rank import rank_views

    recs = [ImageRecord(Path(f"{s}.jpg"), i, 64, 64, np.zeros((0, 4), np.float32),
                        np.zeros(0, np.int64), int(g), True)
            for i, (s, g) in enumerate(zip(data.stems, data.given.tolist(), strict=True))]
    pool = Pool(SimpleNamespace(cls_names=data.names), recs, ["train"] * len(recs),
                list(data.stems))  # type: ignore[arg-type]
    oof = OOF(view_probs=dict(zip(data.stems, probs, strict=True)))
    frame_rows, _ = rank_views(pool, oof, GroupPattern())
    per: dict[str, list[float]] = {}
    for r in frame_rows:
        per.setdefault(r["clip"], []).append(r["score"])
    clip_rows = sorted(({"clip": c, "score": float(np.mean(v)), "trusted": False}
                        for c, v in per.items()), key=lambda r: (-r["score"], r["clip"]))
    return frame_rows, clip_rows


def run_benchmark(seed: int = 0, trusted_fraction: float = 0.05, folds: int = 5,
                  prior_clips: float = 1.0, **sim: Any) -> dict[str, Any]:
    """Simulate, predict out of fold, rank with the three finders; recall and precision of the
    planted clips in the top k (k = planted, trusted clips left out)."""
    data = simulate(seed=seed, **sim)
    k = len(data.names)
    probs = oof_probs(data.features, data.given, data.patients, folds)
    table = build_clip_table(data.clips, data.patients, data.given.tolist(), probs,
                             stems=data.stems, num_views=k)
    rng = np.random.default_rng(seed + 1)
    n_trusted = max(1, int(np.ceil(trusted_fraction * len(table)))) if trusted_fraction else 0
    trusted_clips = sorted(rng.choice(table.clips, n_trusted, replace=False).tolist()) \
        if n_trusted else []
    trusted = {c: data.clip_true[c] for c in trusted_clips}
    wrong = {c for c in data.planted if c not in trusted}
    at_row = table.row
    idx = [at_row[c] for c in trusted_clips]
    est = estimate_corruption(table.probs[idx], table.given[idx],
                              np.asarray([trusted[c] for c in trusted_clips], np.int64), k,
                              seed=seed, prior_clips=prior_clips)
    cj = confident_joint_corruption(data.given, probs, k)
    frame_rows, today_clips = _today_clip_rows(data, probs)
    today_clips = [r | {"trusted": r["clip"] in trusted} for r in today_clips]
    frame = {st: i for i, st in enumerate(data.stems)}
    planted_frames = {r["stem"] for r in frame_rows if r["clip"] in wrong
                      and data.given[frame[r["stem"]]] != data.true[frame[r["stem"]]]}
    frame_rows = [r | {"trusted": r["clip"] in trusted} for r in frame_rows]
    true_c = np.zeros((k, k))
    for c, y in data.clip_true.items():
        true_c[y, int(table.given[at_row[c]])] += 1
    true_c = true_c / np.maximum(true_c.sum(1, keepdims=True), 1)
    return {
        "settings": data.settings | {"trusted_fraction": trusted_fraction, "folds": folds},
        "clips": len(table), "planted": len(data.planted), "trusted_clips": len(trusted),
        "planted_outside_trusted": len(wrong),
        "oof_accuracy_vs_labels": float((probs.argmax(1) == data.given).mean()),
        "oof_accuracy_vs_truth": float((probs.argmax(1) == data.true).mean()),
        "today": topk_metrics(today_clips, wrong),
        "today_frames": topk_metrics(frame_rows, planted_frames, key="stem"),
        "confident_joint": topk_metrics(rank_clips(table, cj), wrong),
        "trusted": topk_metrics(rank_clips(table, est, trusted), wrong),
        "true_matrix": true_c.round(4).tolist(),
        "estimate": est.record(data.names), "confident_joint_matrix": cj.matrix.round(4).tolist(),
    }


__all__ = ["NAMES", "SimData", "oof_probs", "run_benchmark", "simulate"]
