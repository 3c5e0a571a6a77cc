"""Ranking of likely label errors: views by confident learning combined with clip consistency,
boxes by cleanlab's object-detection label quality.

View rule (per image with a view label; ``p`` = its out-of-sample probabilities, adjusted for
class imbalance as cleanlab's ``adjust_pred_probs`` does (`adjust_probs`; ``adjust=False`` keeps
them raw), ``s`` = the view shares of the other labelled frames of its clip,
`medmtl.data.consistency.loo_clip_counts`):

* support ``m_v = (p_v + s_v) / 2`` when both exist, else whichever exists;
* ``score = 1 - m_given`` (0: both signals back the label, 1: neither does), the rank order;
* ``suggested = argmax_v m_v``;
* ``model_issue``: cleanlab's `find_label_issues` (prune by noise rate on ``p``);
  ``clip_issue``: the clip majority disagrees with more than the clip threshold
  (`medmtl.data.consistency.clip_flags`); ``issue = model_issue or clip_issue``.

``model_quality`` is cleanlab's self-confidence ``p_given`` (of the adjusted ``p``). Box rows: ``model_quality`` is
`cleanlab.object_detection.rank.get_label_quality_scores`, ``score = 1 - quality``, ``issue`` its
`find_label_issues`, ``suggested`` the predicted boxes with score >= ``box_conf``.
"""

from __future__ import annotations

import csv
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.data.consistency import clip_flags, clip_majority, loo_clip_counts
from medmtl.data.groups import GroupPattern
from medmtl.labelissues.oof import OOF, Pool

CSV_COLUMNS = ["field", "rank", "stem", "split", "patient", "clip", "given", "suggested",
               "clip_majority", "clip_votes", "score", "model_quality", "model_issue",
               "clip_issue", "issue", "image"]


def yolo_lines(boxes: np.ndarray, classes: np.ndarray, width: int, height: int) -> str:
    """xyxy pixel boxes as ``cls cx cy w h`` (normalised, 6 decimals) joined with ``;``."""
    out = []
    for (x1, y1, x2, y2), c in zip(np.asarray(boxes, np.float64).reshape(-1, 4).tolist(),
                                   np.asarray(classes).reshape(-1).tolist(), strict=True):
        vals = ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width,
                (y2 - y1) / height)
        out.append(" ".join([str(int(c))] + [f"{min(max(v, 0.0), 1.0):.6f}" for v in vals]))
    return ";".join(out)


def adjust_probs(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """cleanlab's class-imbalance adjustment (``adjust_pred_probs``): subtract each class's
    confident threshold (its mean self-confidence), shift by the largest, renormalise."""
    from cleanlab.count import get_confident_thresholds

    t = get_confident_thresholds(labels, probs)
    adj = probs - t + t.max()
    return adj / adj.sum(axis=1, keepdims=True)


def _cleanlab_view_issues(labels: np.ndarray, probs: np.ndarray, adjust: bool,
                          notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, probs, method="self_confidence",
                                       adjust_pred_probs=adjust)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            issues = find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1)
        for w in caught:
            notes.append(f"cleanlab: {str(w.message).splitlines()[0]}")
    except (ValueError, IndexError) as e:  # e.g. a class without any example
        notes.append(f"cleanlab's prune_by_noise_rate failed ({e}); model issues are the frames "
                     "whose predicted view differs from the label")
        issues = probs.argmax(1) != labels
    return np.asarray(quality, np.float64), np.asarray(issues, bool)


def rank_views(pool: Pool, oof: OOF, pattern: GroupPattern, clip_threshold: float = 0.5,
               adjust: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per image with a view label (see the module docstring), best candidates first."""
    names = list(pool.spec.cls_names)
    nv = len(names)
    lab_idx = [i for i, r in enumerate(pool.records) if r.view is not None]
    views = [pool.records[i].view for i in lab_idx]
    clips = [pattern.clip_of(pool.records[i].path) for i in lab_idx]
    counts = loo_clip_counts(clips, views, nv)
    majority = clip_majority(counts)
    cflag = clip_flags(views, counts, clip_threshold)
    given = np.asarray(views, np.int64)
    has_p = np.array([pool.stems[i] in oof.view_probs for i in lab_idx], bool)
    probs = np.stack([oof.view_probs.get(pool.stems[i], np.full(nv, np.nan)) for i in lab_idx]) \
        if lab_idx else np.zeros((0, nv))
    notes: list[str] = []
    raw = probs.copy()
    probs_raw_argmax = raw[has_p].argmax(1) if has_p.any() else np.zeros(0, np.int64)
    quality = np.full(len(lab_idx), np.nan)
    missue = np.zeros(len(lab_idx), bool)
    if has_p.any():
        present = np.unique(given[has_p])
        if adjust and len(present) < nv:
            notes.append(f"views {[names[k] for k in range(nv) if k not in present]} have no "
                         "example with probabilities: probabilities not adjusted")
            adjust = False
        quality[has_p], missue[has_p] = _cleanlab_view_issues(given[has_p], probs[has_p],
                                                              adjust, notes)
        if adjust:
            probs[has_p] = adjust_probs(given[has_p], probs[has_p])
    total = counts.sum(1, keepdims=True)
    share = np.where(total > 0, counts / np.maximum(total, 1), np.nan)
    has_s = total[:, 0] > 0
    support = np.where(has_p[:, None] & has_s[:, None], (probs + share) / 2,
                       np.where(has_p[:, None], probs, share))
    rows = []
    for j, i in enumerate(lab_idx):
        if not (has_p[j] or has_s[j]):
            continue
        rec, m = pool.records[i], support[j]
        rows.append({
            "field": "view", "stem": pool.stems[i], "split": pool.splits[i],
            "patient": pattern.patient_of(rec.path), "clip": clips[j],
            "given": names[given[j]], "suggested": names[int(np.argmax(m))],
            "clip_majority": names[majority[j]] if majority[j] >= 0 else "",
            "clip_votes": " ".join(f"{names[k]}:{counts[j, k]}" for k in range(nv)
                                   if counts[j, k]),
            "score": float(1.0 - m[given[j]]),
            "model_quality": None if np.isnan(quality[j]) else float(quality[j]),
            "model_issue": bool(missue[j]), "clip_issue": bool(cflag[j]),
            "issue": bool(missue[j] or cflag[j]), "image": str(rec.path),
            "probs": None if not has_p[j] else [round(float(x), 4) for x in raw[j]]})
    rows.sort(key=lambda r: (-r["score"], r["stem"]))
    for k, r in enumerate(rows, start=1):
        r["rank"] = k
    acc = float((probs_raw_argmax == given[has_p]).mean()) if has_p.any() else None
    summary = {
        "images_with_view": len(lab_idx), "ranked": len(rows),
        "with_probabilities": int(has_p.sum()), "with_clip_votes": int(has_s.sum()),
        "without_any_signal": int((~has_p & ~has_s).sum()),
        "out_of_sample_accuracy": acc, "model_issues": int(missue.sum()),
        "clip_issues": int(cflag.sum()), "both": int((missue & cflag).sum()),
        "issues": sum(r["issue"] for r in rows),
        "suggested_differs": sum(r["suggested"] != r["given"] for r in rows),
        "issues_by_given": dict(Counter(r["given"] for r in rows if r["issue"])),
        "probabilities_adjusted": bool(adjust and has_p.any()),
        "predicted_per_view": dict(zip(names, np.bincount(probs_raw_argmax, minlength=nv)
                                       .tolist(), strict=True)),
        "notes": notes}
    missing = len(lab_idx) - int(has_p.sum())
    if missing:
        notes.append(f"{missing} of {len(lab_idx)} view-labelled images have no out-of-sample "
                     "probabilities: ranked by their clip alone")
    return rows, summary


def rank_boxes(pool: Pool, oof: OOF, pattern: GroupPattern,
               box_conf: float = 0.25) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per image with out-of-sample detections (cleanlab object-detection quality)."""
    if oof.detections is None:
        return [], {"ranked": 0, "skipped": "no detector predictions (train with --task joint "
                                            "or give runs of a detector)"}
    from cleanlab.object_detection.filter import find_label_issues
    from cleanlab.object_detection.rank import get_label_quality_scores

    nc = len(pool.spec.names)
    idx = [i for i, s in enumerate(pool.stems) if s in oof.detections]
    labels, preds = [], []
    for i in idx:
        rec, d = pool.records[i], oof.detections[pool.stems[i]]
        labels.append({"bboxes": np.asarray(rec.boxes, np.float64).reshape(-1, 4),
                       "labels": np.asarray(rec.classes, np.int64).reshape(-1)})
        per_class = np.empty(nc, dtype=object)
        for c in range(nc):
            per_class[c] = d[d[:, 5] == c][:, :5].astype(np.float64).reshape(-1, 5)
        preds.append(per_class)
    if not idx:
        return [], {"ranked": 0, "skipped": "no image of the pool has detector predictions"}
    quality = np.asarray(get_label_quality_scores(labels, preds, verbose=False), np.float64)
    issues = np.asarray(find_label_issues(labels, preds), bool)
    rows = []
    for j, i in enumerate(idx):
        rec, d = pool.records[i], oof.detections[pool.stems[i]]
        keep = d[d[:, 4] >= box_conf]
        rows.append({
            "field": "boxes", "stem": pool.stems[i], "split": pool.splits[i],
            "patient": pattern.patient_of(rec.path), "clip": pattern.clip_of(rec.path),
            "given": yolo_lines(rec.boxes, rec.classes, rec.width, rec.height),
            "suggested": yolo_lines(keep[:, :4], keep[:, 5].astype(np.int64), rec.width,
                                    rec.height),
            "clip_majority": "", "clip_votes": "", "score": float(1.0 - quality[j]),
            "model_quality": float(quality[j]), "model_issue": bool(issues[j]),
            "clip_issue": False, "issue": bool(issues[j]), "image": str(rec.path),
            "pred_boxes": keep[:, :6].round(2).tolist()})
    rows.sort(key=lambda r: (-r["score"], r["stem"]))
    for k, r in enumerate(rows, start=1):
        r["rank"] = k
    top = np.array([oof.detections[pool.stems[i]][:, 4].max(initial=0.0) for i in idx])
    summary = {"ranked": len(rows), "issues": int(issues.sum()), "box_conf": box_conf,
               "median_quality": float(np.median(quality)),
               "images_with_a_prediction_over_0.5": int((top > 0.5).sum()),
               "images_with_a_prediction_over_0.95": int((top > 0.95).sum())}
    if not (top > 0.95).any():
        summary["note"] = (f"no predicted box scores above 0.95, so cleanlab judges no swapped "
                           f"class or overlooked box, and only the {int((top > 0.5).sum())} "
                           f"images with a box above 0.5 for its location: the box ranking "
                           "says little; train longer (--epochs) or give better runs (--runs)")
    return rows, summary


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """The ranking as CSV (`CSV_COLUMNS`; booleans as 0/1, scores to 4 decimals)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (int(v) if isinstance(v, bool) else
                            "" if v is None else round(v, 4) if isinstance(v, float) else v)
                        for k, v in r.items()})
    return path


__all__ = ["CSV_COLUMNS", "adjust_probs", "rank_boxes", "rank_views", "write_csv", "yolo_lines"]
