"""Paired cluster bootstrap over the test set: an interval for each difference against the
baseline that a single seed gets too.

The unit resampled is the clip by default (``BootstrapSettings.unit``: clip, patient or image):
frames of one clip are near-copies, so an image bootstrap treats 197 frames of 28 clips as 197
independent samples and gives intervals about half as wide as they should be. The clusters come
from the test images' file names (the run's ``clip_regex`` / ``group_regex``); with fewer than
``min_clusters`` clusters no interval is given (it would mean nothing), and every interval states
its unit and how many clusters it rests on.

For a method, the baseline and one metric: draw the clusters with replacement (B resamples,
seeded; the same draws for every run, so the two methods are always scored on the same images),
recompute the metric of each run from its exported predictions (``eval/predictions.json`` +
``eval/ground_truth.json`` for mAP@0.5 and mAP@0.5:0.95, through faster-coco-eval;
``eval/view_predictions.json`` for view accuracy and macro-F1), and take per resample the mean
over the paired seeds of method - baseline. The interval is the percentile interval of those B
differences. It measures how much the difference depends on which test images were drawn, for
the trained models at hand; seed-to-seed variation is the t interval's business
(:mod:`medmtl.report.significance`). A run whose exported files do not reproduce its
metrics.json is not used (the reason is stated).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.data.groups import DEFAULT_CLIP_REGEX, DEFAULT_PATIENT_REGEX, clip_of, patient_of
from medmtl.evaluation.resample import CocoResampler, resample_weights, view_metrics_weighted
from medmtl.report.collect import Run, extract
from medmtl.report.significance import CONFIDENCE

__all__ = ["BOOTSTRAP_METRICS", "BootstrapSettings", "add_bootstrap"]

# metric key -> (task population, column of that task's resampled values)
BOOTSTRAP_METRICS = {"map50": ("detect", 0), "map50_95": ("detect", 1),
                     "accuracy": ("classify", 0), "macro_f1": ("classify", 1)}
_TOL = 1e-9  # a recomputed metric must equal metrics.json's to this
UNITS = ("clip", "patient", "image")


@dataclass(frozen=True)
class BootstrapSettings:
    """Resamples for mAP (faster-coco-eval per resample) and for the view metrics (numpy), the
    random seed of the draws and the interval's confidence. 0 resamples: no interval."""

    resamples_map: int = 200
    resamples_view: int = 2000
    seed: int = 0
    confidence: float = CONFIDENCE
    unit: str = "clip"  # clip | patient | image
    min_clusters: int = 10

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"bootstrap unit {self.unit!r}: choose from {', '.join(UNITS)}")

    def describe(self) -> dict[str, Any]:
        return {"resamples_map": self.resamples_map, "resamples_view": self.resamples_view,
                "seed": self.seed, "confidence": self.confidence, "interval": "percentile",
                "unit": f"test {self.unit}", "min_clusters": self.min_clusters,
                "metrics": list(BOOTSTRAP_METRICS)}


@dataclass
class _Population:
    """One run's scored test images for one task: what resamples index and how to score them."""

    key: tuple[Any, ...]  # image ids (+ labels): runs pair only on identical test sets
    point: np.ndarray  # (2,) the metrics on the images as they are
    score: Any  # weights (B, n) -> (B, 2)
    groups: tuple[str, ...]  # the cluster of each image (in key[0]'s order)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read ({e})") from None


def _reproduces(run: Run, point: np.ndarray, keys: tuple[str, str], path: Path) -> None:
    saved = extract(run.metrics or {})
    for key, mine in zip(keys, point, strict=True):
        ref = saved[key]
        if ref is None or not math.isfinite(ref):
            raise ValueError(f"{run.name}: metrics.json has no finite {key}")
        if not math.isfinite(mine) or abs(mine - ref) > _TOL:
            raise ValueError(f"{path} gives {key} {mine:.6f}, metrics.json {ref}: the exported "
                             "predictions are not the ones scored")


def _eval_dir(run: Run) -> Path:
    """The exports behind a run's scores: eval/test/ when it is scored on its held-out split."""
    return run.path / "eval" / "test" if run.split == "test" else run.path / "eval"


def _groups(run: Run, ids: Sequence[int], unit: str,
            rows: Sequence[dict[str, Any]] = ()) -> tuple[str, ...]:
    """The cluster (clip or patient, from the file name by the run's regex; the image itself for
    the image unit) of each test image id, from the eval folder's ground_truth.json. A run with
    no detection export (a classify-only run) names its images in view_predictions.json
    (``rows``): by ``file_name``, or, in runs exported before it was written, by ``clip`` (the
    clip unit only)."""
    if unit == "image":
        return tuple(str(i) for i in ids)
    path = _eval_dir(run) / "ground_truth.json"
    if not path.exists() and rows:
        path = _eval_dir(run) / "view_predictions.json"
        if all("file_name" in r for r in rows):
            gt = {"images": [{"id": r["image_id"], "file_name": r["file_name"]} for r in rows]}
        elif unit == "clip" and all("clip" in r for r in rows):
            clips = {int(r["image_id"]): str(r["clip"]) for r in rows}
            return tuple(clips[i] for i in ids)
        else:
            raise ValueError(f"{path}: no file names (and no ground_truth.json beside it) for "
                             f"the {unit} bootstrap; re-score the run with `medmtl val`")
    else:
        gt = _read_json(path)
    try:
        names = {int(im["id"]): str(im["file_name"]) for im in gt["images"]}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: malformed ({e})") from None
    if unit == "clip":
        regex = str(run.config.get("clip_regex") or DEFAULT_CLIP_REGEX)
        of = clip_of
    else:
        regex = str(run.config.get("group_regex") or DEFAULT_PATIENT_REGEX)
        of = patient_of
    missing = [i for i in ids if i not in names]
    if missing:
        raise ValueError(f"{path}: no file name for image id {missing[0]} (needed for the "
                         f"{unit} bootstrap)")
    return tuple(of(names[i], regex) for i in ids)


def _detect_population(run: Run, unit: str) -> _Population:
    ev = _eval_dir(run)
    gt = _read_json(ev / "ground_truth.json")
    results = _read_json(ev / "predictions.json")
    try:
        coco = CocoResampler(gt, results)
        point = np.array([np.nan if v is None else v
                          for v in coco.score(np.arange(len(coco.image_ids)))])
    except (AssertionError, KeyError, TypeError, ValueError) as e:  # the library asserts too
        raise ValueError(f"{ev}: malformed COCO export ({type(e).__name__}: {e})") from None
    _reproduces(run, point, ("map50", "map50_95"), ev / "predictions.json")
    boxes = tuple(sorted((int(a["image_id"]), int(a["category_id"]), *map(float, a["bbox"]))
                         for a in gt.get("annotations", [])))
    groups = _groups(run, coco.image_ids, unit)
    return _Population((tuple(coco.image_ids), boxes, groups), point, coco.score_many, groups)


def _classify_population(run: Run, unit: str) -> _Population:
    from medmtl.evaluation.metrics import classification_metrics  # imports torch

    path = _eval_dir(run) / "view_predictions.json"
    data = _read_json(path)
    try:
        nv = len(data["labels"])
        labelled = [r for r in data["images"] if r.get("view") is not None]
        rows = sorted((int(r["image_id"]), int(r["view"]), int(r["pred"])) for r in labelled)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: malformed ({e})") from None
    if not rows:
        raise ValueError(f"{path}: no image with a view label")
    ids, y_true, y_pred = (np.array(c, dtype=np.int64) for c in zip(*rows, strict=True))
    cm = classification_metrics(y_true, y_pred, nv, list(data["labels"]))
    point = np.array([cm["accuracy"], cm["macro_f1"]], dtype=np.float64)
    _reproduces(run, point, ("accuracy", "macro_f1"), path)
    groups = _groups(run, ids.tolist(), unit, labelled)
    return _Population((tuple(ids.tolist()), tuple(y_true.tolist()), groups), point,
                       lambda w: view_metrics_weighted(y_true, y_pred, nv, w), groups)


class _Cache:
    """Populations and resampled values per run, computed once per report."""

    def __init__(self, settings: BootstrapSettings) -> None:
        self.settings = settings
        self.pops: dict[tuple[str, str], _Population | str] = {}
        self.values: dict[tuple[str, str], np.ndarray] = {}
        self._draws: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}

    def resamples(self, task: str) -> int:
        s = self.settings
        return s.resamples_map if task == "detect" else s.resamples_view

    def population(self, run: Run, task: str) -> _Population | str:
        if (run.name, task) not in self.pops:
            try:
                unit = self.settings.unit
                self.pops[run.name, task] = (_detect_population(run, unit) if task == "detect"
                                             else _classify_population(run, unit))
            except ValueError as e:
                self.pops[run.name, task] = str(e)
        return self.pops[run.name, task]

    def draws(self, task: str, groups: tuple[str, ...]) -> np.ndarray:
        """(B, n) times each test image is drawn (whole clusters); the same for every run of
        the report scored on those images."""
        if (task, groups) not in self._draws:
            rng = np.random.default_rng(self.settings.seed)
            self._draws[task, groups] = resample_weights(
                None if self.settings.unit == "image" else groups, len(groups),
                self.resamples(task), rng)
        return self._draws[task, groups]

    def resampled(self, run: Run, task: str, pop: _Population) -> np.ndarray:
        if (run.name, task) not in self.values:
            self.values[run.name, task] = pop.score(self.draws(task, pop.groups))
        return self.values[run.name, task]


def _interval(cache: _Cache, mine: dict[int, Run], base: dict[int, Run], key: str,
              ) -> dict[str, Any]:
    task, col = BOOTSTRAP_METRICS[key]
    seeds = sorted(set(mine) & set(base))
    if cache.resamples(task) <= 0:
        return {"available": False, "reason": "switched off (0 resamples)"}
    if not seeds:
        return {"available": False, "reason": "no seed evaluated for both"}
    pairs = []
    for s in seeds:
        for run in (mine[s], base[s]):
            if not (_eval_dir(run)).is_dir():
                return {"available": False, "reason": f"{run.name}: no eval/ folder"}
        pm, pb = cache.population(mine[s], task), cache.population(base[s], task)
        for pop in (pm, pb):
            if isinstance(pop, str):
                return {"available": False, "reason": pop}
        pairs.append((s, pm, pb))
    keys = {pop.key for _, pm, pb in pairs for pop in (pm, pb)}  # type: ignore[union-attr]
    if len(keys) > 1:
        return {"available": False, "reason": "the runs were scored on different test images"}
    unit = cache.settings.unit
    clusters = len(set(pairs[0][1].groups))  # type: ignore[union-attr]
    if clusters < cache.settings.min_clusters:
        return {"available": False, "unit": unit, "clusters": clusters,
                "reason": f"only {clusters} test {unit}(s): too few for a {unit} bootstrap "
                          f"interval to mean anything (at least {cache.settings.min_clusters})"}
    diffs = np.mean([cache.resampled(mine[s], task, pm)[:, col]  # type: ignore[arg-type]
                     - cache.resampled(base[s], task, pb)[:, col]  # type: ignore[arg-type]
                     for s, pm, pb in pairs], axis=0)
    point = float(np.mean([pm.point[col] - pb.point[col]  # type: ignore[union-attr]
                           for _, pm, pb in pairs]))
    ok = diffs[np.isfinite(diffs)]
    if not ok.size:
        return {"available": False, "reason": "no resample has a finite value"}
    tail = (1.0 - cache.settings.confidence) / 2.0 * 100.0
    lo, hi = np.percentile(ok, [tail, 100.0 - tail])
    return {"available": True, "diff": point, "ci_low": float(lo), "ci_high": float(hi),
            "confidence": cache.settings.confidence, "resamples": int(len(diffs)),
            "resamples_finite": int(ok.size), "images": len(next(iter(keys))[0]),
            "unit": unit, "clusters": clusters, "seeds": seeds}


def add_bootstrap(runs: list[Run], agg: dict[str, Any],
                  settings: BootstrapSettings | None = None) -> dict[str, Any]:
    """Add ``bootstrap`` (an interval, or ``available: False`` with the reason) to each
    significance entry of ``agg`` for the BOOTSTRAP_METRICS; returns the settings used."""
    settings = settings or BootstrapSettings()
    cache = _Cache(settings)
    base = agg["baseline"]
    done = {m: {r.seed: r for r in runs if r.method == m and r.finished}
            for m in agg["methods"]}
    for method, entry in agg["methods"].items():
        if method == base:
            continue
        for key in BOOTSTRAP_METRICS:
            sig = entry["significance"].get(key)
            if sig is not None:
                sig["bootstrap"] = _interval(cache, done[method], done[base], key)
    return settings.describe()
