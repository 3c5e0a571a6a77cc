"""Recommendations: templates filled with the aggregated numbers; no hand-picked winner.

Computed from :func:`medmtl.report.stats.aggregate`'s output and the runs:
:func:`accuracy_first` ranks the joint methods by Δm (or, without single-task references, by a
combined mAP@0.5 / view-accuracy score) and sorts the others by a paired t-test against the best
one (Holm-adjusted over those comparisons); :func:`efficiency_first` gives the Pareto front of Δm against end-to-end latency
(:mod:`medmtl.report.pareto`) and picks the fastest Pareto-optimal method whose Δm is within a
tolerance of the best; :func:`budget_advice` names the most accurate method within a latency
budget. Re-exported by :mod:`medmtl.report.stats`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from medmtl.report.collect import Run
from medmtl.report.evidence import accuracy_gaps, apply_evidence, withheld_text
from medmtl.report.pareto import (
    DEFAULT_RUNTIME,
    analyse,
    budget_pick,
    pareto_front,
    points_of,
    tolerance_pick,
)
from medmtl.report.significance import (
    ALPHA,
    NOT_ENOUGH,
    apply_holm,
    block_seeds,
    compare,
    mean_std,
    per_seed,
)

__all__ = ["DM_TOLERANCE", "accuracy_first", "budget_advice", "efficiency_first", "recommend"]

DM_TOLERANCE = 1.0  # Δm points the efficiency pick may give up against the best on the front


def _fmt_list(items: Sequence[str]) -> str:
    return ", ".join(items) if items else "none"


def _ranked(scores: dict[str, dict[int, float]]) -> list[dict[str, Any]]:
    rows = []
    for m, vals in scores.items():
        mean, std = mean_std(list(vals.values()))
        rows.append({"method": m, "mean": mean, "std": std, "n": len(vals)})
    return sorted(rows, key=lambda r: -r["mean"])  # stable: ties keep method order


def _choose(methods: dict[str, Any], rec: dict[str, Any], cands: list[str]) -> str:
    """The method the advice is about: the highest mean Δm on val when the runs hold out a test
    split (so that the split that confirms it is not the one that chose it), else the top of
    the scored ranking. Sets ``chosen_on``, ``confirmed_on`` and ``val_ranking``."""
    val = {m: block_seeds(methods[m], "delta_m_val") for m in cands}
    if all((methods[m].get("delta_m_val") or {}).get("available") for m in cands) \
            and all(v and all(math.isfinite(x) for x in v.values()) for v in val.values()):
        rec["val_ranking"] = _ranked(val)
        rec["chosen_on"], rec["confirmed_on"] = "val", "test"
        return str(rec["val_ranking"][0]["method"])
    rec["val_ranking"] = []
    rec["chosen_on"], rec["confirmed_on"] = "val", None
    return str(rec["ranking"][0]["method"])


def accuracy_first(runs: Sequence[Run], agg: dict[str, Any], alpha: float = ALPHA) -> dict[str, Any]:
    """Best combined score among joint methods: Δm when available for all, else the mean of
    mAP@0.5 and view accuracy each divided by the best method mean."""
    methods = agg["methods"]
    cands = [m for m, e in methods.items() if e["joint"] and e["n"] > 0]
    rec: dict[str, Any] = {"scenario": "accuracy_first", "method": None, "score_name": None,
                           "ranking": [], "indistinguishable": [], "worse": [],
                           "not_enough_seeds": []}
    if not cands:
        rec["text"] = "Accuracy first: no finished joint (detect + classify) runs to compare."
        return _judged(rec, accuracy_gaps(runs, agg, rec))
    if all(methods[m]["delta_m"].get("available") for m in cands):
        rec["score_name"] = "delta_m"
        scores = {m: block_seeds(methods[m]) for m in cands}
        what = "Δm against the single-task models (%)"
        rec["decimals"] = 2
    else:
        rec["score_name"] = "combined"
        top_map = max(methods[m]["metrics"]["map50"]["mean"] or 0.0 for m in cands) or 1.0
        top_acc = max(methods[m]["metrics"]["accuracy"]["mean"] or 0.0 for m in cands) or 1.0
        scores = {}
        for m in cands:
            mp, ac = per_seed(runs, m, "map50"), per_seed(runs, m, "accuracy")
            scores[m] = {s: 0.5 * (mp[s] / top_map + ac[s] / top_acc) for s in mp if s in ac}
        rec["normalisers"] = {"map50": top_map, "accuracy": top_acc}
        what = ("combined score (mean of mAP@0.5 and view accuracy, each divided by the highest "
                "method mean)")
        rec["decimals"] = 3
    rec["excluded_non_finite"] = [m for m, v in scores.items()
                                  if not all(math.isfinite(x) for x in v.values())]
    scores = {m: v for m, v in scores.items() if v and m not in rec["excluded_non_finite"]}
    if not scores:
        rec["text"] = "Accuracy first: no joint method has finite scores to compare."
        return _judged(rec, accuracy_gaps(runs, agg, rec))
    rec["ranking"] = _ranked(scores)
    best = _choose(methods, rec, list(scores))
    rec["method"] = rec["chosen"] = best
    others = [row for row in rec["ranking"] if row["method"] != best]
    for row in others:
        row["vs_best"] = compare(scores[row["method"]], scores[best], True, alpha)
    # the comparisons with the chosen method are a family of their own: Holm over them
    rec["holm_family_size"] = apply_holm([(row["vs_best"], True) for row in others], alpha)
    for row in others:
        bucket = {"worse": "worse", "indistinguishable": "indistinguishable",
                  NOT_ENOUGH: "not_enough_seeds"}.get(row["vs_best"]["verdict"],
                                                      "indistinguishable")
        rec[bucket].append(row["method"])
    top = next(row for row in rec["ranking"] if row["method"] == best)
    nd = rec["decimals"]
    std = "" if top["std"] is None else f" ± {top['std']:.{nd}f}"
    mm = methods[best]["metrics"]
    split = rec["confirmed_on"] or rec["chosen_on"]
    why = accuracy_gaps(runs, agg, rec)  # name the best method only on evidence
    # a val choice is "confirmed on test" when the evidence holds there, else only "tested"
    how = (f"chosen on val (highest Δm there: {rec['val_ranking'][0]['mean']:+.2f}), "
           f"{'tested' if why else 'confirmed'} on test: " if rec["confirmed_on"] else
           f"chosen and scored on the same split ({rec['chosen_on']}; not confirmed on held-out "
           "data): ")
    advice = (
        f"{best}, {how}{what} on {split} "
        f"{top['mean']:.{nd}f}{std} over {top['n']} seed(s) (mAP@0.5 {mm['map50']['mean']:.3f}, "
        f"view accuracy {mm['accuracy']['mean']:.3f}). Statistically indistinguishable from it "
        f"on {split} (paired t-test across seeds, Holm-adjusted over the "
        f"{rec['holm_family_size']} comparison(s) with it, α = {alpha}): "
        f"{_fmt_list(rec['indistinguishable'])}. Significantly "
        f"lower: {_fmt_list(rec['worse'])}. Not enough paired seeds to tell: "
        f"{_fmt_list(rec['not_enough_seeds'])}.")
    if rec["excluded_non_finite"]:
        advice += (" Left out for non-finite (NaN/inf) scores: "
                   f"{_fmt_list(rec['excluded_non_finite'])}.")
    if why:
        rec["method"] = None
    rec["text"] = withheld_text(why, advice) if why else f"Accuracy first (diagnosis): {advice}"
    return _judged(rec, why)


def _judged(rec: dict[str, Any], why: list[str]) -> dict[str, Any]:
    """The evidence's verdict on the accuracy advice: ``top`` keeps the chosen method (the top
    score) whether or not it is recommended; ``why_no_pick`` says why not."""
    rec["top"] = rec.get("chosen")
    rec["recommended"] = rec["top"] is not None and not why
    rec["why_no_pick"] = why
    return rec


def fmt_latency(ms: float) -> str:
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _ratios(runs: Sequence[Run], agg: dict[str, Any]) -> list[dict[str, Any]]:
    """mAP@0.5 per forward-only ms and per MB of each joint method (the Efficiency table's
    columns; no longer a criterion: the ratio rewards the smallest model whatever its accuracy)."""
    rows = []
    for m, e in agg["methods"].items():
        mm = e["metrics"]
        mp, ms, mb = mm["map50"]["mean"], mm["ms_per_image"]["mean"], mm["weights_mb"]["mean"]
        if not e["joint"] or mp is None or not ms or not math.isfinite(mp / ms):
            continue
        rows.append({"method": m, "map50": mp, "accuracy": mm["accuracy"]["mean"],
                     "ms_per_image": ms, "weights_mb": mb, "map50_per_ms": mp / ms,
                     "map50_per_mb": (mp / mb) if mb else None})
    return sorted(rows, key=lambda r: -r["map50_per_ms"])


def _stat_phrase(accuracy_rec: dict[str, Any], method: str, best: str) -> str:
    """What the paired t-test of accuracy-first says about `method` against `best` (Δm only)."""
    if accuracy_rec.get("score_name") != "delta_m" or \
            accuracy_rec.get("top", accuracy_rec.get("method")) != best:
        return ""
    for key, words in (("indistinguishable", "statistically indistinguishable from it"),
                       ("worse", "significantly lower"),
                       ("not_enough_seeds", "not enough paired seeds to tell")):
        if method in accuracy_rec.get(key, []):
            return f" (paired t-test of the Δm per seed: {words})"
    return ""


def efficiency_first(runs: Sequence[Run], agg: dict[str, Any], accuracy_rec: dict[str, Any],
                     deployment: dict[str, Any] | None = None,
                     tolerance: float = DM_TOLERANCE) -> dict[str, Any]:
    """The Pareto front of Δm against end-to-end latency, fastest first, and its pick: the
    fastest Pareto-optimal method whose Δm is at most ``tolerance`` points below the best."""
    dep = deployment if deployment is not None else analyse(runs, agg)
    label = dep["runtime_label"]
    devices = sorted({str((r.metrics.get("efficiency") or {}).get("latency_device"))
                      for r in runs if r.metrics and (r.metrics.get("efficiency") or {})
                      .get("latency_device") is not None})
    rec: dict[str, Any] = {"scenario": "efficiency_first", "criterion": "pareto_delta_m_latency",
                           "method": None, "runtime": dep["runtime"],
                           "tolerance_delta_m": tolerance, "front": list(dep["front"]),
                           "ranking": _ratios(runs, agg), "latency_devices": devices,
                           "tradeoff": None}
    if not dep["points"]:
        rec["text"] = (f"Efficiency first (deployment): no joint method has both a Δm and an "
                       f"end-to-end {label} latency, so there is no Pareto front to advise from "
                       "(see the Deployment section for what is missing).")
        return rec
    front = pareto_front(points_of(dep))
    pick = tolerance_pick(front, tolerance)
    assert pick is not None
    best = min(front, key=lambda p: (-p.accuracy, p.latency, p.method))
    rec["method"] = pick.method
    listing = ", ".join(f"{p.method} (Δm {p.accuracy:+.2f} %, {fmt_latency(p.latency)} ms)"
                        for p in front)
    text = (f"Efficiency first (deployment): the Pareto front of Δm against end-to-end latency "
            f"({label}), fastest first: {listing}. Pick: {pick.method}, the fastest "
            f"Pareto-optimal method whose Δm is within {tolerance:g} point(s) of the best on the "
            "front, so that speed is bought with at most that much accuracy; a larger trade-off "
            "is a choice to make from the front itself.")
    if pick.method != best.method:
        speedup = best.latency / pick.latency
        rec["tradeoff"] = {"method": pick.method, "reference": best.method, "speedup": speedup,
                           "delta_m_diff_points": pick.accuracy - best.accuracy}
        text += (f" It is {speedup:.2f}× faster than {best.method} ({fmt_latency(pick.latency)} "
                 f"vs {fmt_latency(best.latency)} ms) at a Δm cost of "
                 f"{best.accuracy - pick.accuracy:.2f} points"
                 f"{_stat_phrase(accuracy_rec, pick.method, best.method)}.")
    elif len(front) > 1:
        text += (" No faster method on the front comes within the tolerance, so the pick is also "
                 "the most accurate method.")
    else:
        text += " It is the only Pareto-optimal method: as accurate and as fast as any other."
    if len(dep["threads"]) > 1 or len(dep["includes"]) > 1:
        text += (" Caution: the runs' end-to-end latencies were not measured alike (thread "
                 "counts or frames differ); re-time them together with `medmtl report DIR "
                 "--retime`.")
    rec["text"] = text
    return rec


def budget_advice(deployment: dict[str, Any], budget_ms: float) -> dict[str, Any]:
    """The most accurate method (highest Δm) whose end-to-end latency median is within
    ``budget_ms``, or the statement that none is."""
    label = deployment["runtime_label"]
    rec: dict[str, Any] = {"scenario": "latency_budget", "budget_ms": budget_ms,
                           "runtime": deployment["runtime"], "method": None, "within": []}
    head = f"Latency budget {budget_ms:g} ms ({label}, end-to-end median per image)"
    pts = points_of(deployment)
    if not pts:
        rec["text"] = (f"{head}: no joint method has both a Δm and an end-to-end latency to "
                       "check against it.")
        return rec
    rec["within"] = [p.method for p in sorted(pts, key=lambda p: p.latency)
                     if p.latency <= budget_ms]
    pick = budget_pick(pts, budget_ms)
    if pick is None:
        fast = min(pts, key=lambda p: (p.latency, -p.accuracy))
        rec["text"] = (f"{head}: no method is within it; the fastest is {fast.method} at "
                       f"{fmt_latency(fast.latency)} ms (Δm {fast.accuracy:+.2f} %).")
        return rec
    rec["method"] = pick.method
    text = (f"{head}: {pick.method} is the most accurate method within it (Δm "
            f"{pick.accuracy:+.2f} %, {fmt_latency(pick.latency)} ms); "
            f"{len(rec['within'])} of {len(pts)} method(s) fit.")
    if pick.latency + pick.noise > budget_ms:
        text += (f" Its latency is within its noise band (± {fmt_latency(pick.noise)} ms) of "
                 "the budget: re-time it on the target machine before relying on the margin.")
    rec["text"] = text
    return rec


def recommend(runs: Sequence[Run], agg: dict[str, Any], alpha: float = ALPHA,
              deployment: dict[str, Any] | None = None, latency_budget_ms: float | None = None,
              tolerance: float = DM_TOLERANCE, runtime: str = DEFAULT_RUNTIME) -> dict[str, Any]:
    """Accuracy first, efficiency first (the Pareto advice) and, given a budget, the most
    accurate method within it (``latency_budget``, None without a budget); each pick only where
    the evidence supports it (`medmtl.report.evidence`)."""
    acc = accuracy_first(runs, agg, alpha)  # names a best method only on evidence
    dep = deployment if deployment is not None else analyse(runs, agg, runtime)
    eff = efficiency_first(runs, agg, acc, dep, tolerance)
    budget = None if latency_budget_ms is None else budget_advice(dep, latency_budget_ms)
    apply_evidence(agg, eff, budget)  # and the other picks only with the seeds
    return {"accuracy_first": acc, "efficiency_first": eff, "latency_budget": budget}
