"""Evaluation figures: PR curves, confusion matrices, F1 vs confidence (matplotlib, Agg)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # never opens a window; safe on headless machines and in tests
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_confusion", "plot_f1_confidence", "plot_pr_curves"]

DPI = 120


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_pr_curves(
    curves: Mapping[str, Any], names: Sequence[str], path: str | os.PathLike
) -> Path:
    """Precision-recall curve per class (+ their mean) at IoU 0.5.

    ``curves`` is ``{"recall": (R,), "precision": (C, R)}`` (NaN rows = class without ground
    truth, skipped), e.g. ``detection_prf(...)["curves"]["pr"]`` or
    ``evaluate_coco(...)["pr_curve"]`` (a whole ``detection_prf`` result works too); an
    optional ``"ap"`` (C,) goes into the legend.
    """
    if "curves" in curves:  # a whole detection_prf result
        curves = curves["curves"]["pr"]
    recall = np.asarray(curves["recall"], dtype=float)
    prec = np.atleast_2d(np.asarray(curves["precision"], dtype=float))
    ap = curves.get("ap")
    fig, ax = plt.subplots(figsize=(6, 5))
    valid = []
    for c, name in enumerate(names):
        if c >= len(prec) or np.isnan(prec[c]).all():
            continue
        valid.append(c)
        a = float(ap[c]) if ap is not None else float(np.nanmean(prec[c]))
        ax.plot(recall, prec[c], linewidth=1.2, label=f"{name} {a:.3f}")
    if valid:
        mean = prec[valid].mean(axis=0)
        ax.plot(recall, mean, color="black", linewidth=2.5, label=f"all {mean.mean():.3f}")
    else:
        ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=ax.transAxes)
    ax.set(
        xlabel="Recall",
        ylabel="Precision",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title="Precision-recall (IoU 0.5)",
    )
    ax.grid(alpha=0.3)
    if valid:
        ax.legend(loc="lower left", fontsize=8, title="AP@0.5", title_fontsize=8)
    return _save(fig, path)


def plot_confusion(
    matrix: Any,
    labels: Sequence[str],
    path: str | os.PathLike,
    title: str = "Confusion matrix",
    normalize: bool = True,
) -> Path:
    """Heat map, rows = true, columns = predicted; ``normalize`` divides each row by its sum
    (rows without samples stay 0).  Cells show the (normalised) value and, when normalised,
    the raw count."""
    m = np.asarray(matrix, dtype=float)
    if m.shape != (len(labels), len(labels)):
        raise ValueError(f"matrix {m.shape} does not match {len(labels)} labels")
    rows = m.sum(axis=1, keepdims=True)
    shown = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0) if normalize else m
    n = len(labels)
    size = max(4.0, 0.7 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else max(m.max(), 1.0))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=list(labels), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(labels))
    ax.set(xlabel="Predicted", ylabel="True", title=title)
    hi = shown.max() if shown.size else 0.0
    for i in range(n):
        for j in range(n):
            text = f"{shown[i, j]:.2f}\n({int(m[i, j])})" if normalize else f"{int(m[i, j])}"
            color = "white" if hi > 0 and shown[i, j] > 0.6 * hi else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    return _save(fig, path)


def plot_f1_confidence(curve: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """F1 vs confidence per class, their mean, and the chosen threshold.

    ``curve`` is ``detection_prf(...)["curves"]["f1_conf"]`` (or the whole result): ``conf``
    (G,), ``f1`` (C, G),
    optional ``mean_f1`` (G,), ``names``, ``has_gt`` (classes to draw), ``best_conf``.
    """
    if "curves" in curve:  # a whole detection_prf result
        curve = curve["curves"]["f1_conf"]
    conf = np.asarray(curve["conf"], dtype=float)
    f1 = np.atleast_2d(np.asarray(curve["f1"], dtype=float))
    names = list(curve.get("names") or [str(i) for i in range(len(f1))])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    has_gt = list(curve.get("has_gt") or [True] * len(f1))
    for c, name in enumerate(names):
        if c < len(f1) and has_gt[c]:  # a class without ground truth has no F1
            ax.plot(conf, f1[c], linewidth=1.2, label=name)
    mean = curve.get("mean_f1")
    if mean is not None:
        mean = np.asarray(mean, dtype=float)
        ax.plot(conf, mean, color="black", linewidth=2.5, label=f"mean (max {mean.max():.3f})")
    best = curve.get("best_conf")
    if best is not None:
        ax.axvline(
            float(best),
            color="grey",
            linestyle="--",
            linewidth=1,
            label=f"threshold {float(best):.3f}",
        )
    ax.set(
        xlabel="Confidence",
        ylabel="F1",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title="F1 vs confidence (IoU 0.5)",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)
