"""The report's statistics as document blocks (see :mod:`medmtl.report.render`): verdict cells,
the Δm table, the differences against the baseline with both intervals, and the notes saying
exactly what was computed. Every text is a template filled with the summary's numbers."""

from __future__ import annotations

from typing import Any

from medmtl.report.collect import METRIC_BY_KEY

__all__ = ["delta_m_blocks", "differences_blocks", "scored_split", "stats_notes",
           "verdict_cell"]

Block = tuple[Any, ...]


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _p_is(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def verdict_cell(sig: dict[str, Any] | None) -> str:
    """'better (Holm p=0.012, p=0.004)'; the raw p alone outside a corrected family."""
    if not sig:
        return "—"
    if sig.get("p") is None:
        return sig["verdict"]
    if sig.get("p_adj") is not None:
        return f"{sig['verdict']} (Holm {_p_is(sig['p_adj'])}, {_p_is(sig['p'])})"
    return f"{sig['verdict']} ({_p_is(sig['p'])})"


def _labels(keys: Any) -> str:
    keys = [keys] if isinstance(keys, str) else list(keys)
    return ", ".join(METRIC_BY_KEY[k].label for k in keys)


def stats_notes(summary: dict[str, Any]) -> list[str]:
    """The how-to-read items on verdicts, intervals and Δm."""
    mc, boot, conf = summary["multiple_comparisons"], summary["bootstrap"], summary["confidence"]
    refs, main = summary["delta_m_metrics"], summary["delta_m_main_metrics"]
    pct = f"{conf * 100:g} %"
    return [
        "Verdicts pair the runs of a method and of the baseline by seed and run a two-sided "
        "paired t-test (scipy.stats.ttest_rel). The p-values of the family — every method "
        f"other than the baseline × {_labels(mc['metrics'])}, where at least 2 paired seeds "
        f"give a p-value: {mc['family_size']} test(s) here — are adjusted with Holm's step-down "
        f"correction; 'better' / 'worse' only when the Holm-adjusted p < α = "
        f"{summary['alpha']}, else 'indistinguishable' (the difference does not exceed seed "
        "noise); with fewer than 2 paired seeds: 'not enough seeds to tell'. Cells give the "
        "adjusted and the raw p; summary.json keeps both (p_adj, p).",
        f"Each difference (method − baseline, mean over the paired seeds) has two {pct} "
        "intervals, each for that comparison alone (not simultaneous): over seeds, the t "
        "interval of the per-seed differences (≥ 2 paired seeds); over the scored "
        f"({scored_split(summary)}) set, a paired {_unit(boot)} bootstrap — whole "
        f"{_unit(boot)}s are drawn with replacement (frames of one clip are near-copies, not "
        "independent samples; the same draws for both methods and every seed; no interval "
        f"with fewer than {boot.get('min_clusters', 0)} {_unit(boot)}s), each run's metric is "
        "recomputed from its exported "
        "predictions (eval/predictions.json + ground_truth.json with faster-coco-eval; "
        f"eval/view_predictions.json), {boot['resamples_map']} resamples for mAP, "
        f"{boot['resamples_view']} for the view metrics, seed {boot['seed']}, percentile "
        "interval. The bootstrap interval reflects which clusters were drawn, for the "
        "trained models at hand, and exists with a single seed; it says nothing about seed "
        "noise.",
        "Δm (Maninis et al. 2019) = (1/K) Σ_k (−1)^l_k (M_method,k − M_single,k) / M_single,k "
        f"× 100 over K metrics: the main Δm over the K = 4 metrics {_labels(main['detect'])} "
        f"(single-task 'detect' runs as reference) and {_labels(main['classify'])} "
        f"('classify' runs); the second column over K = 2, {_labels(refs['detect'])} and "
        f"{_labels(refs['classify'])}. References are averaged over their seeds; l_k = 1 when "
        "lower is better. Δm > 0: the joint model beats the separate single-task models on "
        "average. Without single-task runs Δm is unavailable.",
    ]


def _unit(boot: dict[str, Any]) -> str:
    """The bootstrap's unit word ("clip", "patient", "image")."""
    return str(boot.get("unit", "test image")).removeprefix("test ")


def _dm_cell(dm: dict[str, Any]) -> str:
    if not dm.get("available"):
        return "unavailable"
    std = "" if dm["std"] is None else f" ± {dm['std']:.2f}"
    return f"{dm['mean']:+.2f}{std}"


def delta_m_blocks(summary: dict[str, Any]) -> list[Block]:
    refs, main = summary["delta_m_metrics"], summary["delta_m_main_metrics"]
    rows = []
    for m, e in summary["methods"].items():
        if not e["joint"]:
            continue
        dm, two = e["delta_m"], e.get("delta_m_two") or {}
        terms = ([f"{dm['terms'][t]:+.2f}" for t in ("detect", "classify")]
                 if dm.get("available") else ["n/a", "n/a"])
        note = "" if dm.get("available") else dm.get("reason") or ""
        rows.append([m, _dm_cell(dm), _dm_cell(two), *terms, note])
    return [("table", ["method", "Δm, 4 metrics (%)",
                       f"Δm, {_labels(refs['detect'])} + {_labels(refs['classify'])} (%)",
                       f"detect term ({_labels(main['detect'])}; %)",
                       f"classify term ({_labels(main['classify'])}; %)", "note"], rows)]


def scored_split(summary: dict[str, Any]) -> str:
    """The split the scores (and so every interval) come from: "test", "val", or "test/val"
    when the runs differ (the report warns about that)."""
    return "/".join(sorted(summary.get("scored_on") or [], reverse=True)) or "val"


def _interval(lo: float | None, hi: float | None) -> str:
    return "n/a" if lo is None or hi is None else f"[{lo:+.3f}, {hi:+.3f}]"


def differences_blocks(summary: dict[str, Any]) -> list[Block]:
    """One row per method x family metric: difference, both intervals, p, Holm p, verdict."""
    base, mc = summary["baseline"], summary["multiple_comparisons"]
    pct = f"{summary['confidence'] * 100:g} %"
    rows, reasons = [], {}
    for m, e in summary["methods"].items():
        if m == base or not e["n"]:
            continue
        for key in mc["metrics"]:
            sig = e["significance"].get(key)
            if not sig:
                continue
            boot = sig.get("bootstrap")
            if boot is None:
                bcell = "—"
            elif boot["available"]:
                bcell = (_interval(boot["ci_low"], boot["ci_high"])
                         + (f" ({boot['clusters']} {boot['unit']}s)" if boot.get("clusters")
                            else ""))
            else:
                bcell = "n/a"
                where = reasons.setdefault(boot["reason"], [])
                where += [] if m in where else [m]
            diff = sig["mean_diff"]
            rows.append([m, METRIC_BY_KEY[key].label,
                         "n/a" if diff is None else f"{diff:+.3f}",
                         _interval(sig["ci_low"], sig["ci_high"]), bcell,
                         "n/a" if sig["p"] is None else _p(sig["p"]),
                         "n/a" if sig.get("p_adj") is None else _p(sig["p_adj"]),
                         sig["verdict"]])
    split = scored_split(summary)
    unit = _unit(summary.get("bootstrap") or {})
    out: list[Block] = [
        ("p", f"Method − baseline ({base}), mean over the paired seeds, scored on the {split} "
              f"split. Holm's correction over {mc['family_size']} test(s) at α = "
              f"{summary['alpha']}; {pct} intervals over seeds (t) and over {split} {unit}s "
              f"({unit} bootstrap, the number of {unit}s in brackets; '—': not computed for "
              "this metric)."),
        ("table", ["method", "metric", "difference", f"{pct} CI over seeds (t, {split} split)",
                   f"{pct} CI over {split} {unit}s (bootstrap)", "p", "Holm p", "verdict"],
         rows)]
    if reasons:
        out.append(("ul", [f"No bootstrap interval for {', '.join(where)}: {why}"
                           for why, where in reasons.items()]))
    return out
