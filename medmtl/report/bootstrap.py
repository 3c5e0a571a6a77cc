"""Paired bootstrap over test images: an interval for each difference against the baseline that
a single seed gets too.

For a method, the baseline and one metric: draw the test images with replacement (B resamples,
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.evaluation.resample import CocoResampler, view_metrics_resampled
from medmtl.report.collect import Run, extract
from medmtl.report.significance import CONFIDENCE

__all__ = ["BOOTSTRAP_METRICS", "BootstrapSettings", "add_bootstrap"]

# metric key -> (task population, column of that task's resampled values)
BOOTSTRAP_METRICS = {"map50": ("detect", 0), "map50_95": ("detect", 1),
                     "accuracy": ("classify", 0), "macro_f1": ("classify", 1)}
_TOL = 1e-9  # a recomputed metric must equal metrics.json's to this


@dataclass(frozen=True)
class BootstrapSettings:
    """Resamples for mAP (faster-coco-eval per resample) and for the view metrics (numpy), the
    random seed of the draws and the interval's confidence. 0 resamples: no interval."""

    resamples_map: int = 200
    resamples_view: int = 2000
    seed: int = 0
    confidence: float = CONFIDENCE

    def describe(self) -> dict[str, Any]:
        return {"resamples_map": self.resamples_map, "resamples_view": self.resamples_view,
                "seed": self.seed, "confidence": self.confidence, "interval": "percentile",
                "unit": "test image", "metrics": list(BOOTSTRAP_METRICS)}


@dataclass
class _Population:
    """One run's scored test images for one task: what resamples index and how to score them."""

    key: tuple[Any, ...]  # image ids (+ labels): runs pair only on identical test sets
    point: np.ndarray  # (2,) the metrics on the images as they are
    score: Any  # draws (B, n) -> (B, 2)


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


def _detect_population(run: Run) -> _Population:
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
    return _Population((tuple(coco.image_ids), boxes), point, coco.score_many)


def _classify_population(run: Run) -> _Population:
    from medmtl.evaluation.metrics import classification_metrics  # imports torch

    path = _eval_dir(run) / "view_predictions.json"
    data = _read_json(path)
    try:
        nv = len(data["labels"])
        rows = sorted((int(r["image_id"]), int(r["view"]), int(r["pred"]))
                      for r in data["images"] if r.get("view") is not None)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: malformed ({e})") from None
    if not rows:
        raise ValueError(f"{path}: no image with a view label")
    ids, y_true, y_pred = (np.array(c, dtype=np.int64) for c in zip(*rows, strict=True))
    cm = classification_metrics(y_true, y_pred, nv, list(data["labels"]))
    point = np.array([cm["accuracy"], cm["macro_f1"]], dtype=np.float64)
    _reproduces(run, point, ("accuracy", "macro_f1"), path)
    return _Population((tuple(ids.tolist()), tuple(y_true.tolist())), point,
                       lambda draws: view_metrics_resampled(y_true, y_pred, nv, draws))


class _Cache:
    """Populations and resampled values per run, computed once per report."""

    def __init__(self, settings: BootstrapSettings) -> None:
        self.settings = settings
        self.pops: dict[tuple[str, str], _Population | str] = {}
        self.values: dict[tuple[str, str], np.ndarray] = {}
        self._draws: dict[tuple[str, int], np.ndarray] = {}

    def resamples(self, task: str) -> int:
        s = self.settings
        return s.resamples_map if task == "detect" else s.resamples_view

    def population(self, run: Run, task: str) -> _Population | str:
        if (run.name, task) not in self.pops:
            try:
                self.pops[run.name, task] = (_detect_population(run) if task == "detect"
                                             else _classify_population(run))
            except ValueError as e:
                self.pops[run.name, task] = str(e)
        return self.pops[run.name, task]

    def draws(self, task: str, n: int) -> np.ndarray:
        """(B, n) positions into the n test images; the same for every run of the report."""
        if (task, n) not in self._draws:
            rng = np.random.default_rng(self.settings.seed)
            self._draws[task, n] = rng.integers(0, n, size=(self.resamples(task), n))
        return self._draws[task, n]

    def resampled(self, run: Run, task: str, pop: _Population) -> np.ndarray:
        if (run.name, task) not in self.values:
            self.values[run.name, task] = pop.score(self.draws(task, len(pop.key[0])))
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
            "seeds": seeds}


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
