"""Aggregation over seeds, paired t-tests (no scipy), relative differences and delta-m.

Every number produced here is computed from the runs' ``metrics.json``; nothing is estimated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medmtl.report.collect import METRIC_BY_KEY, METRICS, Run, extract

ALPHA = 0.05
NOT_ENOUGH = "not enough seeds to tell"
UNDEFINED = "undefined (non-finite value)"
# Weights are not "better" when larger: no verdict is drawn on them.
NO_VERDICT = {"weight_detect", "weight_classify"}
DEFAULT_DELTA_M = {"detect": "map50", "classify": "accuracy"}


# --- Student t distribution via the regularized incomplete beta function ----------------------

def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b) (modified Lentz's method)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
                    -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value P(|T| >= |t|)."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, int]:
    """Paired two-sided t-test of a - b: (t, p, df). Needs >= 2 pairs.

    With zero spread of the differences the statistic is +-inf (p = 0) unless every difference is
    zero (t = 0, p = 1).
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = d.size
    if n < 2:
        raise ValueError("a paired t-test needs at least 2 pairs")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    else:
        t = mean / (sd / math.sqrt(n))
    return t, t_two_sided_p(t, n - 1), n - 1


def compare(method: dict[int, float], baseline: dict[int, float], higher_is_better: bool,
            alpha: float = ALPHA) -> dict[str, Any]:
    """Verdict of a method against the baseline, pairing runs by seed."""
    seeds = sorted(set(method) & set(baseline))
    out: dict[str, Any] = {"n_pairs": len(seeds), "t": None, "p": None, "df": None,
                           "mean_diff": None}
    if seeds:
        out["mean_diff"] = float(np.mean([method[s] - baseline[s] for s in seeds]))
    if len(seeds) < 2:
        out["verdict"] = NOT_ENOUGH
        return out
    if not all(math.isfinite(v) for s in seeds for v in (method[s], baseline[s])):
        out["verdict"] = UNDEFINED  # a diverged run (NaN/inf) is never "indistinguishable"
        return out
    t, p, df = paired_ttest([method[s] for s in seeds], [baseline[s] for s in seeds])
    out.update(t=None if math.isinf(t) else t, p=p, df=df)
    if p < alpha and out["mean_diff"] != 0.0:
        up = out["mean_diff"] > 0
        out["verdict"] = "better" if up == higher_is_better else "worse"
    else:
        out["verdict"] = "indistinguishable"
    return out


# --- aggregation -------------------------------------------------------------------------------

def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1; None with fewer than two values)."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def per_seed(runs: Sequence[Run], method: str, key: str) -> dict[int, float]:
    out: dict[int, float] = {}
    for r in runs:
        if r.method == method and r.metrics is not None:
            v = extract(r.metrics)[key]
            if v is not None:
                out[r.seed] = v
    return out


def is_joint(runs: Sequence[Run], method: str) -> bool:
    """Both tasks evaluated in every finished run of the method."""
    done = [r for r in runs if r.method == method and r.metrics is not None]
    return bool(done) and all(r.metrics.get("detection") is not None  # type: ignore[union-attr]
                              and r.metrics.get("classification") is not None  # type: ignore[union-attr]
                              for r in done)


def method_order(methods: Sequence[str]) -> list[str]:
    """The presets' order (original, fixed, ..., detect, classify), unknown names after."""
    from medmtl.methods import method_names

    known = method_names()
    return sorted(set(methods), key=lambda m: (known.index(m) if m in known else len(known), m))


def choose_baseline(runs: Sequence[Run], baseline: str | None = None) -> str | None:
    methods = method_order([r.method for r in runs if r.finished])
    if baseline is not None:
        if baseline not in methods:
            raise ValueError(f"baseline {baseline!r} has no finished runs; "
                             f"methods: {', '.join(methods) or '(none)'}")
        return baseline
    if "fixed" in methods:
        return "fixed"
    joint = [m for m in methods if is_joint(runs, m)]
    return (joint or methods or [None])[0]


def delta_m(runs: Sequence[Run], method: str,
            references: dict[str, str] | None = None) -> dict[str, Any]:
    """Delta-m (Maninis et al. 2019) of a joint method against the single-task references.

    Δm = (1/T) Σ_t (-1)^{l_t} (M_m,t − M_b,t) / M_b,t × 100, with M_b,t the mean over the
    single-task runs ("detect" / "classify") and l_t = 1 where lower is better. Per seed, the
    method's run is compared with the same reference means, so the mean of the per-seed values
    equals Δm of the means.
    """
    references = references or DEFAULT_DELTA_M
    out: dict[str, Any] = {"available": False, "metrics": dict(references), "mean": None,
                           "std": None, "per_seed": {}, "terms": {}, "reference": {},
                           "reason": None}
    ref_means: dict[str, float] = {}
    for task, key in references.items():
        vals = list(per_seed(runs, task, key).values())
        if not vals:
            out["reason"] = (f"no finished single-task '{task}' runs with {key}; "
                             "Δm needs them as reference")
            return out
        ref_means[task] = float(np.mean(vals))
        if ref_means[task] == 0.0:
            out["reason"] = f"single-task '{task}' reference {key} is 0"
            return out
    out["reference"] = ref_means
    per_task = {task: per_seed(runs, method, key) for task, key in references.items()}
    seeds = sorted(set.intersection(*(set(v) for v in per_task.values())))
    if not seeds:
        out["reason"] = f"'{method}' has no finished run with every reference metric"
        return out
    terms_seed: dict[str, list[float]] = {t: [] for t in references}
    values: list[float] = []
    for s in seeds:
        terms = []
        for task, key in references.items():
            sign = 1.0 if METRIC_BY_KEY[key].higher_is_better else -1.0
            term = sign * (per_task[task][s] - ref_means[task]) / ref_means[task] * 100.0
            terms_seed[task].append(term)
            terms.append(term)
        values.append(float(np.mean(terms)))
        out["per_seed"][str(s)] = values[-1]
    out["mean"], out["std"] = mean_std(values)
    out["terms"] = {t: float(np.mean(v)) for t, v in terms_seed.items()}
    out["available"] = True
    return out


def aggregate(runs: Sequence[Run], baseline: str | None = None, alpha: float = ALPHA,
              delta_m_metrics: dict[str, str] | None = None) -> dict[str, Any]:
    """Per-method aggregates, relative differences, verdicts and Δm."""
    base = choose_baseline(runs, baseline)
    methods = method_order([r.method for r in runs])
    refs = dict(delta_m_metrics or DEFAULT_DELTA_M)
    bad = {t: k for t, k in refs.items() if t not in DEFAULT_DELTA_M or k not in METRIC_BY_KEY}
    if bad or not refs:
        raise ValueError(f"delta_m_metrics must map tasks {tuple(DEFAULT_DELTA_M)} to metric "
                         f"keys ({', '.join(METRIC_BY_KEY)}); got {refs!r}")
    base_seed = {m.key: per_seed(runs, base, m.key) for m in METRICS} if base else {}
    out: dict[str, Any] = {}
    for method in methods:
        mine = [r for r in runs if r.method == method]
        done = [r for r in mine if r.finished]
        entry: dict[str, Any] = {
            "seeds": sorted(r.seed for r in done),
            "unfinished_seeds": sorted(r.seed for r in mine if not r.finished),
            "n": len(done), "joint": is_joint(runs, method),
            "arch": next((r.arch for r in mine if r.arch), None),
            "metrics": {}, "relative_to_baseline_pct": {}, "significance": {}}
        for m in METRICS:
            vals = per_seed(runs, method, m.key)
            mean, std = mean_std(list(vals.values()))
            entry["metrics"][m.key] = {"mean": mean, "std": std, "n": len(vals),
                                       "per_seed": {str(s): v for s, v in sorted(vals.items())}}
            bmean = mean_std(list(base_seed.get(m.key, {}).values()))[0]
            rel = None
            if mean is not None and bmean not in (None, 0.0) and method != base:
                rel = (mean - bmean) / abs(bmean) * 100.0  # type: ignore[operator]
            entry["relative_to_baseline_pct"][m.key] = rel
            if method != base and vals and base_seed.get(m.key) and m.key not in NO_VERDICT:
                entry["significance"][m.key] = compare(vals, base_seed[m.key],
                                                       m.higher_is_better, alpha)
        entry["delta_m"] = (delta_m(runs, method, refs) if entry["joint"]
                            else {"available": False, "reason": "single-task reference"
                                  if method in refs else "not a joint method"})
        out[method] = entry
    return {"baseline": base, "alpha": alpha, "delta_m_metrics": refs, "methods": out}


# --- recommendations (templates filled with the numbers above; no hand-picked winner) ----------

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
    acc = accuracy_first(runs, agg, alpha)
    return {"accuracy_first": acc, "efficiency_first": efficiency_first(runs, agg, acc)}
