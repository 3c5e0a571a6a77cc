"""The compressed graphs' own scores (``<run>/compressed/<kind>/metrics.json``, e.g. INT8), beside
the float model of the same run: mean ± std over seeds of each accuracy metric and the change
against the float model, paired by seed.

A compressed graph is the float run's model after a deterministic conversion, so the change is
reported as measured with its spread over seeds; no significance verdict is drawn on it (three
conversions of three models are not a sample of a method). Its latency is on the Pareto front
(:mod:`medmtl.report.pareto`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medmtl.report.collect import METRIC_BY_KEY, Run, compressed_runs
from medmtl.report.markup import Block, fmt_ms
from medmtl.report.significance import per_seed, seed_block

KEYS = ("map50", "map50_95", "accuracy", "macro_f1")


def compressed_summary(runs: Sequence[Run]) -> dict[str, Any]:
    """Per compressed variant (``<method>+<kind>``): the float method it comes from, its seeds,
    and per metric its scores and the per-seed change against the float run of the same seed."""
    variants = compressed_runs(runs)
    out: dict[str, Any] = {}
    for name in sorted({v.method for v in variants}):
        of, kind = name.rsplit("+", 1)
        mine = [v for v in variants if v.method == name]
        metrics, change = {}, {}
        for key in KEYS:
            values = per_seed(mine, name, key)
            if not values:
                continue
            base = per_seed(runs, of, key)
            metrics[key] = seed_block(values)
            change[key] = seed_block({s: v - base[s] for s, v in values.items() if s in base})
        out[name] = {"of": of, "kind": kind, "seeds": sorted(v.seed for v in mine),
                     "split": sorted({str(v.split) for v in mine}), "metrics": metrics,
                     "change": change}
    return out


def _signed(cell: str) -> str:
    return cell if cell.startswith(("-", "n")) else f"+{cell}"


def compressed_blocks(summary: dict[str, Any]) -> list[Block]:
    comp = summary.get("compressed") or {}
    if not comp:
        return []
    keys = [k for k in KEYS if any(k in e["metrics"] for e in comp.values())]
    rows = []
    for name, e in comp.items():
        rows.append([name, e["of"], str(len(e["seeds"]))]
                    + [f"{fmt_ms(e, k)} ({_signed(fmt_ms({'metrics': e['change']}, k))})"
                       if k in e["metrics"] else "n/a" for k in keys])
    split = ", ".join(sorted({s for e in comp.values() for s in e["split"]}))
    return [("h", 2, "Compressed graphs"),
            ("p", f"Each graph scored by `medmtl val` on its run's {split} split "
                  "(`<run>/compressed/<kind>/metrics.json`), mean ± std over seeds; in brackets "
                  "the change against the float model of the same seed, mean ± std of the "
                  "paired differences. Measured, not tested: a conversion of a trained model is "
                  "not a sample of a method. Their latency is in the deployment table."),
            ("table", ["graph", "float model", "seeds"] + [METRIC_BY_KEY[k].label for k in keys],
             rows)]
