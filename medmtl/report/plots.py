"""Report figures (matplotlib's Agg canvas through ``Figure``; pyplot and the global backend are
left alone). Each function returns the PNG path, or None when the runs hold no data for that
figure (a figure is never drawn from invented values)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from medmtl.report import auto_branch
from medmtl.report.collect import METRIC_BY_KEY, Run
from medmtl.report.setup import class_name

DPI = 110


def _colors(methods: Sequence[str]) -> dict[str, Any]:
    cmap = colormaps["tab20" if len(methods) > 10 else "tab10"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _grid(n: int, max_cols: int = 3,
          size: tuple[float, float] = (4.2, 3.4)) -> tuple[Figure, list[Any]]:
    cols = min(n, max_cols)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def metric_bars(agg: dict[str, Any], path: Path,
                keys: Sequence[str] = ("map50", "map50_95", "accuracy", "macro_f1")) -> Path | None:
    """Mean over seeds with sample-std error bars; one panel per metric."""
    methods = agg["methods"]
    def finite(e: dict[str, Any], k: str) -> bool:  # NaN runs appear in the tables only
        return e["metrics"][k]["mean"] is not None and bool(np.isfinite(e["metrics"][k]["mean"]))

    keys = [k for k in keys if any(finite(e, k) for e in methods.values())]
    if not keys:
        return None
    colors = _colors(list(methods))
    fig, axes = _grid(len(keys), max_cols=2, size=(max(5.0, 0.55 * len(methods) + 2), 3.6))
    for ax, key in zip(axes, keys, strict=True):
        names = [m for m, e in methods.items() if finite(e, key)]
        means = [methods[m]["metrics"][key]["mean"] for m in names]
        stds = [float(np.nan_to_num(methods[m]["metrics"][key]["std"] or 0.0)) for m in names]
        x = np.arange(len(names))
        ax.bar(x, means, yerr=stds, capsize=3, color=[colors[m] for m in names],
               edgecolor="black", linewidth=0.5)
        for xi, m, sd in zip(x, means, stds, strict=True):
            ax.text(xi, m + sd, f"{m:.3f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, names, rotation=40, ha="right", fontsize=8)
        ax.set_title(f"{METRIC_BY_KEY[key].label} (mean ± std over seeds)", fontsize=9)
        ax.set_ylim(0, min(1.05, max(m + s for m, s in zip(means, stds, strict=True)) * 1.15 + 1e-9))
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _mean_curve(runs: Sequence[Run], column: str) -> tuple[np.ndarray, np.ndarray]:
    by_epoch: dict[float, list[float]] = {}
    for r in runs:
        for ep, v in zip(*r.column(column), strict=True):
            by_epoch.setdefault(ep, []).append(v)
    eps = np.array(sorted(by_epoch))
    return eps, np.array([np.mean(by_epoch[e]) for e in eps])


def _curves(runs: Sequence[Run], methods: Sequence[str], panels: Sequence[tuple[str, str]],
            path: Path, max_cols: int = 2) -> Path | None:
    """Mean over seeds per epoch; a method with no finished run is drawn dashed, labelled so."""
    groups = {m: [r for r in runs if r.method == m] for m in methods}
    panels = [p for p in panels if any(_mean_curve(g, p[0])[0].size for g in groups.values())]
    if not panels:
        return None
    colors = _colors(list(methods))
    fig, axes = _grid(len(panels), max_cols=max_cols, size=(5.2 if max_cols > 1 else 7.0, 3.4))
    handles: dict[str, Any] = {}
    for ax, (col, title) in zip(axes, panels, strict=True):
        for m, g in groups.items():
            eps, ys = _mean_curve(g, col)
            if not eps.size:
                continue
            done = any(r.finished for r in g)
            (line,) = ax.plot(eps, ys, marker="." if eps.size < 30 else None, color=colors[m],
                              linestyle="-" if done else "--")
            handles.setdefault(m if done else f"{m} (unfinished)", line)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", fontsize=8,
               ncol=min(len(handles), 6), frameon=False)
    return _save(fig, path)


def training_curves(runs: Sequence[Run], methods: Sequence[str], path: Path) -> Path | None:
    return _curves(runs, methods, [
        ("loss/detect", "train loss: detect (mean over seeds)"),
        ("loss/classify", "train loss: classify (mean over seeds)"),
        ("val/map50", "val mAP@0.5 (mean over seeds)"),
        ("val/accuracy", "val view accuracy (mean over seeds)"),
        ("val/loss/detect", "val loss: detect (mean over seeds)"),
        ("val/loss/classify", "val loss: classify (mean over seeds)"),
    ], path)


def task_weights(runs: Sequence[Run], methods: Sequence[str], path: Path) -> Path | None:
    return _curves(runs, methods, [("weight/detect", "task weight: detect"),
                                   ("weight/classify", "task weight: classify")], path)


def grad_cos(runs: Sequence[Run], methods: Sequence[str], path: Path) -> Path | None:
    """Gradient cosine between tasks on the shared parameters (only where it was measured)."""
    shared = [m for m in methods
              if any(r.arch not in ("dual", "single") for r in runs if r.method == m)]
    return _curves(runs, shared, [("grad_cos", "cos(grad detect, grad classify) on shared "
                                   "parameters (mean over seeds)")], path, max_cols=1)


def pr_curves(runs: Sequence[Run], methods: Sequence[str], path: Path) -> Path | None:
    """Precision-recall per detection class, first seed of each method with eval/pr_curves.json."""
    picked = []
    for m in methods:
        r = next((r for r in runs if r.method == m and r.pr_curves is not None), None)
        if r is not None:
            picked.append(r)
    if not picked:
        return None
    fig, axes = _grid(len(picked), max_cols=3, size=(4.0, 3.4))
    for ax, r in zip(axes, picked, strict=True):
        pr = r.pr_curves or {}
        recall = np.asarray(pr["recall"], dtype=float)
        names = list(((r.metrics or {}).get("detection") or {}).get("per_class") or {})
        for key, prec in pr["per_class"].items():
            prec = np.asarray(prec, dtype=float)
            if prec.shape == recall.shape:
                ax.plot(recall, prec, label=class_name(str(key), names))
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.set_title(f"{r.name}: PR curves", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def confusion(runs: Sequence[Run], methods: Sequence[str], path: Path) -> Path | None:
    """View confusion matrix per method, summed over seeds, with row-normalised shading."""
    mats: list[tuple[str, np.ndarray, list[str]]] = []
    for m in methods:
        total: np.ndarray | None = None
        names: list[str] = []
        for r in runs:
            cls = (r.metrics or {}).get("classification") if r.method == m else None
            conf = (cls or {}).get("confusion")
            if not conf:
                continue
            arr = np.asarray(conf, dtype=float)
            if total is not None and total.shape != arr.shape:
                continue
            total = arr if total is None else total + arr
            per_class = list((cls or {}).get("per_class") or {})
            labels = list((cls or {}).get("labels") or [])
            names = per_class if len(per_class) == arr.shape[0] else \
                labels if len(labels) == arr.shape[0] else [str(i) for i in range(arr.shape[0])]
        if total is not None:
            mats.append((m, total, names))
    if not mats:
        return None
    fig, axes = _grid(len(mats), max_cols=4, size=(3.4, 3.2))
    for ax, (m, mat, names) in zip(axes, mats, strict=True):
        rows = mat.sum(axis=1, keepdims=True)
        norm = np.divide(mat, rows, out=np.zeros_like(mat), where=rows > 0)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                ax.text(j, i, f"{mat[i, j]:g}", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(names)), names, fontsize=7, rotation=30)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(f"{m} (sum over seeds)", fontsize=9)
    return _save(fig, path)


def pareto(deployment: dict[str, Any] | None, path: Path,
           budget_ms: float | None = None) -> Path | None:
    """Δm against end-to-end latency, one point per method (summary.json's ``deployment``):
    the Pareto-optimal ones coloured and connected in latency order, the dominated ones grey;
    bars: the latency noise band and Δm's std over seeds; the budget as a dashed line."""
    pts = (deployment or {}).get("points") or []
    if not pts:
        return None
    fig = Figure(figsize=(6.8, 4.6), layout="constrained")
    ax = fig.subplots()
    front = sorted((p for p in pts if p["pareto"]), key=lambda p: p["latency_ms"])
    ax.plot([p["latency_ms"] for p in front], [p["delta_m"] for p in front], "-",
            color="tab:blue", lw=1.2, zorder=1, label="Pareto front")
    grey_label = "dominated"
    for p in pts:
        color = "tab:blue" if p["pareto"] else "0.65"
        ax.errorbar(p["latency_ms"], p["delta_m"], xerr=p["noise_ms"], yerr=p["delta_m_std"],
                    fmt="o", color=color, ecolor=color, capsize=3, zorder=3 if p["pareto"] else 2,
                    label=None if p["pareto"] else grey_label)
        grey_label = grey_label if p["pareto"] else None
        ax.annotate(p["method"], (p["latency_ms"], p["delta_m"]),
                    xytext=(5, 4) if p["pareto"] else (5, -11),
                    textcoords="offset points", fontsize=8,
                    color="black" if p["pareto"] else "0.45")
    if budget_ms is not None:
        ax.axvline(budget_ms, ls="--", color="tab:red", lw=1, label=f"budget {budget_ms:g} ms")
    ax.set_xlabel(f"end-to-end latency, {deployment['runtime_label']} (ms per image, median)",
                  fontsize=9)
    ax.set_ylabel("Δm against the single-task models (%)", fontsize=9)
    ax.set_title("Accuracy against latency (up and left is better)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def make_plots(runs: Sequence[Run], agg: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """All figures into ``out_dir``; returns name -> PNG path for the ones with data."""
    methods = list(agg["methods"])
    # curves: finished runs only, except for a method that has none finished yet
    has_done = {r.method for r in runs if r.finished}
    done = [r for r in runs if r.history and (r.finished or r.method not in has_done)]
    joint = [m for m, e in agg["methods"].items() if e["joint"] or e["n"] == 0]
    made = {
        "metric_bars": metric_bars(agg, out_dir / "metric_bars.png"),
        "pareto": pareto(agg.get("deployment"), out_dir / "pareto.png",
                         ((agg.get("recommendations") or {}).get("latency_budget") or {})
                         .get("budget_ms")),
        "training_curves": training_curves(done, methods, out_dir / "training_curves.png"),
        "task_weights": task_weights(done, joint, out_dir / "task_weights.png"),
        "grad_cos": grad_cos(done, methods, out_dir / "grad_cos.png"),
        "pr_curves": pr_curves(runs, methods, out_dir / "pr_curves.png"),
        "confusion": confusion(runs, methods, out_dir / "confusion.png"),
        "auto_branch": auto_branch.plot(runs, out_dir / "auto_branch.png"),
    }
    return {k: v for k, v in made.items() if v is not None}
