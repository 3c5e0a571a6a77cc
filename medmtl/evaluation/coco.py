"""COCO export (ground truth + results) and COCO scoring with faster-coco-eval.

Contract (see ``shared/ARCHITECTURE.md``): boxes are in original-image pixels, ``bbox`` is
``[x, y, w, h]``, ``category_id`` is the class index + 1, image ids are the records'
``image_id``.  mAP@0.5 and mAP@0.5:0.95 are COCO's 101-point interpolated AP, computed by
``faster_coco_eval.COCOeval_faster`` (checked against pycocotools in the tests).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "as_numpy",
    "coco_evaluator",
    "coco_ground_truth",
    "coco_results",
    "evaluate_coco",
    "to_jsonable",
    "write_json",
]


def as_numpy(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """Tensor / array / list -> numpy array of ``dtype`` (on the CPU, detached)."""
    if x is None:
        return np.zeros((0,), dtype=dtype)
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _boxes_of(record: Any) -> tuple[np.ndarray, np.ndarray]:
    boxes = as_numpy(record.boxes).reshape(-1, 4)
    classes = as_numpy(record.classes, np.int64).reshape(-1)
    if len(boxes) != len(classes):
        raise ValueError(f"image {record.image_id}: {len(boxes)} boxes but {len(classes)} classes")
    return boxes, classes


def coco_ground_truth(records: Iterable[Any], names: Sequence[str]) -> dict:
    """COCO ground-truth dict for ``records`` (every record becomes an image, boxes or not).

    Records need ``image_id``, ``path``, ``width``, ``height``, ``boxes`` ((M, 4) xyxy in
    original pixels) and ``classes`` ((M,) class indices).
    """
    images: list[dict] = []
    annotations: list[dict] = []
    nc = len(names)
    seen: set[int] = set()
    for rec in records:
        image_id = int(rec.image_id)
        if image_id in seen:
            raise ValueError(f"duplicate image_id {image_id}")
        seen.add(image_id)
        images.append(
            {
                "id": image_id,
                "file_name": Path(rec.path).name,
                "width": int(rec.width),
                "height": int(rec.height),
            }
        )
        boxes, classes = _boxes_of(rec)
        for (x1, y1, x2, y2), c in zip(boxes.tolist(), classes.tolist(), strict=True):
            if not 0 <= c < nc:
                raise ValueError(f"image {image_id}: class {c} outside 0..{nc - 1}")
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,  # 1-based: COCO treats id 0 as "unmatched"
                    "image_id": image_id,
                    "category_id": int(c) + 1,
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": str(n)} for i, n in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_results(image_ids: Sequence[int], detections: Sequence[Any]) -> list[dict]:
    """COCO results list from per-image (K, 6) ``[x1, y1, x2, y2, score, cls]`` arrays.

    ``detections[i]`` belongs to ``image_ids[i]`` and is already in original pixels.
    ``bbox`` is rounded to 3 decimals, ``score`` to 5.
    """
    if len(image_ids) != len(detections):
        raise ValueError(f"{len(image_ids)} image ids but {len(detections)} detection arrays")
    out: list[dict] = []
    for image_id, det in zip(image_ids, detections, strict=True):
        d = as_numpy(det).reshape(-1, 6)
        for x1, y1, x2, y2, score, cls in d.tolist():
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(cls) + 1,
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "score": round(score, 5),
                }
            )
    return out


def _copy_ann(ann: dict) -> dict:
    return {**ann, "bbox": list(ann["bbox"])}


def _nullable(v: float) -> float | None:
    """COCO's -1 ("no ground truth") -> None; everything else -> python float."""
    v = float(v)
    return None if v < 0 or math.isnan(v) else v


def _quiet(*_: Any, **__: Any) -> None:
    return None


def coco_evaluator(gt: dict, results: list[dict], nc: int, **kwargs: Any) -> Any:
    """A faster-coco-eval ``COCOeval_faster`` (bbox) of ``results`` against ``gt`` over every
    class 1..nc, not yet run; ``kwargs`` go to its constructor. Neither input is modified."""
    from faster_coco_eval import COCO, COCOeval_faster

    # Both COCO classes write keys into the dicts they are given (ignore, segmentation, id,
    # area): hand them copies so predictions.json / ground_truth.json stay as exported.
    # (Per-dict copies, not copy.deepcopy, which costs seconds for 100k+ detections.)
    coco_gt = COCO(
        {
            **gt,
            "images": [dict(im) for im in gt["images"]],
            "annotations": [_copy_ann(a) for a in gt.get("annotations", [])],
            "categories": [dict(c) for c in gt["categories"]],
        },
        print_function=_quiet,
    )
    coco_dt = coco_gt.loadRes([_copy_ann(a) for a in results])
    ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=_quiet, **kwargs)
    ev.params.catIds = list(range(1, nc + 1))  # every class, with or without ground truth
    return ev


def evaluate_coco(gt: dict, results: list[dict], names: Sequence[str]) -> dict:
    """Score ``results`` against ``gt`` with faster-coco-eval (bbox, 101-point COCO AP).

    Returns ``map50``, ``map50_95`` (python floats; ``None`` when no class has ground truth),
    ``per_class`` ``{name: {"ap50", "ap50_95", "n_gt"}}`` (AP ``None`` for classes without
    ground truth: excluded from the mean, as COCO does with -1), ``stats`` (every COCO summary
    number by name, -1 -> None) and ``pr_curve`` ``{"recall": (101,), "precision": (nc, 101)}``
    at IoU 0.5 (NaN rows for classes without ground truth) for plotting; ``pr_curve`` holds
    numpy arrays and is not meant for JSON.  Neither input is modified.
    """
    nc = len(names)
    cat_ids = [c["id"] for c in gt.get("categories", [])]
    if sorted(cat_ids) != list(range(1, nc + 1)):
        raise ValueError(f"gt categories {cat_ids} do not match names {list(names)}")
    n_gt = np.zeros(nc, dtype=np.int64)
    for ann in gt.get("annotations", []):
        if not ann.get("iscrowd", 0):
            n_gt[int(ann["category_id"]) - 1] += 1

    recall_grid = np.linspace(0.0, 1.0, 101)
    empty = {
        "map50": None if n_gt.sum() == 0 else 0.0,
        "map50_95": None if n_gt.sum() == 0 else 0.0,
        "per_class": {
            str(n): {
                "ap50": 0.0 if n_gt[i] else None,
                "ap50_95": 0.0 if n_gt[i] else None,
                "n_gt": int(n_gt[i]),
            }
            for i, n in enumerate(names)
        },
        "stats": {},
        "pr_curve": {
            "recall": recall_grid,
            "precision": np.where(n_gt[:, None] > 0, 0.0, np.nan) * np.ones((nc, 101)),
        },
    }
    if not gt.get("images") or n_gt.sum() == 0:
        return empty

    ev = coco_evaluator(gt, results, nc)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()

    # precision: [T iou thresholds, R recall points, K classes, A area ranges, M max dets]
    p = np.asarray(ev.eval["precision"], dtype=np.float64)
    p = p[:, :, :, ev.params.areaRngLbl.index("all"), -1]  # all areas, maxDets = 100
    iou50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
    per_class: dict[str, dict] = {}
    for k, name in enumerate(names):
        pk = p[:, :, k]
        valid = bool((pk > -1).all()) and n_gt[k] > 0
        per_class[str(name)] = {
            "ap50": float(pk[iou50].mean()) if valid else None,
            "ap50_95": float(pk.mean()) if valid else None,
            "n_gt": int(n_gt[k]),
        }
    stats = {key: _nullable(v) for key, v in ev.stats_as_dict.items()}
    curve = p[iou50].T.copy()  # (K, R)
    curve[curve < 0] = np.nan
    return {
        "map50": stats.get("AP_50"),
        "map50_95": stats.get("AP_all"),
        "per_class": per_class,
        "stats": stats,
        "pr_curve": {"recall": np.asarray(ev.params.recThrs, dtype=np.float64), "precision": curve},
    }


def to_jsonable(obj: Any) -> Any:
    """numpy / torch scalars and arrays -> python; NaN and inf -> None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "detach"):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as strict JSON atomically (temp file in the same folder + os.replace)."""
    from medmtl.fileio import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=indent, allow_nan=False) + "\n")
    return path
