"""report.md, report.html (self-contained), summary.json and summary.csv from one compare dir.

The document is built once as a list of blocks and rendered twice (Markdown, HTML), so both
show the same numbers. All text is a template filled with computed values.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medmtl.report import auto_branch
from medmtl.report.bootstrap import BootstrapSettings, add_bootstrap
from medmtl.report.budget import add_budget
from medmtl.report.collect import METRIC_BY_KEY, METRICS, Run, collect_runs, extract
from medmtl.report.compressed import compressed_blocks, compressed_summary
from medmtl.report.deployment import deployment_blocks
from medmtl.report.evidence import no_learning
from medmtl.report.markup import fmt, fmt_ms, to_html, to_markdown
from medmtl.report.pareto import DEFAULT_RUNTIME
from medmtl.report.plots import make_plots
from medmtl.report.recommendations import DM_TOLERANCE
from medmtl.report.render_stats import (
    delta_m_blocks,
    differences_blocks,
    scored_split,
    stats_notes,
    verdict_cell,
)
from medmtl.report.setup import (
    leakage_banner,
    per_class_ap_blocks,
    per_class_recall_blocks,
    run_leakage,
    setup_blocks,
    single_seed_banner,
    withheld,
)
from medmtl.report.stats import ALPHA, aggregate, deployment_points, method_order, recommend
from medmtl.report.tuning import tuning_blocks
from medmtl.report.view_labels import VIEW_LABEL_KEYS, run_view_labels, view_label_blocks

Block = tuple[Any, ...]
PLOT_CAPTIONS = {
    "metric_bars": "Main metrics per method, mean over seeds with sample-std error bars",
    "pareto": "Δm against end-to-end latency: Pareto-optimal methods connected, dominated ones "
              "grey (bars: latency noise band, Δm std over seeds)",
    "training_curves": "Training losses and validation metrics per epoch (mean over seeds)",
    "task_weights": "Task weights per epoch (mean over seeds)",
    "grad_cos": "Cosine between the task gradients on the shared parameters (where measured)",
    "pr_curves": "Detection precision-recall curves (first seed with eval/pr_curves.json)",
    "confusion": "View confusion matrices, summed over seeds (rows: true, columns: predicted)",
    "auto_branch": "--arch auto probes: gradient cosine and CKA per stage (dotted: branch point)",
}
HOW_TO_READ = [
    "Each cell 'mean ± std' is the mean over the finished seeds of a method and the sample "
    "standard deviation (ddof = 1); a method with a single seed shows its value alone.",
    "Metrics on a 0–1 scale show 3 decimals, times in ms and s 1 decimal, parameters in "
    "millions. 'n/a' means the runs did not report the value; 'nan' means a run reported a "
    "non-finite value (e.g. a diverged training).",
    "'Δ vs baseline (%)' is (mean of the method − mean of the baseline) / |mean of the "
    "baseline| × 100.",
    "Recommendations are generated from these numbers by fixed rules; they name no method in "
    "advance.",
]


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.1f}"


def _verdict(sig: dict[str, Any] | None) -> str:
    return verdict_cell(sig)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats -> None, Paths -> str, int keys -> str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def build_summary(runs: Sequence[Run], baseline: str | None = None, alpha: float = ALPHA,
                  delta_m_metrics: dict[str, str] | None = None,
                  latency_budget_ms: float | None = None, latency_runtime: str = DEFAULT_RUNTIME,
                  delta_m_tolerance: float = DM_TOLERANCE,
                  bootstrap: BootstrapSettings | None = None) -> dict[str, Any]:
    """Every aggregated number, per method and per run, the Pareto front and the advice."""
    agg = aggregate(runs, baseline, alpha, delta_m_metrics)
    add_budget(runs, agg, alpha)  # before the advice: a longer-trained lead needs its control
    boot = add_bootstrap(list(runs), agg, bootstrap)
    deployment = deployment_points(runs, agg, latency_runtime)  # compressed variants too
    per_run = []
    order = method_order([r.method for r in runs])
    for r in sorted(runs, key=lambda r: (order.index(r.method), r.seed)):
        tr = (r.metrics or {}).get("training") or {}
        per_run.append({"method": r.method, "seed": r.seed, "path": str(r.path),
                        "finished": r.finished, "epochs_logged": len(r.history),
                        "best_epoch": tr.get("best_epoch"), "epochs": tr.get("epochs"),
                        "metrics": extract(r.metrics) if r.metrics else None,
                        "split": r.split, **run_view_labels(r),
                        "val_metrics": extract(r.val_metrics) if r.val_metrics else None})
    recs = recommend(runs, agg, alpha, deployment, latency_budget_ms, delta_m_tolerance)
    recs["withheld"] = withheld({"methods": agg["methods"]}) or no_learning(runs, agg)
    return {
        "schema": 1, "baseline": agg["baseline"], "alpha": alpha,
        "scored_on": sorted({r.split for r in runs if r.finished and r.split}),
        "leakage": run_leakage([r for r in runs if r.finished]),
        "delta_m_metrics": agg["delta_m_metrics"],
        "delta_m_main_metrics": agg["delta_m_main_metrics"], "confidence": agg["confidence"],
        "multiple_comparisons": agg["multiple_comparisons"], "bootstrap": boot,
        "metric_info": {m.key: {"label": m.label, "source": ".".join(m.path),
                                "higher_is_better": m.higher_is_better, "kind": m.kind}
                        for m in METRICS},
        "methods": agg["methods"], "runs": per_run,
        "unfinished": [{"method": r.method, "seed": r.seed, "path": str(r.path),
                        "epochs_logged": len(r.history)} for r in runs if not r.finished],
        "deployment": deployment, "compressed": compressed_summary(runs),
        "auto_branch": auto_branch.summary_block(runs, agg),
        "recommendations": recs, "tuning": _tuning_status(agg),
    }


def _tuning_status(agg: dict[str, Any]) -> dict[str, Any]:
    """Which joint methods were tuned (`<method>@tuned`, by `medmtl tune`) and which ran at
    their defaults, said plainly: a default method against a tuned baseline had less search."""
    joint = [m for m, e in agg["methods"].items() if e["joint"] and e["n"]]
    tuned = [m for m in joint if m.endswith("@tuned")]
    default = [m for m in joint if not m.endswith("@tuned")]
    base = agg["baseline"]
    text = (f"Tuned on val (the same search budget each): {', '.join(tuned)}. " if tuned else
            "No method was tuned. ") + (f"At their defaults: {', '.join(default)}." if default
                                        else "")
    if base and base.endswith("@tuned") and default:
        text += (f" Verdicts of these against the tuned baseline {base} compare unequal search "
                 "effort.")
    return {"tuned": tuned, "defaults": default, "text": text}


def _table(summary: dict[str, Any], keys: Sequence[str], extra: Sequence[str] = ()) -> Block:
    rel_key = keys[0]
    headers = ["method", "seeds"] + [METRIC_BY_KEY[k].label for k in keys]
    if "rel" in extra:
        headers += [f"Δ {METRIC_BY_KEY[rel_key].label} vs baseline (%)",
                    f"{METRIC_BY_KEY[rel_key].label} vs baseline"]
    rows = []
    for m, e in summary["methods"].items():
        if all(e["metrics"][k]["mean"] is None for k in keys):
            continue
        row = [m, str(e["n"])] + [fmt_ms(e, k) for k in keys]
        if "rel" in extra:
            row += [_pct(e["relative_to_baseline_pct"][rel_key]),
                    "baseline" if m == summary["baseline"]
                    else _verdict(e["significance"].get(rel_key))]
        rows.append(row)
    return ("table", headers, rows)


def _split_sentence(splits: Sequence[str]) -> str:
    if list(splits) == ["test"]:
        return ("Every score below is on the held-out test split, with the checkpoint each run "
                "chose on val; the val scores are in the last table.")
    if "test" in splits:
        return ("Warning: some runs are scored on a held-out test split and others on val; "
                "compare like with like (summary.json's runs[].split says which).")
    return ("Every score below is on the val split, the same split that chose each run's "
            "checkpoint, so it flatters noisier methods: score a held-out split with "
            "`--test-split grouped` or a `test:` key in the data YAML.")


def _val_table(summary: dict[str, Any]) -> list[Block]:
    """Mean val (selection-split) scores per method, when the main tables are on test."""
    keys = ["map50", "map50_95", "accuracy", "macro_f1"]
    rows = []
    for m in summary["methods"]:
        vals = [r["val_metrics"] for r in summary["runs"]
                if r["method"] == m and r.get("split") == "test" and r.get("val_metrics")]
        if vals:
            cells = []
            for k in keys:
                xs = [v[k] for v in vals if v.get(k) is not None]
                cells.append(fmt(k, sum(xs) / len(xs)) if xs else "—")
            rows.append([m, str(len(vals)), *cells])
    if not rows:
        return []
    return [("h", 2, "Validation scores (the selection split)"),
            ("p", "Means over seeds on val, where each checkpoint was chosen: for reference only; "
                  "the verdicts above use the test split."),
            ("table", ["method", "seeds", *[METRIC_BY_KEY[k].label for k in keys]], rows)]


def _blocks(summary: dict[str, Any], plots: dict[str, Path], directory: Path,
            runs: Sequence[Run] = ()) -> list[Block]:
    base = summary["baseline"]
    b: list[Block] = [("h", 1, f"Multi-task comparison: {directory.name}")]
    n_done = sum(r["finished"] for r in summary["runs"])
    b.append(("p", f"{len(summary['runs'])} run(s), {n_done} finished, "
                   f"{len(summary['unfinished'])} unfinished. Baseline: {base or 'none'}. "
                   f"Significance level α = {summary['alpha']}."))
    b.append(("p", _split_sentence(summary.get("scored_on") or [])))
    b += single_seed_banner(summary) + leakage_banner(summary)
    b.append(("h", 2, "Recommendations"))
    recs = summary["recommendations"]
    if recs.get("withheld"):
        b.append(("p", recs["withheld"]))
    else:
        b += _recommendation_blocks(recs)
    if "pareto" in plots:
        b.append(("img", PLOT_CAPTIONS["pareto"], plots["pareto"].relative_to(directory),
                  plots["pareto"]))
    b += setup_blocks(runs)
    b.append(("h", 2, "How to read this report"))
    b.append(("ul", HOW_TO_READ[:-1] + stats_notes(summary) + HOW_TO_READ[-1:]))
    b += _rest_blocks(summary, plots, directory, runs)
    return b


def _recommendation_blocks(recs: dict[str, Any]) -> list[Block]:
    b: list[Block] = [("p", recs["accuracy_first"]["text"])]
    acc = recs["accuracy_first"]
    ranking, nd = acc["ranking"], acc.get("decimals", 3)

    def cell(r: dict[str, Any] | None) -> str:
        if not r or r.get("mean") is None:
            return "n/a"
        return f"{r['mean']:.{nd}f}" + ("" if r.get("std") is None else f" ± {r['std']:.{nd}f}")

    if ranking and acc.get("confirmed_on"):  # chosen on val, tested on the held-out split
        chosen = acc.get("chosen")
        label = "chosen on val, " + ("recommended" if acc.get("method") else "not recommended")
        val = {r["method"]: r for r in acc.get("val_ranking") or []}
        b.append(("table", ["method", f"score ({acc['score_name']}), {acc['confirmed_on']}",
                            f"score, {acc['chosen_on']}", "seeds",
                            f"vs the chosen method ({acc['confirmed_on']})"],
                  [[r["method"], cell(r), cell(val.get(r["method"])), str(r["n"]),
                    label if r["method"] == chosen else _verdict(r.get("vs_best"))]
                   for r in ranking]))
    elif ranking:  # "best" only where the evidence names one (medmtl.report.evidence)
        top = "best" if acc.get("method") else "top score (not recommended)"
        b.append(("table", ["method", f"score ({acc['score_name']})", "seeds", "vs the top score"],
                  [[r["method"], cell(r), str(r["n"]), top if i == 0 else _verdict(r.get("vs_best"))]
                   for i, r in enumerate(ranking)]))
    b.append(("p", recs["efficiency_first"]["text"]))
    if recs.get("latency_budget"):
        b.append(("p", recs["latency_budget"]["text"]))
    return b


def _rest_blocks(summary: dict[str, Any], plots: dict[str, Path], directory: Path,
                 runs: Sequence[Run]) -> list[Block]:
    methods, base, recs = summary["methods"], summary["baseline"], summary["recommendations"]
    b: list[Block] = [("h", 2, "Runs")]
    b.append(("table", ["method", "arch", "seeds run", "unfinished seeds"],
              [[m, str(e["arch"] or "n/a"),
                f"{len(e['seeds'])} ({', '.join(map(str, e['seeds']))})" if e["seeds"] else "0",
                ", ".join(map(str, e["unfinished_seeds"])) or "none"]
               for m, e in methods.items()]))
    if summary["unfinished"]:
        b.append(("p", "Unfinished runs (no metrics.json; not in any aggregate):"))
        b.append(("ul", [f"{u['method']} seed {u['seed']}: {u['epochs_logged']} epoch(s) "
                         f"logged ({u['path']})" for u in summary["unfinished"]]))
    b.append(("h", 2, "Detection (regurgitation jet boxes)"))
    b.append(_table(summary, ["map50", "map50_95", "precision", "recall", "f1"], ["rel"]))
    b += per_class_ap_blocks(runs, list(methods))
    b.append(("h", 2, "View classification"))
    b.append(_table(summary, ["accuracy", "macro_f1", *VIEW_LABEL_KEYS], ["rel"]))
    b += per_class_recall_blocks(runs, list(methods))
    b += view_label_blocks(summary)
    b.append(("h", 2, "Δm against the single-task models"))
    b += delta_m_blocks(summary)
    sig_keys = summary["multiple_comparisons"]["metrics"]
    b.append(("h", 2, f"Paired t-test against the baseline ({base})"))
    b.append(("table", ["method"] + [METRIC_BY_KEY[k].label for k in sig_keys],
              [[m] + [_verdict(e["significance"].get(k)) for k in sig_keys]
               for m, e in methods.items() if m != base and e["n"]]))
    b.append(("h", 2, f"Differences against the baseline ({base}) with intervals"))
    if summary.get("tuning"):
        b.append(("p", summary["tuning"]["text"]))
    b += differences_blocks(summary)
    budget = [e["budget"]["text"] for e in methods.values() if (e.get("budget") or {}).get("text")]
    if budget:
        b.append(("h", 2, "Equal budgets"))
        b.append(("p", "A method that starts from another run trained that run's epochs too; "
                       "its lead counts only against a control that trained as long."))
        b.append(("ul", budget))
    b.append(("h", 2, f"Losses on the {scored_split(summary)} split and final task weights"))
    b.append(_table(summary, ["val_loss_detect", "val_loss_classify", "weight_detect",
                              "weight_classify"]))
    b.append(("h", 2, "Efficiency"))
    eff = {r["method"]: r for r in recs["efficiency_first"]["ranking"]}
    erows = []
    for m, e in methods.items():
        if not e["n"]:
            continue
        x = eff.get(m, {})
        erows.append([m] + [fmt_ms(e, k) for k in ("params", "gflops", "ms_per_image",
                                                    "images_per_s", "weights_mb")]
                     + [f"{x['map50_per_ms']:.4f}" if x else "n/a",
                        f"{x['map50_per_mb']:.4f}" if x.get("map50_per_mb") else "n/a"]
                     + [fmt_ms(e, k) for k in ("train_seconds", "peak_mem_mb")])
    b.append(("table", ["method", "parameters", "GFLOPs", "ms/image", "images/s", "weights (MB)",
                        "mAP@0.5 per ms", "mAP@0.5 per MB", "training time (s)",
                        "peak memory (MB)"], erows))
    b += deployment_blocks(summary) + compressed_blocks(summary) + auto_branch.blocks(summary)
    b.append(("h", 2, "Per run"))
    b.append(("table", ["method", "seed", "mAP@0.5", "mAP@0.5:0.95", "view accuracy",
                        "macro-F1", "best epoch", "epochs", "training time (s)", "status"],
              [[r["method"], str(r["seed"])]
               + ([fmt(k, r["metrics"][k]) for k in ("map50", "map50_95", "accuracy",
                                                     "macro_f1")]
                  if r["metrics"] else ["n/a"] * 4)
               + [str(r["best_epoch"] if r["best_epoch"] is not None else "n/a"),
                  str(r["epochs"] if r["epochs"] is not None else r["epochs_logged"]),
                  fmt("train_seconds", r["metrics"]["train_seconds"]) if r["metrics"]
                  else "n/a", "finished" if r["finished"] else "unfinished"]
               for r in summary["runs"]]))
    b.extend(_val_table(summary))
    b.extend(tuning_blocks(directory))
    if plots:
        b.append(("h", 2, "Figures"))
        for name, path in ((k, v) for k, v in plots.items() if k != "pareto"):
            b.append(("img", PLOT_CAPTIONS.get(name, name), path.relative_to(directory), path))
    return b


def write_csv(summary: dict[str, Any], path: Path) -> Path:
    keys = [m.key for m in METRICS]
    header = ["method", "n_seeds", "seeds", "joint"] + [f"{k}_{s}" for k in keys
                                                       for s in ("mean", "std")]
    header += ["delta_m_mean", "delta_m_std", "delta_m_two_mean", "delta_m_two_std"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for m, e in summary["methods"].items():
            dm = e["delta_m"]
            cells: list[Any] = [m, e["n"], " ".join(map(str, e["seeds"])), e["joint"]]
            for k in keys:
                cells += [e["metrics"][k]["mean"], e["metrics"][k]["std"]]
            two = e.get("delta_m_two") or {}
            cells += [dm.get("mean"), dm.get("std"), two.get("mean"), two.get("std")]
            w.writerow(["" if c is None else repr(c) if isinstance(c, float) else c
                        for c in cells])
    return path


def write_report(directory: str | Path, baseline: str | None = None, alpha: float = ALPHA,
                 delta_m_metrics: dict[str, str] | None = None, plots: bool = True,
                 latency_budget_ms: float | None = None, latency_runtime: str = DEFAULT_RUNTIME,
                 delta_m_tolerance: float = DM_TOLERANCE,
                 bootstrap: BootstrapSettings | None = None) -> dict[str, Path]:
    """Read ``DIR/runs/*``, write report.md, report.html, summary.json, summary.csv and (unless
    ``plots=False``) ``DIR/plots/*.png``; return their paths (keys md, html, json, csv,
    plot_<name>). Latency options: see `medmtl.report.pareto` and `recommendations.recommend`."""
    directory = Path(directory)
    runs = collect_runs(directory)
    if not runs:
        raise FileNotFoundError(f"{directory}: no run directories found")
    summary = build_summary(runs, baseline, alpha, delta_m_metrics, latency_budget_ms,
                            latency_runtime, delta_m_tolerance, bootstrap)
    plot_dir = directory / "plots"
    for name in PLOT_CAPTIONS:  # stale figures from an earlier report would mislead
        (plot_dir / f"{name}.png").unlink(missing_ok=True)
    figures = make_plots(runs, summary, plot_dir) if plots else {}
    summary["plots"] = {k: str(v.relative_to(directory)) for k, v in figures.items()}
    blocks = _blocks(summary, figures, directory, runs)
    paths = {"md": directory / "report.md", "html": directory / "report.html",
             "json": directory / "summary.json", "csv": directory / "summary.csv"}
    paths["md"].write_text(to_markdown(blocks), encoding="utf-8")
    paths["html"].write_text(to_html(blocks), encoding="utf-8")
    paths["json"].write_text(json.dumps(_clean(summary), indent=2, allow_nan=False) + "\n",
                             encoding="utf-8")
    write_csv(summary, paths["csv"])
    paths.update({f"plot_{k}": v for k, v in figures.items()})
    return paths
