"""The real-data study's table in docs/results.md, printed from a report's summary.json (so that
every figure there is the report's own, not copied by hand):

    python benchmarks/study_table.py docs/study/summary.json

One row per method (mean ± std over seeds, on the split the report scored) and per compressed
graph (its own scores: summary.json's `compressed` block), sorted by Δm; the single-task
references last. Latency: the deployment table's end-to-end figure on the report's runtime.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

LABELS = {
    "detect": "detect alone", "classify": "classify alone",
    "fixed": "fixed (weights 1 : 1)", "fixed@tuned": "fixed, tuned (lr, classify weight)",
    "gradnorm": "gradnorm (alpha 1.5)", "gradnorm@tuned": "gradnorm, tuned (lr, alpha)",
    "pcgrad": "pcgrad", "dual": "dual (two backbones)", "split2": "split2 (stem + 2 stages shared)",
    "split1:fixed": "split1 (stem + 1 stage shared)", "split3:fixed": "split3 (stem + 3 stages)",
    "original": "original (the earlier attempt's setting)",
    "staged": "staged (dual's detection branch, then GradNorm; 16 epochs in all)",
    "distill": "distill (GradNorm student, dual teacher; 16 epochs in all)",
    "auto": "auto (probe-chosen branching)",
    "fixed:epochs=16": "fixed, 16 epochs (staged's and distill's budget)",
    "fixed:view_labels=clip-majority": "fixed, trained on clip-majority views",
}


def _ms(block: dict[str, Any] | None, digits: int = 3, signed: bool = False) -> str:
    if not block or block.get("mean") is None:
        return "—"
    sign = "+" if signed else ""
    std = "" if block.get("std") is None else f" ± {block['std']:.{digits}f}"
    return f"{block['mean']:{sign}.{digits}f}{std}".replace("-", "−")


def rows(summary: dict[str, Any]) -> list[tuple[float, list[str]]]:
    points = {p["method"]: p for p in summary["deployment"]["points"]}
    out = []
    for name, e in summary["methods"].items():
        if not e["n"]:
            continue
        m = e["metrics"]
        dm = e["delta_m"] if e["joint"] else None
        label = LABELS.get(name, name)
        cells = [label, str(e["n"]), _ms(m["map50"]), _ms(m["accuracy"]),
                 _ms(m["clip_accuracy"]),
                 _ms(dm, 1, True) if dm and dm.get("available") else "reference",
                 f"{points[name]['latency_ms']:.1f}" if name in points else "—"]
        out.append((dm["mean"] if dm and dm.get("mean") is not None else -1e9, cells))
    for name, e in (summary.get("compressed") or {}).items():
        p = points.get(name, {})
        dm = ({"mean": p["delta_m"], "std": p.get("delta_m_std")}
              if p.get("delta_m") is not None else None)
        cells = [f"{LABELS.get(e['of'], e['of'])}, {e['kind'].upper()} graph", str(len(e["seeds"])),
                 _ms(e["metrics"].get("map50")), _ms(e["metrics"].get("accuracy")), "—",
                 _ms(dm, 1, True), f"{p['latency_ms']:.1f}" if "latency_ms" in p else "—"]
        out.append((dm["mean"] if dm else -1e9, cells))
    return sorted(out, key=lambda r: -r[0])


def main(path: str) -> None:
    summary = json.loads(Path(path).read_text())
    runtime = summary["deployment"]["runtime_label"]
    split = ", ".join(summary["scored_on"])
    print(f"| method ({split}) | seeds | mAP@0.5 | view accuracy | view accuracy per clip | "
          f"Δm vs single-task (%) | e2e latency, {runtime} (ms) |")
    print("|---|---|---|---|---|---|---|")
    for _, cells in rows(summary):
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/study_table.py SUMMARY_JSON")
    main(sys.argv[1])
