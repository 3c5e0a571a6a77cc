"""The report's view-label section (see :mod:`medmtl.report.render`): view accuracy against the
label files, against the clip-majority labels of the scored split and per clip, by the training
view-label policy (`--view-labels`) and corrections file of each method."""

from __future__ import annotations

from typing import Any

from medmtl.report.collect import METRIC_BY_KEY, Run

__all__ = ["VIEW_LABEL_KEYS", "run_view_labels", "view_label_blocks"]

Block = tuple[Any, ...]
VIEW_LABEL_KEYS = ("accuracy_clip_labels", "clip_accuracy")
_KEYS = ("accuracy", *VIEW_LABEL_KEYS)

EXPLAIN = (
    "View accuracy is given three ways, on the split the runs are scored on: per frame against "
    "the label files ('view accuracy'); per frame against the clip-majority labels of that split "
    "('vs clip-majority labels': each labelled frame is scored against the view most labelled "
    "frames of its clip carry in that split, its own label where the clip ties); and per clip "
    "('per clip': the majority vote of the frame predictions of a clip against the clip's "
    "majority label; tied clips are left out). A view belongs to a clip, so frames of one clip "
    "with different view labels are label noise that caps the frame accuracy against the files. "
    "The training view-label policy changes only what a run trained on; every run is scored "
    "against the same labels (with its corrections file, if any).")


def run_view_labels(run: Run) -> dict[str, Any]:
    """summary.json's per-run `view_labels` (the training policy) and `corrections_sha256`."""
    data = (run.val_metrics or {}).get("data") or {}
    corr = data.get("corrections") or {}
    return {"view_labels": str(run.config.get("view_labels") or "as-is"),
            "corrections_sha256": corr.get("sha256")}


def _mean(entry: dict[str, Any], key: str) -> float | None:
    return entry["metrics"].get(key, {}).get("mean")


def view_label_blocks(summary: dict[str, Any]) -> list[Block]:
    """The explanation, then per method its policy, corrections and the three mean accuracies,
    and which method and policy is best by each."""
    policy: dict[str, set[str]] = {}
    corrections: dict[str, set[str]] = {}
    for r in summary["runs"]:
        if r["finished"]:
            policy.setdefault(r["method"], set()).add(r.get("view_labels") or "as-is")
            corrections.setdefault(r["method"], set()).add((r.get("corrections_sha256")
                                                            or "none")[:12])
    rows, best = [], {}
    for m, e in summary["methods"].items():
        if m not in policy or _mean(e, "accuracy") is None:
            continue
        vals = [_mean(e, k) for k in _KEYS]
        rows.append([m, ", ".join(sorted(policy[m])), ", ".join(sorted(corrections[m])),
                     str(e["n"]), *("n/a" if v is None else f"{v:.3f}" for v in vals)])
        for k, v in zip(_KEYS, vals, strict=True):
            if v is not None and (k not in best or v > best[k][1]):
                best[k] = (m, v)
    if not rows:
        return [("p", EXPLAIN)]
    text = "; ".join(f"{METRIC_BY_KEY[k].label}: {best[k][0]} ({', '.join(sorted(policy[best[k][0]]))}"
                     f", {best[k][1]:.3f})" for k in _KEYS if k in best)
    return [("p", EXPLAIN),
            ("table", ["method", "training view labels", "corrections (sha256)", "seeds",
                       *(METRIC_BY_KEY[k].label for k in _KEYS)], rows),
            ("p", f"Highest mean by each measure (method, its training view labels): {text}.")]
