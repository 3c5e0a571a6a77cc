"""Recommendations: templates filled with the aggregated numbers; no hand-picked winner.

Two scenarios, each computed from :func:`medmtl.report.stats.aggregate`'s output and the runs:
:func:`accuracy_first` ranks the joint methods by Δm (or, without single-task references, by a
combined mAP@0.5 / view-accuracy score) and sorts the others by a paired t-test against the best
one; :func:`efficiency_first` picks the most mAP@0.5 per inference millisecond and states the
trade-off against the accuracy-first choice. Re-exported by :mod:`medmtl.report.stats`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from medmtl.report.collect import Run
from medmtl.report.significance import ALPHA, NOT_ENOUGH, compare, mean_std, per_seed

__all__ = ["accuracy_first", "efficiency_first", "recommend"]


def _fmt_list(items: Sequence[str]) -> str:
    return ", ".join(items) if items else "none"


def _ranked(scores: dict[str, dict[int, float]]) -> list[dict[str, Any]]:
    rows = []
    for m, vals in scores.items():
        mean, std = mean_std(list(vals.values()))
        rows.append({"method": m, "mean": mean, "std": std, "n": len(vals)})
    return sorted(rows, key=lambda r: -r["mean"])  # stable: ties keep method order


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
        return rec
    if all(methods[m]["delta_m"].get("available") for m in cands):
        rec["score_name"] = "delta_m"
        scores = {m: {int(s): v for s, v in methods[m]["delta_m"]["per_seed"].items()}
                  for m in cands}
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
        what = "combined score (mean of mAP@0.5 and view accuracy, each divided by the best mean)"
        rec["decimals"] = 3
    rec["excluded_non_finite"] = [m for m, v in scores.items()
                                  if not all(math.isfinite(x) for x in v.values())]
    scores = {m: v for m, v in scores.items() if v and m not in rec["excluded_non_finite"]}
    if not scores:
        rec["text"] = "Accuracy first: no joint method has finite scores to compare."
        return rec
    rec["ranking"] = _ranked(scores)
    best = rec["ranking"][0]["method"]
    rec["method"] = best
    for row in rec["ranking"][1:]:
        verdict = compare(scores[row["method"]], scores[best], True, alpha)
        row["vs_best"] = verdict
        bucket = {"worse": "worse", "indistinguishable": "indistinguishable",
                  NOT_ENOUGH: "not_enough_seeds"}.get(verdict["verdict"], "indistinguishable")
        rec[bucket].append(row["method"])
    top, nd = rec["ranking"][0], rec["decimals"]
    std = "—" if top["std"] is None else f"{top['std']:.{nd}f}"
    mm = methods[best]["metrics"]
    rec["text"] = (
        f"Accuracy first (diagnosis): {best} has the highest {what}: {top['mean']:.{nd}f} ± {std} "
        f"over {top['n']} seed(s) (mAP@0.5 {mm['map50']['mean']:.3f}, view accuracy "
        f"{mm['accuracy']['mean']:.3f}). Statistically indistinguishable from it (paired t-test "
        f"across seeds, α = {alpha}): {_fmt_list(rec['indistinguishable'])}. Significantly "
        f"lower: {_fmt_list(rec['worse'])}. Not enough paired seeds to tell: "
        f"{_fmt_list(rec['not_enough_seeds'])}.")
    if rec["excluded_non_finite"]:
        rec["text"] += (" Left out for non-finite (NaN/inf) scores: "
                        f"{_fmt_list(rec['excluded_non_finite'])}.")
    return rec


def _speed_phrase(speedup: float) -> str:
    if speedup > 1.0:
        return f"{speedup:.2f}× faster than"
    if speedup < 1.0:
        return f"{1.0 / speedup:.2f}× slower than"
    return "as fast as"


def _change_phrase(points: float, what: str) -> str:
    if points < 0:
        return f"a cost of {-points:.1f} {what} points"
    if points > 0:
        return f"a gain of {points:.1f} {what} points"
    return f"no change in {what}"


def efficiency_first(runs: Sequence[Run], agg: dict[str, Any],
                     accuracy_rec: dict[str, Any]) -> dict[str, Any]:
    """Highest mAP@0.5 per inference millisecond among joint methods, with the trade-off against
    the accuracy-first choice."""
    rows = []
    for m, e in agg["methods"].items():
        mm = e["metrics"]
        mp, ms, mb = mm["map50"]["mean"], mm["ms_per_image"]["mean"], mm["weights_mb"]["mean"]
        if not e["joint"] or mp is None or not ms or not math.isfinite(mp / ms):
            continue
        rows.append({"method": m, "map50": mp, "accuracy": mm["accuracy"]["mean"],
                     "ms_per_image": ms, "weights_mb": mb, "map50_per_ms": mp / ms,
                     "map50_per_mb": (mp / mb) if mb else None})
    rows.sort(key=lambda r: -r["map50_per_ms"])
    devices = sorted({str((r.metrics.get("efficiency") or {}).get("latency_device"))
                      for r in runs if r.metrics and (r.metrics.get("efficiency") or {})
                      .get("latency_device") is not None})
    rec: dict[str, Any] = {"scenario": "efficiency_first", "criterion": "map50_per_ms",
                           "method": None, "ranking": rows, "latency_devices": devices,
                           "tradeoff": None}
    if not rows:
        rec["text"] = ("Efficiency first: no finished joint runs with inference latency "
                       "(efficiency.ms_per_image) to compare.")
        return rec
    pick = rows[0]
    rec["method"] = pick["method"]
    dev = devices[0] if len(devices) == 1 else "mixed devices"
    mb = "n/a" if pick["weights_mb"] is None else f"{pick['weights_mb']:.1f} MB"
    acc = "n/a" if pick["accuracy"] is None else f"{pick['accuracy']:.3f}"
    text = (f"Efficiency first (real time, edge devices): {pick['method']} gives the most "
            f"mAP@0.5 per inference millisecond ({pick['map50_per_ms']:.4f} per ms: mAP@0.5 "
            f"{pick['map50']:.3f}, view accuracy {acc}, {pick['ms_per_image']:.1f} ms/image on "
            f"{dev}, weights {mb}).")
    per_mb = [r for r in rows if r["map50_per_mb"] is not None]
    if per_mb:
        top_mb = max(per_mb, key=lambda r: r["map50_per_mb"])
        rec["best_per_mb"] = top_mb["method"]
        text += (f" Per MB of weights, {top_mb['method']} gives the most mAP@0.5 "
                 f"({top_mb['map50_per_mb']:.4f} per MB).")
    ref = next((r for r in rows if r["method"] == accuracy_rec.get("method")), None)
    if ref is not None and ref["method"] != pick["method"]:
        speedup = ref["ms_per_image"] / pick["ms_per_image"]
        d_map = (pick["map50"] - ref["map50"]) * 100.0
        d_acc = (None if pick["accuracy"] is None or ref["accuracy"] is None
                 else (pick["accuracy"] - ref["accuracy"]) * 100.0)
        rec["tradeoff"] = {"method": pick["method"], "reference": ref["method"],
                           "speedup": speedup, "map50_diff_points": d_map,
                           "accuracy_diff_points": d_acc}
        text += (f" Trade-off: {pick['method']} is {_speed_phrase(speedup)} {ref['method']} "
                 f"({pick['ms_per_image']:.1f} vs {ref['ms_per_image']:.1f} ms/image) at "
                 f"{_change_phrase(d_map, 'mAP@0.5')}")
        text += "." if d_acc is None else f" and {_change_phrase(d_acc, 'view-accuracy')}."
    elif ref is not None:
        text += " It is also the accuracy-first choice, so there is no trade-off between them."
    if len(devices) > 1:
        text += (f" Caution: latencies were measured on different devices "
                 f"({', '.join(devices)}), so speed comparisons are not like for like.")
    rec["text"] = text
    return rec


def recommend(runs: Sequence[Run], agg: dict[str, Any], alpha: float = ALPHA) -> dict[str, Any]:
    """Both scenarios; the efficiency-first text states its trade-off against accuracy-first."""
    acc = accuracy_first(runs, agg, alpha)
    return {"accuracy_first": acc, "efficiency_first": efficiency_first(runs, agg, acc)}
