"""Detection P/R/F1 at the best-F1 confidence, the curves behind it, and detection confusion.

mAP comes from :func:`medmtl.evaluation.coco.evaluate_coco` (a maintained COCO evaluator); this
module adds what COCO does not report: detections matched to ground truth at one IoU
(:func:`match_detections`), precision, recall and F1 read at the single confidence that maximises
the mean F1 over the classes with ground truth (as YOLO tools report them), the P/R and
F1-confidence curves behind that choice, and a detection confusion matrix. The metrics.json
block that merges these with COCO's numbers is built in :mod:`medmtl.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from .coco import as_numpy

__all__ = ["detection_confusion", "detection_prf", "match_detections", "negative_frames"]

NEGATIVE_CONFS = (0.25, 0.5)


def negative_frames(records: Sequence[Any], detections: Sequence[Any],
                    confs: Sequence[float] = NEGATIVE_CONFS) -> dict[str, Any] | None:
    """False positives on the frames labelled "none" (looked at, no jet): their count, the
    detections per such frame at each confidence in ``confs``, the share of them with any
    detection, and the mean of each frame's top score. None when no record says "none"."""
    idx = [i for i, r in enumerate(records) if getattr(r, "no_jet", False)]
    if not idx:
        return None
    scores = [np.asarray(detections[i], dtype=np.float64).reshape(-1, 6)[:, 4] for i in idx]
    top = [float(s.max()) if len(s) else 0.0 for s in scores]
    n = len(idx)
    return {"images": n,
            "fp_per_image": {f"{c:g}": sum(int((s >= c).sum()) for s in scores) / n
                             for c in confs},
            "images_with_fp": {f"{c:g}": sum(bool((s >= c).any()) for s in scores) / n
                               for c in confs},
            "mean_top_score": float(np.mean(top))}


def _dets_for(detections_per_image: Sequence[Any] | Mapping[int, Any], i: int, image_id: int):
    if isinstance(detections_per_image, Mapping):
        d = detections_per_image.get(image_id)
    else:
        d = detections_per_image[i]
    return as_numpy(d).reshape(-1, 6)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def _check_len(gt_records: Sequence[Any], detections_per_image: Any) -> None:
    if not isinstance(detections_per_image, Mapping) and len(detections_per_image) != len(
        gt_records
    ):
        raise ValueError(
            f"{len(gt_records)} records but {len(detections_per_image)} detection arrays"
        )


def match_detections(
    gt_records: Sequence[Any],
    detections_per_image: Sequence[Any] | Mapping[int, Any],
    num_classes: int,
    iou: float = 0.5,
) -> dict[str, np.ndarray]:
    """Mark every detection true or false positive, COCO-style, at one IoU threshold.

    Per image and class, detections are taken by decreasing score and each one is matched to
    the still-unmatched ground truth of its class with the highest IoU, if that IoU >= ``iou``.
    ``detections_per_image`` is a sequence aligned with ``gt_records`` or a mapping
    ``image_id -> (K, 6)``; rows are ``[x1, y1, x2, y2, score, cls]`` in the records' pixels.
    Unlike COCO, detections are not capped at 100 per image.

    Returns ``scores`` (N,), ``classes`` (N,), ``tp`` (N,) bool and ``n_gt`` (num_classes,).
    """
    _check_len(gt_records, detections_per_image)
    scores, classes, tps = [], [], []
    n_gt = np.zeros(num_classes, dtype=np.int64)
    for i, rec in enumerate(gt_records):
        g = as_numpy(rec.boxes).reshape(-1, 4)
        gc = as_numpy(rec.classes, np.int64).reshape(-1)
        n_gt += np.bincount(gc, minlength=num_classes)[:num_classes]
        d = _dets_for(detections_per_image, i, int(rec.image_id))
        if len(d) == 0:
            continue
        dc = d[:, 5].astype(np.int64)
        tp = np.zeros(len(d), dtype=bool)
        if len(g):
            ious = _iou(d[:, :4], g)
            ious[dc[:, None] != gc[None, :]] = -1.0  # a detection only matches its own class
            order = np.argsort(-d[:, 4], kind="stable")
            candidates = order[ious[order].max(axis=1) >= iou]  # others cannot match anything
            free = np.ones(len(g), dtype=bool)
            for k in candidates:
                row = np.where(free, ious[k], -1.0)
                j = int(row.argmax())
                if row[j] >= iou:
                    tp[k] = True
                    free[j] = False
        scores.append(d[:, 4])
        classes.append(dc)
        tps.append(tp)
    if scores:
        return {
            "scores": np.concatenate(scores),
            "classes": np.concatenate(classes),
            "tp": np.concatenate(tps),
            "n_gt": n_gt,
        }
    return {
        "scores": np.zeros(0),
        "classes": np.zeros(0, dtype=np.int64),
        "tp": np.zeros(0, dtype=bool),
        "n_gt": n_gt,
    }


def _prf_at(
    thresholds: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    tp: np.ndarray,
    n_gt: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 (each (C, T)) counting the detections with score >= threshold."""
    nc = len(n_gt)
    p = np.zeros((nc, len(thresholds)))
    r = np.zeros((nc, len(thresholds)))
    for c in range(nc):
        m = classes == c
        s = scores[m]
        order = np.argsort(-s, kind="stable")
        s_desc = s[order]
        cum_tp = np.concatenate([[0], np.cumsum(tp[m][order])])
        n_above = np.searchsorted(-s_desc, -thresholds, side="right")
        hits = cum_tp[n_above]
        p[c] = np.divide(hits, n_above, out=np.zeros(len(thresholds)), where=n_above > 0)
        if n_gt[c] > 0:
            r[c] = hits / n_gt[c]
    denom = p + r
    f1 = np.divide(2 * p * r, denom, out=np.zeros_like(p), where=denom > 0)
    return p, r, f1


def _pr_curve(
    scores: np.ndarray, classes: np.ndarray, tp: np.ndarray, n_gt: np.ndarray
) -> dict[str, np.ndarray]:
    """COCO-style interpolated precision at 101 recall points, per class (NaN without GT)."""
    grid = np.linspace(0.0, 1.0, 101)
    nc = len(n_gt)
    prec = np.full((nc, len(grid)), np.nan)
    for c in range(nc):
        if n_gt[c] == 0:
            continue
        m = classes == c
        order = np.argsort(-scores[m], kind="mergesort")
        t = tp[m][order]
        ctp = np.cumsum(t)
        cfp = np.cumsum(~t)
        rc = ctp / n_gt[c]
        pr = ctp / (ctp + cfp + np.spacing(1))  # the same expression as COCO's accumulate
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope
        idx = np.searchsorted(rc, grid, side="left")
        # recall points beyond the reached recall keep precision 0, as in COCO
        prec[c] = np.where(idx < len(pr), pr[np.minimum(idx, len(pr) - 1)], 0.0) if len(pr) else 0.0
    ap = np.array([prec[c].mean() if n_gt[c] > 0 else np.nan for c in range(nc)])
    return {"recall": grid, "precision": prec, "ap": ap}


def detection_prf(
    gt_records: Sequence[Any],
    detections_per_image: Sequence[Any] | Mapping[int, Any],
    num_classes: int,
    iou: float = 0.5,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Precision / recall / F1 at the confidence that maximises the mean F1 over classes.

    Candidate thresholds are every distinct detection score (a detection counts when its
    score >= threshold); among equally good ones the lowest (most inclusive) wins.  The mean is
    over classes with ground truth; ``precision``/``recall``/``f1`` are those classes' means at
    that threshold.  A class with no detection above the threshold has precision 0.

    Returns ``precision``, ``recall``, ``f1`` (0.0 without detections, None without any ground
    truth), ``conf_threshold`` (None without detections or ground truth), ``iou``,
    ``per_class`` ``{name: {precision, recall, f1, n_gt, n_pred}}`` (P/R/F1 None for classes
    without ground truth; ``n_pred`` counted at the threshold), ``recall_grid`` (101,) with
    ``pr_curves`` ``{name: precision (101,)}`` (for pr_curves.json) and ``curves``: ``pr``
    ``{recall (101,), precision (C, 101), ap (C,)}`` (COCO-style interpolation of this
    matching) and ``f1_conf`` ``{conf (1001,), precision, recall, f1 (C, 1001), mean_f1, names,
    has_gt, best_conf}`` (numpy arrays, for the plots; not for JSON).
    """
    names = [str(n) for n in names] if names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} names for {num_classes} classes")
    mt = match_detections(gt_records, detections_per_image, num_classes, iou)
    scores, classes, tp, n_gt = mt["scores"], mt["classes"], mt["tp"], mt["n_gt"]
    has_gt = n_gt > 0

    best_t: float | None = None
    p_best = np.zeros(num_classes)
    r_best = np.zeros(num_classes)
    f_best = np.zeros(num_classes)
    if len(scores) and has_gt.any():
        cand = np.unique(scores)  # ascending: argmax keeps the lowest of tied thresholds
        p, r, f = _prf_at(cand, scores, classes, tp, n_gt)
        k = int(np.argmax(f[has_gt].mean(axis=0)))
        best_t = float(cand[k])
        p_best, r_best, f_best = p[:, k], r[:, k], f[:, k]

    grid = np.linspace(0.0, 1.0, 1001)
    gp, gr, gf = _prf_at(grid, scores, classes, tp, n_gt)
    mean_f1 = gf[has_gt].mean(axis=0) if has_gt.any() else np.zeros(len(grid))

    def mean(v: np.ndarray) -> float | None:
        return float(v[has_gt].mean()) if has_gt.any() else None

    counted = scores >= best_t if best_t is not None else np.ones(len(scores), dtype=bool)
    n_pred_best = np.bincount(classes[counted], minlength=num_classes)[:num_classes]
    per_class = {
        name: {
            "precision": float(p_best[c]) if has_gt[c] else None,
            "recall": float(r_best[c]) if has_gt[c] else None,
            "f1": float(f_best[c]) if has_gt[c] else None,
            "n_gt": int(n_gt[c]),
            "n_pred": int(n_pred_best[c]),
        }
        for c, name in enumerate(names)
    }
    pr = _pr_curve(scores, classes, tp, n_gt)
    return {
        "precision": mean(p_best),
        "recall": mean(r_best),
        "f1": mean(f_best),
        "conf_threshold": best_t,
        "iou": float(iou),
        "per_class": per_class,
        "recall_grid": pr["recall"],
        "pr_curves": {name: pr["precision"][c] for c, name in enumerate(names)},
        "curves": {
            "pr": pr,
            "f1_conf": {
                "conf": grid,
                "precision": gp,
                "recall": gr,
                "f1": gf,
                "mean_f1": mean_f1,
                "names": names,
                "has_gt": has_gt.tolist(),
                "best_conf": best_t,
            },
        },
    }


def detection_confusion(
    gt_records: Sequence[Any],
    detections_per_image: Sequence[Any] | Mapping[int, Any],
    num_classes: int,
    conf: float = 0.25,
    iou: float = 0.5,
) -> np.ndarray:
    """(nc + 1, nc + 1) counts, rows = true class, columns = predicted; index nc = background.

    Detections with score >= ``conf`` are matched to ground truth class-agnostically, one to
    one, in decreasing IoU order (pairs with IoU >= ``iou``).  A matched pair counts at
    [true, predicted]; an unmatched ground truth at [true, background] (missed); an unmatched
    detection at [background, predicted] (false alarm).
    """
    _check_len(gt_records, detections_per_image)
    nc = num_classes
    mat = np.zeros((nc + 1, nc + 1), dtype=np.int64)
    for i, rec in enumerate(gt_records):
        g = as_numpy(rec.boxes).reshape(-1, 4)
        gc = as_numpy(rec.classes, np.int64).reshape(-1)
        d = _dets_for(detections_per_image, i, int(rec.image_id))
        d = d[d[:, 4] >= conf]
        dc = d[:, 5].astype(np.int64)
        g_used = np.zeros(len(g), dtype=bool)
        d_used = np.zeros(len(d), dtype=bool)
        if len(g) and len(d):
            ious = _iou(g, d[:, :4])
            gi, di = np.nonzero(ious >= iou)
            order = np.argsort(-ious[gi, di], kind="stable")
            for a, b in zip(gi[order].tolist(), di[order].tolist(), strict=True):
                if not g_used[a] and not d_used[b]:
                    g_used[a] = d_used[b] = True
                    mat[gc[a], dc[b]] += 1
        np.add.at(mat, (gc[~g_used], nc), 1)
        np.add.at(mat, (nc, dc[~d_used]), 1)
    return mat
