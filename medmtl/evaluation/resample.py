"""Metrics on resampled test sets (bootstrap over images or over clusters of images), from one
run's exported predictions.

A resample is a vector of positions into the test images (drawn with replacement); an image drawn
twice counts twice, exactly as if the set held two copies of it. :func:`resample_weights` draws
them, as counts per image: images one by one, or whole clusters (the frames of a clip, the clips
of a patient), which is what a test set of video frames needs -- its frames are not independent.

:class:`CocoResampler` runs faster-coco-eval's per-image matching once (``separate_eval``) and,
for each resample, hands the per-image evaluations of the drawn images, in draw order, to
faster-coco-eval's own accumulate. Matching is per image, so this equals scoring a data set in
which every draw is a new image (:func:`resampled_coco`, the slow path, used when the library
lacks those entry points; the tests check that both agree). :func:`view_metrics_resampled` does
the same for view accuracy and macro-F1 (numpy, vectorised over resamples), with the definitions
of :func:`medmtl.evaluation.metrics.classification_metrics`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from .coco import coco_evaluator, evaluate_coco

__all__ = ["CocoResampler", "draws_of", "resample_weights", "resampled_coco",
           "view_metrics_resampled", "view_metrics_weighted"]


def resample_weights(groups: Sequence[Any] | None, n: int, resamples: int,
                     rng: np.random.Generator) -> np.ndarray:
    """(B, n) times each of the n images is drawn in each of B bootstrap resamples.

    ``groups`` None: the image bootstrap (n images drawn with replacement). Otherwise the
    cluster bootstrap: ``groups[i]`` is image i's cluster (clip or patient); the clusters are
    drawn with replacement, as many as there are, and a drawn cluster brings all its images.
    Frames of one clip are near-copies, so only clusters are independent samples."""
    if groups is None:
        draws = rng.integers(0, n, size=(resamples, n))
        w = np.zeros((resamples, n), dtype=np.int64)
        np.add.at(w, (np.arange(resamples)[:, None], draws), 1)
        return w
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group labels for {n} images")
    names = sorted(set(groups), key=str)
    index = {g: k for k, g in enumerate(names)}
    member = np.zeros((len(names), n), dtype=np.int64)
    member[[index[g] for g in groups], np.arange(n)] = 1
    picks = rng.integers(0, len(names), size=(resamples, len(names)))
    counts = np.zeros((resamples, len(names)), dtype=np.int64)
    np.add.at(counts, (np.arange(resamples)[:, None], picks), 1)
    return counts @ member


def draws_of(weights: np.ndarray) -> np.ndarray:
    """The positions a row of `resample_weights` stands for (each image as often as drawn)."""
    return np.repeat(np.arange(weights.size), weights)


def resampled_coco(gt: dict, results: list[dict], image_ids: Sequence[int],
                   draws: Sequence[int]) -> tuple[dict, list[dict]]:
    """(ground truth, results) of the data set whose k-th image is a copy of
    ``image_ids[draws[k]]``, with image id k + 1."""
    anns: dict[int, list[dict]] = {}
    dets: dict[int, list[dict]] = {}
    for a in gt.get("annotations", []):
        anns.setdefault(int(a["image_id"]), []).append(a)
    for d in results:
        dets.setdefault(int(d["image_id"]), []).append(d)
    images = {int(im["id"]): im for im in gt["images"]}
    out_im: list[dict] = []
    out_ann: list[dict] = []
    out_det: list[dict] = []
    for k, j in enumerate(draws):
        src = int(image_ids[j])
        out_im.append({**images[src], "id": k + 1})
        out_ann += [{**a, "image_id": k + 1, "id": len(out_ann) + i + 1}
                    for i, a in enumerate(anns.get(src, []))]
        out_det += [{**d, "image_id": k + 1} for d in dets.get(src, [])]
    return {**gt, "images": out_im, "annotations": out_ann}, out_det


class CocoResampler:
    """mAP@0.5 and mAP@0.5:0.95 (as :func:`medmtl.evaluation.coco.evaluate_coco` computes them)
    of one run's COCO exports on any resample of its images.

    ``image_ids``: the ground truth's image ids, sorted; resamples index this list.
    """

    def __init__(self, gt: dict, results: list[dict]) -> None:
        self.gt, self.results = gt, results
        self.image_ids = sorted(int(im["id"]) for im in gt["images"])
        self.names = [str(c["id"]) for c in sorted(gt["categories"], key=lambda c: c["id"])]
        self._table: list[list[Any]] | None = None
        self._params: Any = None
        has_gt = any(not a.get("iscrowd", 0) for a in gt.get("annotations", []))
        if not (self.image_ids and has_gt):
            return  # evaluate_coco's "no ground truth" case: the slow path handles it
        try:
            from faster_coco_eval.faster_eval_api_cpp import COCOevalAccumulate  # noqa: F401

            ev = coco_evaluator(gt, results, len(self.names), separate_eval=True)
            ev.evaluate()
            evals, p = ev._evalImgs_cpp, ev._paramsEval
        except (ImportError, AttributeError, TypeError):
            return  # an older faster-coco-eval: score materialised resamples instead
        n_img, n_area = len(p.imgIds), len(p.areaRng)
        a = p.areaRngLbl.index("all")
        # the C++ layout: evaluations[k * n_area * n_img + area * n_img + image]
        self._table = [[evals[(k * n_area + a) * n_img + i] for i in range(n_img)]
                       for k in range(len(p.catIds))]
        self._params = copy.copy(p)
        self._params.areaRng, self._params.areaRngLbl = [p.areaRng[a]], ["all"]
        self._params.maxDets = [p.maxDets[-1]]  # COCO's AP: all areas, 100 detections
        self._iou50 = int(np.argmin(np.abs(np.asarray(p.iouThrs) - 0.5)))

    @property
    def fast(self) -> bool:
        """True when resamples reuse the per-image evaluations (else each one is re-scored)."""
        return self._table is not None

    def score(self, draws: Sequence[int] | np.ndarray) -> tuple[float | None, float | None]:
        """(mAP@0.5, mAP@0.5:0.95) on the resample ``draws`` (positions into image_ids); None
        where no drawn image has ground truth."""
        if self._table is None:
            gt, res = resampled_coco(self.gt, self.results, self.image_ids, draws)
            out = evaluate_coco(gt, res, self.names)
            return out["map50"], out["map50_95"]
        from faster_coco_eval.faster_eval_api_cpp import COCOevalAccumulate

        p = copy.copy(self._params)
        p.imgIds = list(range(len(draws)))
        acc = COCOevalAccumulate(p, [row[int(j)] for row in self._table for j in draws])
        prec = np.asarray(acc["precision"], dtype=np.float64)[:, :, :, 0, 0]  # (T, R, K)
        at50 = prec[self._iou50]
        return (float(at50[at50 > -1].mean()) if (at50 > -1).any() else None,
                float(prec[prec > -1].mean()) if (prec > -1).any() else None)

    def score_many(self, weights: np.ndarray) -> np.ndarray:
        """(B, 2) array of :meth:`score` over the resamples of ``weights`` (`resample_weights`;
        NaN for None)."""
        return np.array([[np.nan if v is None else v for v in self.score(draws_of(row))]
                         for row in weights], dtype=np.float64).reshape(len(weights), 2)


def view_metrics_resampled(y_true: Any, y_pred: Any, num_classes: int, draws: np.ndarray,
                           chunk: int = 256) -> np.ndarray:
    """(B, 2): view accuracy and macro-F1 on each row of ``draws`` (positions into y_true /
    y_pred, every label valid)."""
    draws = np.atleast_2d(np.asarray(draws, dtype=np.int64))
    w = np.zeros((len(draws), len(np.asarray(y_true))), dtype=np.int64)
    np.add.at(w, (np.arange(len(draws))[:, None], draws), 1)
    return view_metrics_weighted(y_true, y_pred, num_classes, w, chunk)


def view_metrics_weighted(y_true: Any, y_pred: Any, num_classes: int, weights: np.ndarray,
                          chunk: int = 256) -> np.ndarray:
    """(B, 2): view accuracy and macro-F1 of each resample of ``weights`` ((B, n) times each
    image is drawn, `resample_weights`). Macro-F1 is the mean F1 over the classes present in the
    resample's labels or predictions, as in ``classification_metrics``."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    weights = np.atleast_2d(np.asarray(weights))
    onehot_t = np.eye(num_classes)[t]
    onehot_p = np.eye(num_classes)[p]
    out = np.empty((len(weights), 2))
    for s in range(0, len(weights), chunk):
        w = weights[s:s + chunk].astype(np.float64)
        support, predicted = w @ onehot_t, w @ onehot_p
        tp = w @ (onehot_t * onehot_p)
        prec = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        rec = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
        f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(tp), where=prec + rec > 0)
        present = (support + predicted) > 0
        out[s:s + chunk, 0] = tp.sum(1) / w.sum(1)
        out[s:s + chunk, 1] = (f1 * present).sum(1) / present.sum(1)
    return out
