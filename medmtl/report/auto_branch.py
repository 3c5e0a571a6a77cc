"""The report's section on ``--arch auto`` runs: each run's probe evidence (``auto_branch.json``:
mean gradient cosine and feature-gradient CKA per backbone stage, threshold, choice), the figure,
and auto against every fixed ``split<k>`` of the study (Δm, mAP@0.5, view accuracy), so the
reader sees whether the rule picked well."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from medmtl.report.collect import Run

RECORD = "auto_branch.json"  # as medmtl.engine.autobranch writes it
_STAGE = re.compile(r"backbone\.stage(\d+)$")


def records(runs: Sequence[Run]) -> list[tuple[Run, dict[str, Any]]]:
    out = []
    for r in runs:
        f = r.path / RECORD
        if f.is_file():
            out.append((r, json.loads(f.read_text())))
    return out


def _stages(d: dict[str, float]) -> list[tuple[int, float]]:
    return sorted((int(m.group(1)), float(v)) for k, v in d.items() if (m := _STAGE.match(k)))


def summary_block(runs: Sequence[Run], agg: dict[str, Any]) -> dict[str, Any] | None:
    """summary.json's ``auto_branch``: per auto run its evidence and choice; per method whose
    arch is auto or a fixed split (or shared) its Δm and main metrics."""
    recs = records(runs)
    if not recs:
        return None
    cmp = {}
    for m, e in agg["methods"].items():
        arch = str(e.get("arch") or "")
        if e["n"] and (arch.startswith("split") or arch == "shared" or m.startswith("auto")):
            dm = e.get("delta_m") or {}
            cmp[m] = {"arch": arch, "delta_m": dm.get("mean") if dm.get("available") else None,
                      **{k: e["metrics"][k]["mean"] for k in ("map50", "accuracy")}}
    return {"runs": [{"method": r.method, "seed": r.seed, **{k: rec.get(k) for k in (
        "choice", "conflict_stage", "threshold", "confidence", "probe_steps", "reason",
        "grad_cos", "grad_cos_upper", "feature_cka")}} for r, rec in recs], "compare": cmp}


def blocks(summary: dict[str, Any]) -> list[tuple[Any, ...]]:
    auto = summary.get("auto_branch")
    if not auto:
        return []
    b: list[tuple[Any, ...]] = [("h", 2, "Automatic branching (--arch auto)")]
    b.append(("p", "A shared probe measures the mean cosine between the two tasks' gradients on "
                   "each backbone stage; the run splits at the shallowest stage whose cosine is "
                   "below the threshold with the stated confidence (the one-sided upper bound "
                   "of the mean, by batch means of the per-step cosines, is below it; "
                   "confidence 0 or none: the mean alone; split<k> shares the stages before "
                   "it) and continues from the probe's weights. CKA: linear CKA of the two "
                   "tasks' per-image gradients on the stage's output (second signal, not used "
                   "by the rule). docs/auto_branch.md gives the details."))
    rows = []
    for r in auto["runs"]:
        cos = ", ".join(f"{g}: {v:+.3f}" for g, v in _stages(r["grad_cos"] or {}))
        up = ", ".join(f"{g}: {v:+.3f}" for g, v in _stages(
            {k: v for k, v in (r.get("grad_cos_upper") or {}).items() if v is not None}))
        cka = ", ".join(f"{g}: {v:.2f}" for g, v in _stages(r["feature_cka"] or {}))
        conf = r.get("confidence")
        rows.append([r["method"], str(r["seed"]), str(r["probe_steps"]), f"{r['threshold']:g}",
                     "none" if not conf else f"{conf:.0%}", cos, up or "—", cka,
                     str(r["choice"])])
    b.append(("table", ["method", "seed", "probe steps", "threshold", "confidence",
                        "mean cosine per stage", "upper bound per stage", "CKA per stage",
                        "choice"], rows))
    if auto["compare"]:
        def f(v: float | None, fmt: str) -> str:
            return "n/a" if v is None or not math.isfinite(v) else format(v, fmt)

        b.append(("table", ["method", "arch", "Δm (%)", "mAP@0.5", "view accuracy"],
                  [[m, c["arch"], f(c["delta_m"], "+.2f"), f(c["map50"], ".3f"),
                    f(c["accuracy"], ".3f")] for m, c in auto["compare"].items()]))
    return b


def plot(runs: Sequence[Run], path: Path) -> Path | None:
    """Cosine (left; the rule's upper confidence bounds as triangles) and CKA (right) per stage,
    one line per auto run, the threshold dashed and where each run's branches start dotted."""
    recs = records(runs)
    if not recs:
        return None
    fig = Figure(figsize=(10, 3.6))
    ax_c, ax_k = fig.subplots(1, 2)
    for r, rec in recs:
        cos = _stages(rec.get("grad_cos") or {})
        line = ax_c.plot([g for g, _ in cos], [v for _, v in cos], "o-",
                         label=f"{r.method}-s{r.seed}: {rec.get('choice')}")[0]
        up = _stages({k: v for k, v in (rec.get("grad_cos_upper") or {}).items()
                      if v is not None})
        if up:  # the rule's upper confidence bounds, one marker per stage
            ax_c.plot([g for g, _ in up], [v for _, v in up], "v", color=line.get_color(), ms=5)
        m = re.fullmatch(r"split(\d+)", str(rec.get("choice")))
        if m:  # split<k>: stages 0..k shared, the branches start after stage k
            ax_c.axvline(int(m.group(1)) + 0.5, color=line.get_color(), ls=":")
        cka = _stages(rec.get("feature_cka") or {})
        ax_k.plot([g for g, _ in cka], [v for _, v in cka], "o-", color=line.get_color())
    ax_c.axhline(float(recs[0][1].get("threshold", 0.0)), color="grey", ls="--", lw=1)
    ax_c.set(xlabel="backbone stage", ylabel="mean gradient cosine", title="probe: cosine")
    ax_k.set(xlabel="backbone stage", ylabel="linear CKA", title="probe: feature-gradient CKA")
    for ax in (ax_c, ax_k):
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_c.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
