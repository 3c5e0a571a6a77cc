"""View-classification metrics and the metrics.json object.

:func:`classification_metrics` scores the view classifier; :func:`detection_block` merges COCO's
mAP (:func:`medmtl.evaluation.coco.evaluate_coco`) with the detection P/R/F1 of
:mod:`medmtl.evaluation.detection_metrics`, and :func:`build_metrics_json` assembles both tasks'
blocks into metrics.json. The detection functions (:func:`detection_prf`,
:func:`detection_confusion`, :func:`match_detections`) are re-exported here, so
``from medmtl.evaluation.metrics import detection_prf`` keeps working.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .coco import as_numpy, to_jsonable
from .detection_metrics import (
    detection_confusion,
    detection_prf,
    match_detections,
    negative_frames,
)

__all__ = [
    "build_metrics_json",
    "classification_metrics",
    "detection_block",
    "detection_confusion",
    "detection_prf",
    "negative_frames",
    "match_detections",
]


def classification_metrics(
    y_true: Any, y_pred: Any, num_classes: int, names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro F1, per-class P/R/F1/support and confusion (rows true, cols predicted).

    Entries with ``y_true == -1`` (no view label) are dropped.  Per class, precision and recall
    are 0 when their denominator is 0 and F1 = 0 when P + R = 0; ``macro_f1`` is the mean F1
    over the classes present in ``y_true`` or ``y_pred`` (scikit-learn's default labels).
    ``accuracy`` and ``macro_f1`` are None when nothing is labelled.
    """
    t = as_numpy(y_true, np.int64).reshape(-1)
    p = as_numpy(y_pred, np.int64).reshape(-1)
    if len(t) != len(p):
        raise ValueError(f"{len(t)} labels but {len(p)} predictions")
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} names for {num_classes} classes")
    keep = t != -1
    t, p = t[keep], p[keep]
    for arr, what in ((t, "y_true"), (p, "y_pred")):
        if len(arr) and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{what} outside 0..{num_classes - 1}")
    cm = np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    prec = np.divide(tp, predicted, out=np.zeros(num_classes), where=predicted > 0)
    rec = np.divide(tp, support, out=np.zeros(num_classes), where=support > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(num_classes), where=(prec + rec) > 0)
    present = (support + predicted) > 0
    n = int(len(t))
    return {
        "accuracy": float(tp.sum() / n) if n else None,
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        "n": n,
        "per_class": {
            str(name): {
                "precision": float(prec[c]),
                "recall": float(rec[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c, name in enumerate(names)
        },
        "confusion": cm.tolist(),
        "labels": [str(x) for x in names],
    }


def detection_block(coco: Mapping[str, Any], prf: Mapping[str, Any]) -> dict[str, Any]:
    """Merge :func:`evaluate_coco` and :func:`detection_prf` into the metrics.json block."""
    # Both are in class-index order; pairing by position also works when detection_prf was
    # called without names (keys "0", "1", ...).
    prf_rows = list(prf["per_class"].values())
    if len(prf_rows) != len(coco["per_class"]):
        raise ValueError(f"{len(coco['per_class'])} COCO classes but {len(prf_rows)} P/R/F1 ones")
    per_class: dict[str, dict] = {}
    for (name, ap), pc in zip(coco["per_class"].items(), prf_rows, strict=True):
        per_class[name] = {
            "ap50": ap.get("ap50"),
            "ap50_95": ap.get("ap50_95"),
            "precision": pc.get("precision"),
            "recall": pc.get("recall"),
            "f1": pc.get("f1"),
            "n_gt": ap.get("n_gt"),
        }
    return {
        "map50": coco["map50"],
        "map50_95": coco["map50_95"],
        "precision": prf["precision"],
        "recall": prf["recall"],
        "f1": prf["f1"],
        "conf_threshold": prf["conf_threshold"],
        "per_class": per_class,
        "coco_stats": dict(coco.get("stats", {})),
    }


_DET_KEYS = ("map50", "map50_95", "precision", "recall", "f1", "per_class")
_CLS_KEYS = ("accuracy", "macro_f1", "confusion")
_NOT_JSON = ("curves", "pr_curve")


def build_metrics_json(
    split: str,
    images: int,
    det: Mapping[str, Any] | None,
    cls: Mapping[str, Any] | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The metrics.json object of shared/ARCHITECTURE.md (strict-JSON-serialisable).

    ``det`` is a :func:`detection_block` (or ``{"coco": evaluate_coco(...), "prf":
    detection_prf(...)}``, merged here), ``cls`` a :func:`classification_metrics` result; pass
    None for a task the model does not have (its block is null).  ``extra`` adds top-level keys
    (it may not replace the required ones).  Plot curves are dropped; NaN becomes null.
    """
    out: dict[str, Any] = {
        "split": str(split),
        "images": int(images),
        "detection": None,
        "classification": None,
    }
    if det is not None and "coco" in det:  # {"coco": evaluate_coco(...), "prf": detection_prf(...)}
        det = detection_block(det["coco"], det["prf"])
    for block, keys, key in ((det, _DET_KEYS, "detection"), (cls, _CLS_KEYS, "classification")):
        if block is None:
            continue
        missing = [k for k in keys if k not in block]
        if missing:
            raise ValueError(f"{key} block lacks {missing} (build it with detection_block?)")
        out[key] = to_jsonable({k: v for k, v in block.items() if k not in _NOT_JSON})
    for k, v in (extra or {}).items():
        if k in out:
            raise ValueError(f"extra key {k!r} would replace a required metrics.json key")
        out[str(k)] = to_jsonable(v)
    json.dumps(out, allow_nan=False)  # fail here, not when the file is written
    return out
