"""The report's statistics against hand computations: Holm's adjusted p-values (recomputed here
from the definition, also from a written summary.json), the seed-paired t interval, the paired
bootstrap over test images on cases whose answer is known, and the four-metric Δm."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml

from medmtl.engine.evaluate import view_predictions
from medmtl.evaluation.coco import evaluate_coco
from medmtl.evaluation.metrics import classification_metrics
from medmtl.evaluation.resample import CocoResampler, resampled_coco, view_metrics_resampled
from medmtl.report import aggregate, collect_runs, compare, holm, write_report
from medmtl.report.bootstrap import BootstrapSettings

VIEWS = ["A4C", "PLAX", "PSAX"]
NAMES = ["AR", "MR"]


def holm_by_definition(p: list[float]) -> list[float]:
    """Holm (1979) written out: sort ascending; the i-th smallest (1-based) gets
    max_{j <= i} min(1, (m - j + 1) p_(j)); ties in the sort get equal values."""
    m = len(p)
    ranked = sorted(range(m), key=lambda i: (p[i], i))
    out = [0.0] * m
    for pos, i in enumerate(ranked):
        out[i] = max(min(1.0, (m - j) * p[ranked[j]]) for j in range(pos + 1))
    return out


# --- Holm ----------------------------------------------------------------------------------

def test_holm_known_family_with_ties_and_cap() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])  # 3x, 1x->max, 2x, 4x
    family = [0.04, 0.001, 0.02, 0.02, 0.6, 0.02, 0.9, 0.0]
    adj = holm(family)
    assert adj == pytest.approx(holm_by_definition(family))
    # the three tied 0.02 get one value: 6 x 0.02 (the first of them is 3rd of 8)
    assert adj[2] == adj[3] == adj[5] == pytest.approx(0.12)
    order = np.argsort(family, kind="stable")
    assert all(np.diff(np.asarray(adj)[order]) >= 0)  # never decreases along the sorted order
    assert max(adj) <= 1.0 and adj[4] == adj[6] == 1.0  # 2 x 0.6 capped, then the max
    assert all(a >= r for a, r in zip(adj, family, strict=True))
    assert holm([]) == [] and holm([0.2]) == [0.2]
    with pytest.raises(ValueError):
        holm([0.2, 1.5])


def test_holm_rejections_are_the_step_down_procedure() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        p = list(rng.uniform(0, 0.08, size=int(rng.integers(1, 12))) ** 2)
        alpha, m = 0.05, len(p)
        rejected, k = set(), 0
        for k, i in enumerate(sorted(range(m), key=lambda i: p[i])):  # stop at first failure
            if p[i] > alpha / (m - k):
                break
            rejected.add(i)
        assert {i for i, a in enumerate(holm(p)) if a <= alpha} == rejected


# --- seed-paired interval ------------------------------------------------------------------

def test_seed_paired_t_interval_by_hand() -> None:
    base = {0: 0.600, 1: 0.612, 2: 0.590, 3: 0.605}
    meth = {0: 0.620, 1: 0.647, 2: 0.600, 3: 0.630}
    out = compare(meth, base, higher_is_better=True)
    d = [0.020, 0.035, 0.010, 0.025]
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    t975_df3 = 3.182446305284263  # Student t quantile 0.975, 3 degrees of freedom (table: 3.182)
    half = t975_df3 * sd / math.sqrt(4)
    assert out["mean_diff"] == pytest.approx(mean)
    assert out["ci_low"] == pytest.approx(mean - half) and out["ci_high"] == pytest.approx(
        mean + half)
    assert out["t"] == pytest.approx(mean / (sd / 2)) and out["df"] == 3
    single = compare({0: 0.6}, {0: 0.5}, True)
    assert single["ci_low"] is None and single["mean_diff"] == pytest.approx(0.1)


# --- run directories with exported predictions ---------------------------------------------

def _gt(n: int, with_boxes: int | None = None) -> dict[str, Any]:
    rng = np.random.default_rng(n)
    images, anns = [], []
    for i in range(n):
        images.append({"id": i, "file_name": f"{i}.png", "width": 320, "height": 240})
        if with_boxes is not None and i >= with_boxes:
            continue  # a negative image
        x, y, w, h = (float(v) for v in rng.uniform([10, 10, 30, 30], [150, 100, 90, 90]))
        anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1 + i % 2,
                     "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(NAMES)]}


def _dets(gt: dict[str, Any], hit: list[bool], noise: int = 0) -> list[dict[str, Any]]:
    """A detection on each ground-truth box where hit, plus `noise` false positives."""
    rng = np.random.default_rng(len(hit) + noise)
    out = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
            "score": 0.9} for a, h in zip(gt["annotations"], hit, strict=True) if h]
    for k in range(noise):
        out.append({"image_id": k % len(gt["images"]), "category_id": 1 + k % 2,
                    "bbox": [float(v) for v in rng.uniform(0, 200, 4)],
                    "score": float(rng.uniform(0.01, 0.95))})
    return out


def write_run(root: Path, method: str, seed: int, gt: dict | None = None,
              dets: list | None = None, views: tuple[list, list] | None = None,
              metrics: dict[str, float] | None = None) -> Path:
    """A finished run whose metrics.json is computed from the files it exports (as the trainer
    does), or holds `metrics` as given (no eval/ files)."""
    d = root / "runs" / f"{method}-s{seed}"
    (d / "eval").mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"method": method, "seed": seed}))
    out: dict[str, Any] = {"split": "val", "detection": None, "classification": None}
    if metrics is not None:
        det = {k: v for k, v in metrics.items() if k.startswith("map")}
        cls = {k: v for k, v in metrics.items() if not k.startswith("map")}
        out.update(detection=det or None, classification=cls or None)
    if gt is not None:
        coco = evaluate_coco(gt, dets or [], NAMES)
        out["detection"] = {"map50": coco["map50"], "map50_95": coco["map50_95"]}
        (d / "eval" / "ground_truth.json").write_text(json.dumps(gt))
        (d / "eval" / "predictions.json").write_text(json.dumps(dets or []))
    if views is not None:
        y_true, y_pred = views
        probs = {i: np.eye(len(VIEWS))[p] * 0.8 + 0.2 / len(VIEWS) for i, p in enumerate(y_pred)}
        records = [SimpleNamespace(image_id=i, view=v) for i, v in enumerate(y_true)]
        (d / "eval" / "view_predictions.json").write_text(
            json.dumps(view_predictions(records, probs, VIEWS)))
        cm = classification_metrics(y_true, y_pred, len(VIEWS), VIEWS)
        out["classification"] = {"accuracy": cm["accuracy"], "macro_f1": cm["macro_f1"]}
    (d / "metrics.json").write_text(json.dumps(out))
    return d


FAST = BootstrapSettings(resamples_map=60, resamples_view=400, seed=0)


def _summary(root: Path, settings: BootstrapSettings = FAST, **kw: Any) -> dict[str, Any]:
    paths = write_report(root, baseline="fixed", plots=False, bootstrap=settings, **kw)
    return json.loads(paths["json"].read_text())


# --- resampled metrics equal scoring the materialised resample ------------------------------

def test_coco_resampler_equals_scoring_the_copied_images() -> None:
    gt = _gt(30, with_boxes=24)
    dets = _dets(gt, [i % 3 != 0 for i in range(24)], noise=60)
    r = CocoResampler(gt, dets)
    assert r.fast
    full = evaluate_coco(gt, dets, NAMES)
    assert r.score(np.arange(30)) == pytest.approx((full["map50"], full["map50_95"]), abs=1e-12)
    rng = np.random.default_rng(0)
    for draws in [rng.integers(0, 30, 30) for _ in range(4)] + [np.full(30, 27)]:
        g, res = resampled_coco(gt, dets, r.image_ids, draws)
        ref = evaluate_coco(g, res, NAMES)
        got = r.score(draws)
        for a, b in zip(got, (ref["map50"], ref["map50_95"]), strict=True):
            assert (a is None and b is None) or a == pytest.approx(b, abs=1e-12)


def test_view_metrics_resampled_equal_classification_metrics() -> None:
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 3, 50)
    y_pred = np.where(rng.uniform(size=50) < 0.7, y_true, rng.integers(0, 3, 50))
    draws = rng.integers(0, 50, (300, 50))
    got = view_metrics_resampled(y_true, y_pred, 3, draws, chunk=64)
    for b in (0, 7, 150, 299):
        cm = classification_metrics(y_true[draws[b]], y_pred[draws[b]], 3, VIEWS)
        assert got[b] == pytest.approx([cm["accuracy"], cm["macro_f1"]], abs=1e-12)


# --- the paired bootstrap on known cases ---------------------------------------------------

def test_identical_predictions_give_a_zero_interval(tmp_path: Path) -> None:
    gt = _gt(40)
    dets = _dets(gt, [i % 4 != 0 for i in range(40)], noise=30)
    views = ([i % 3 for i in range(40)], [(i % 3) if i % 5 else 0 for i in range(40)])
    for method in ("fixed", "gradnorm"):
        write_run(tmp_path, method, 0, gt, dets, views)
    sig = _summary(tmp_path)["methods"]["gradnorm"]["significance"]
    for key in ("map50", "map50_95", "accuracy", "macro_f1"):
        b = sig[key]["bootstrap"]
        assert b["available"], b
        assert (b["diff"], b["ci_low"], b["ci_high"]) == (0.0, 0.0, 0.0)
        assert b["seeds"] == [0] and b["images"] == 40
    assert sig["map50"]["bootstrap"]["resamples"] == 60
    assert sig["accuracy"]["bootstrap"]["resamples"] == 400
    assert sig["accuracy"]["verdict"] == "not enough seeds to tell"  # one seed: no t-test


def test_right_everywhere_vs_right_on_half(tmp_path: Path) -> None:
    n = 200
    y_true = [i % 3 for i in range(n)]
    half = [t if i % 2 == 0 else (t + 1) % 3 for i, t in enumerate(y_true)]
    gt = _gt(n)  # classes alternate: i % 4 in (0, 1) finds half of each class's boxes
    write_run(tmp_path, "fixed", 0, gt, _dets(gt, [i % 4 < 2 for i in range(n)]),
              (y_true, half))
    write_run(tmp_path, "dual", 0, gt, _dets(gt, [True] * n), (y_true, list(y_true)))
    summary = _summary(tmp_path, BootstrapSettings(resamples_map=100, resamples_view=2000))
    acc = summary["methods"]["dual"]["significance"]["accuracy"]["bootstrap"]
    assert acc["diff"] == pytest.approx(0.5)
    # 1 - (share of the half-right images in a resample): 0.5 +- 1.96 sqrt(0.25 / 200) = +-0.069
    assert 0.41 < acc["ci_low"] < 0.5 < acc["ci_high"] < 0.59
    assert acc["ci_high"] - acc["ci_low"] == pytest.approx(2 * 1.96 * math.sqrt(0.25 / n),
                                                           rel=0.2)
    # detection: every box found (AP 1) vs every other box (recall 0.5, precision 1: AP at the
    # 101 recall points is 51/101 per class)
    m50 = summary["methods"]["dual"]["significance"]["map50"]["bootstrap"]
    assert m50["diff"] == pytest.approx(1 - 51 / 101)
    assert m50["ci_low"] < 1 - 51 / 101 < m50["ci_high"]
    assert 0.35 < m50["ci_low"] and m50["ci_high"] < 0.65
    md = (tmp_path / "report.md").read_text()
    assert f"[{acc['ci_low']:+.3f}, {acc['ci_high']:+.3f}]" in md


def test_bootstrap_is_seeded_and_switchable(tmp_path: Path) -> None:
    gt = _gt(30)
    views = ([i % 3 for i in range(30)], [i % 2 for i in range(30)])
    write_run(tmp_path, "fixed", 0, gt, _dets(gt, [i % 2 == 0 for i in range(30)]), views)
    write_run(tmp_path, "famo", 0, gt, _dets(gt, [i % 3 == 0 for i in range(30)], 10), views)
    a = _summary(tmp_path)["methods"]["famo"]["significance"]["map50"]["bootstrap"]
    b = _summary(tmp_path)["methods"]["famo"]["significance"]["map50"]["bootstrap"]
    assert a == b
    off = _summary(tmp_path, BootstrapSettings(resamples_map=0, resamples_view=0))
    assert "0 resamples" in off["methods"]["famo"]["significance"]["map50"]["bootstrap"][
        "reason"]
    assert off["bootstrap"]["resamples_map"] == 0


def test_bootstrap_refuses_files_that_do_not_match(tmp_path: Path) -> None:
    gt = _gt(30)
    views = ([i % 3 for i in range(30)], [i % 3 for i in range(30)])
    write_run(tmp_path, "fixed", 0, gt, _dets(gt, [True] * 30), views)
    d = write_run(tmp_path, "pcgrad", 0, gt, _dets(gt, [i % 2 == 0 for i in range(30)]), views)
    other = _gt(31)  # another test set
    write_run(tmp_path, "cagrad", 0, other, _dets(other, [True] * 31), views)
    bad = write_run(tmp_path, "uncertainty", 0, gt, _dets(gt, [True] * 30), views)
    (bad / "eval" / "predictions.json").write_text('[{"image_id": 99, "category_id": 1, '
                                                   '"bbox": [1, 1, 5, 5], "score": 0.5}]')
    m = json.loads((d / "metrics.json").read_text())
    m["detection"]["map50"] += 0.01  # metrics.json no longer what the files give
    (d / "metrics.json").write_text(json.dumps(m))
    sig = _summary(tmp_path)["methods"]
    assert "not the ones scored" in sig["pcgrad"]["significance"]["map50"]["bootstrap"]["reason"]
    assert sig["pcgrad"]["significance"]["accuracy"]["bootstrap"]["available"]
    assert "different test images" in sig["cagrad"]["significance"]["map50"]["bootstrap"][
        "reason"]
    assert "malformed COCO export" in sig["uncertainty"]["significance"]["map50_95"][
        "bootstrap"]["reason"]
    md = (tmp_path / "report.md").read_text()
    assert "No bootstrap interval for cagrad: the runs were scored on different test images" in md


# --- Holm in the report, recomputed from summary.json --------------------------------------

def test_report_verdicts_use_holm_over_the_family(tmp_path: Path) -> None:
    vals = {"fixed": (0.60, 0.61, 0.62), "gradnorm": (0.62, 0.635, 0.64),
            "dual": (0.70, 0.72, 0.73), "uncertainty": (0.612, 0.63, 0.636)}
    for method, v in vals.items():
        for seed, x in enumerate(v):
            write_run(tmp_path, method, seed, metrics={
                "map50": x, "map50_95": x / 2 + 0.001 * seed * seed, "accuracy": 0.8 + x / 10,
                "macro_f1": 0.7 + x / 5 - 0.002 * seed})
    summary = _summary(tmp_path)
    mc = summary["multiple_comparisons"]
    fam = [(m, k) for m, k in mc["comparisons"]]
    assert mc["correction"] == "holm" and mc["family_size"] == len(fam) == 3 * 4
    raw = [summary["methods"][m]["significance"][k]["p"] for m, k in fam]
    adj = [summary["methods"][m]["significance"][k]["p_adj"] for m, k in fam]
    assert adj == pytest.approx(holm_by_definition(raw), abs=1e-15)
    for (m, k), p_adj in zip(fam, adj, strict=True):
        sig = summary["methods"][m]["significance"][k]
        diff = sig["mean_diff"]
        want = "indistinguishable" if p_adj >= 0.05 else ("better" if diff > 0 else "worse")
        assert sig["verdict"] == want and sig["correction"] == "holm"
        assert sig["ci_low"] <= diff <= sig["ci_high"]
    unc = summary["methods"]["uncertainty"]["significance"]["map50"]  # raw p ~0.02, 4th-to-last
    assert (unc["verdict_unadjusted"], unc["verdict"]) == ("better", "indistinguishable")
    md = (tmp_path / "report.md").read_text()
    assert f"Holm's correction over {len(fam)} test(s)" in md
    for m, k in fam:
        sig = summary["methods"][m]["significance"][k]
        cell = [("p<0.001" if p < 0.001 else f"p={p:.3f}") for p in (sig["p_adj"], sig["p"])]
        assert f"{sig['verdict']} (Holm {cell[0]}, {cell[1]})" in md


# --- Δm over four metrics ------------------------------------------------------------------

def test_four_metric_delta_m_by_hand(tmp_path: Path) -> None:
    runs = {("detect", 0): {"map50": 0.80, "map50_95": 0.40},
            ("detect", 1): {"map50": 0.70, "map50_95": 0.30},
            ("classify", 0): {"accuracy": 0.90, "macro_f1": 0.80},
            ("classify", 1): {"accuracy": 0.95, "macro_f1": 0.85},
            ("dual", 0): {"map50": 0.75, "map50_95": 0.36, "accuracy": 0.93, "macro_f1": 0.81},
            ("dual", 1): {"map50": 0.72, "map50_95": 0.34, "accuracy": 0.90, "macro_f1": 0.84}}
    for (method, seed), m in runs.items():
        write_run(tmp_path, method, seed, metrics=m)
    agg = aggregate(collect_runs(tmp_path))
    dm, two = agg["methods"]["dual"]["delta_m"], agg["methods"]["dual"]["delta_m_two"]
    # references: mAP@0.5 0.75, mAP@0.5:0.95 0.35, accuracy 0.925, macro-F1 0.825
    seed0 = (0.0 / 0.75 + 0.01 / 0.35 + 0.005 / 0.925 - 0.015 / 0.825) / 4 * 100
    seed1 = (-0.03 / 0.75 - 0.01 / 0.35 - 0.025 / 0.925 + 0.015 / 0.825) / 4 * 100
    assert dm["per_seed"] == {"0": pytest.approx(seed0), "1": pytest.approx(seed1)}
    assert dm["mean"] == pytest.approx((seed0 + seed1) / 2)
    assert dm["std"] == pytest.approx(abs(seed0 - seed1) / math.sqrt(2))
    # Δm of the means equals the mean of the per-seed values
    means = (0.735, 0.35, 0.915, 0.825)
    refs = (0.75, 0.35, 0.925, 0.825)
    assert dm["mean"] == pytest.approx(np.mean([(a - b) / b for a, b in
                                                zip(means, refs, strict=True)]) * 100)
    assert dm["metric_terms"]["map50"] == pytest.approx((0.735 - 0.75) / 0.75 * 100)
    assert dm["terms"]["classify"] == pytest.approx(
        ((0.915 - 0.925) / 0.925 + 0) / 2 * 100)
    assert dm["reference"] == {"detect": {"map50": pytest.approx(0.75),
                                          "map50_95": pytest.approx(0.35)},
                               "classify": {"accuracy": pytest.approx(0.925),
                                            "macro_f1": pytest.approx(0.825)}}
    assert two["mean"] == pytest.approx(((0.735 - 0.75) / 0.75 + (0.915 - 0.925) / 0.925)
                                        / 2 * 100)
    assert two["reference"] == {"detect": pytest.approx(0.75), "classify": pytest.approx(0.925)}
    paths = write_report(tmp_path, baseline="dual", plots=False,
                         bootstrap=BootstrapSettings(0, 0))
    section = paths["md"].read_text().split("## Δm against")[1]
    row = next(line for line in section.splitlines() if line.startswith("| dual |"))
    assert f"{dm['mean']:+.2f} ± {dm['std']:.2f}" in row
    assert f"{two['mean']:+.2f} ± {two['std']:.2f}" in row
    csv_text = paths["csv"].read_text()
    assert "delta_m_two_mean" in csv_text.splitlines()[0]


def test_accuracy_first_verdicts_use_holm_over_the_comparisons_with_the_best(
        tmp_path: Path) -> None:
    from scipy import stats as sps
    vals = {"fixed": (0.60, 0.61, 0.625), "gradnorm": (0.671, 0.702, 0.713),
            "dual": (0.70, 0.72, 0.73), "pcgrad": (0.69, 0.715, 0.72)}
    for method, v in vals.items():
        for seed, x in enumerate(v):
            write_run(tmp_path, method, seed, metrics={
                "map50": x, "map50_95": x / 2, "accuracy": 0.8 + x / 10, "macro_f1": 0.7})
    rec = _summary(tmp_path)["recommendations"]["accuracy_first"]
    assert rec["score_name"] == "combined" and rec["top"] == "dual"
    # gradnorm and pcgrad are within seed noise of dual (below): no best method is named
    assert rec["method"] is None and rec["recommended"] is False
    assert rec["text"].startswith("Accuracy first: no method can be recommended: the lead of "
                                  "dual over pcgrad, gradnorm is within seed noise")
    top_map = float(np.mean(vals["dual"]))
    top_acc = 0.8 + top_map / 10

    def score(m: str) -> list[float]:
        return [0.5 * (x / top_map + (0.8 + x / 10) / top_acc) for x in vals[m]]

    others = [r["method"] for r in rec["ranking"][1:]]
    raw = [float(sps.ttest_rel(score(m), score("dual")).pvalue) for m in others]
    adj = holm_by_definition(raw)
    assert rec["holm_family_size"] == 3
    for row, p, pa in zip(rec["ranking"][1:], raw, adj, strict=True):
        assert row["vs_best"]["p"] == pytest.approx(p, rel=1e-6)
        assert row["vs_best"]["p_adj"] == pytest.approx(pa, rel=1e-6)
        assert (row["method"] in rec["worse"]) == (pa < 0.05)
    assert rec["worse"] == ["fixed"]
    for m in ("gradnorm", "pcgrad"):  # below 0.05 unadjusted (p ~0.03, ~0.04), not after Holm
        g = next(r for r in rec["ranking"] if r["method"] == m)["vs_best"]
        assert g["p"] < 0.05 <= g["p_adj"] and g["verdict_unadjusted"] == "worse"
        assert m in rec["indistinguishable"]
    assert "Holm-adjusted over the 3 comparison(s)" in rec["text"]


# --- the cluster bootstrap: frames of a clip are not independent -------------------------------

def test_clip_bootstrap_covers_the_truth_where_the_image_bootstrap_does_not() -> None:
    """28 clips of 7 near-identical frames (a clip's frames are all right with probability 0.6,
    then each frame flips with probability 0.05): the true accuracy is 0.6 * 0.95 + 0.4 * 0.05 =
    0.59. Over 200 simulated test sets the 95 % percentile interval of the clip bootstrap covers
    it at about the nominal rate; the image bootstrap's, too narrow, far less often."""
    from medmtl.evaluation.resample import resample_weights, view_metrics_weighted

    rng = np.random.default_rng(0)
    clips, frames, reps = 28, 7, 200
    truth = 0.6 * 0.95 + 0.4 * 0.05
    groups = [f"c{c}" for c in range(clips) for _ in range(frames)]
    n = clips * frames
    cover = {"clip": 0, "image": 0}
    width = {"clip": 0.0, "image": 0.0}
    for _ in range(reps):
        clip_ok = np.repeat(rng.uniform(size=clips) < 0.6, frames)
        right = clip_ok ^ (rng.uniform(size=n) < 0.05)
        y_true = np.zeros(n, dtype=np.int64)
        y_pred = np.where(right, 0, 1)
        for unit, g in (("clip", groups), ("image", None)):
            w = resample_weights(g, n, 1000, rng)
            acc = view_metrics_weighted(y_true, y_pred, 2, w)[:, 0]
            lo, hi = np.percentile(acc, [2.5, 97.5])
            cover[unit] += lo <= truth <= hi
            width[unit] += (hi - lo) / reps
    assert cover["clip"] / reps >= 0.88, cover
    assert cover["image"] / reps <= 0.75, cover
    assert width["clip"] > 1.8 * width["image"], width


def test_resample_weights_draw_whole_clusters() -> None:
    from medmtl.evaluation.resample import draws_of, resample_weights

    groups = ["a", "a", "a", "b", "c", "c"]
    w = resample_weights(groups, 6, 500, np.random.default_rng(3))
    assert w.shape == (500, 6)
    # a drawn cluster brings every one of its images, as often as it is drawn
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 1] == w[:, 2]).all() and (w[:, 4] == w[:, 5]).all()
    # as many clusters drawn as there are: 3 per resample
    assert (w[:, 0] + w[:, 3] + w[:, 4] == 3).all()
    assert sorted(draws_of(np.array([2, 0, 1]))) == [0, 0, 2]
    img = resample_weights(None, 6, 500, np.random.default_rng(3))
    assert (img.sum(1) == 6).all()


def test_the_report_resamples_clips_and_says_how_many(tmp_path: Path) -> None:
    """Test images named <patient>-<clip>.mp4-<frame>.jpg: 12 clips of 5 frames. The interval
    rests on 12 clips (unit clip); with 4 patients the patient bootstrap gives no interval and
    says why; the image unit reproduces the old behaviour."""
    n = 60
    gt = _gt(n)
    for im in gt["images"]:
        i = int(im["id"])
        im["file_name"] = f"P{i // 15}-clip{i // 5}.mp4-{i % 5}.jpg"
    views = ([i % 3 for i in range(n)], [(i % 3) if (i // 5) % 2 else 0 for i in range(n)])
    write_run(tmp_path, "fixed", 0, gt, _dets(gt, [i % 2 == 0 for i in range(n)]), views)
    write_run(tmp_path, "dual", 0, gt, _dets(gt, [True] * n), ([i % 3 for i in range(n)],
                                                                 [i % 3 for i in range(n)]))
    clip = _summary(tmp_path)
    b = clip["methods"]["dual"]["significance"]["accuracy"]["bootstrap"]
    assert b["available"] and (b["unit"], b["clusters"]) == ("clip", 12)
    assert clip["bootstrap"]["unit"] == "test clip"
    md = (tmp_path / "report.md").read_text()
    assert "(12 clips)" in md and "CI over test clips" not in md  # scored on val here
    assert "CI over val clips (bootstrap)" in md
    pat = _summary(tmp_path, BootstrapSettings(60, 400, 0, unit="patient"))
    b = pat["methods"]["dual"]["significance"]["accuracy"]["bootstrap"]
    assert not b["available"] and "only 4 test patient(s): too few" in b["reason"]
    img = _summary(tmp_path, BootstrapSettings(60, 400, 0, unit="image"))
    assert img["methods"]["dual"]["significance"]["accuracy"]["bootstrap"]["clusters"] == n


def test_a_classify_only_run_is_clustered_by_its_view_export(tmp_path: Path) -> None:
    """A classify-only run exports no ground_truth.json: its clips come from the file names in
    view_predictions.json (older exports: their `clip` field, clip unit only)."""
    n = 60
    names = [f"P{i // 15}-clip{i // 5}.mp4-{i % 5}.jpg" for i in range(n)]
    y_true = [i % 3 for i in range(n)]
    for method, y_pred in (("fixed", [(i % 3) if (i // 5) % 2 else 0 for i in range(n)]),
                           ("classify", y_true)):
        d = write_run(tmp_path, method, 0, views=(y_true, y_pred))
        probs = {i: np.eye(len(VIEWS))[p] * 0.8 + 0.2 / len(VIEWS) for i, p in enumerate(y_pred)}
        records = [SimpleNamespace(image_id=i, view=v, path=f"/data/{names[i]}")
                   for i, v in enumerate(y_true)]
        export = view_predictions(records, probs, VIEWS)
        assert export["images"][7]["file_name"] == names[7]
        (d / "eval" / "view_predictions.json").write_text(json.dumps(export))
    b = _summary(tmp_path)["methods"]["classify"]["significance"]["accuracy"]["bootstrap"]
    assert b["available"] and (b["unit"], b["clusters"]) == ("clip", 12), b
    pat = _summary(tmp_path, BootstrapSettings(60, 400, 0, unit="patient"))
    assert "only 4 test patient(s)" in pat["methods"]["classify"]["significance"]["accuracy"][
        "bootstrap"]["reason"]
    old = tmp_path / "runs" / "classify-s0" / "eval" / "view_predictions.json"
    data = json.loads(old.read_text())
    for row in data["images"]:
        del row["file_name"]
    old.write_text(json.dumps(data))
    b = _summary(tmp_path)["methods"]["classify"]["significance"]["accuracy"]["bootstrap"]
    assert b["available"] and b["clusters"] == 12
    pat = _summary(tmp_path, BootstrapSettings(60, 400, 0, unit="patient"))
    reason = pat["methods"]["classify"]["significance"]["accuracy"]["bootstrap"]["reason"]
    assert "view_predictions.json: no file names" in reason, reason
