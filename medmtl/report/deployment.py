"""The report's deployment section: the Pareto front of Δm against end-to-end latency as blocks
for :mod:`medmtl.report.render` (the numbers come from summary.json's ``deployment`` block,
:func:`medmtl.report.pareto.analyse`)."""

from __future__ import annotations

from typing import Any

from medmtl.report.pareto import RUNTIMES
from medmtl.report.recommendations import fmt_latency

TITLE = "Deployment: Δm against end-to-end latency (Pareto front)"


def _ms(v: float | None) -> str:
    return "n/a" if v is None else fmt_latency(v)


def deployment_blocks(summary: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Heading, how the figures were made, the front, a table per method, what was left out
    and, when a budget was given, its advice."""
    dep = summary.get("deployment")
    if not dep:
        return []
    label = dep["runtime_label"]
    b: list[tuple[Any, ...]] = [("h", 2, TITLE)]
    includes = "; ".join(dep["includes"]) or "n/a"
    threads = ", ".join(map(str, dep["threads"])) or "n/a"
    b.append(("p", f"Latency: {label}, end to end per image ({includes}). Per run the median of "
                   "the timed calls after warm-up, per method the mean over its seeds; "
                   f"threads: {threads}. Noise band: half the interquartile range of the timed "
                   "calls, at least half the spread between a method's seeds; "
                   f"{dep['tie_rule']}. Accuracy: the method's Δm (%). {dep['optimal_rule']}. "
                   "Other latency figures: `medmtl report --latency-runtime "
                   f"{'|'.join(RUNTIMES)}`."))
    if dep["points"] and not dep.get("retimed_together"):
        b.append(("p", "Caution: some of these latencies were measured at the end of each run's "
                       "training, where runs in parallel disturb each other's timings; `medmtl "
                       "report DIR --retime` re-times all models together on one machine."))
    if dep["front"]:
        b.append(("p", "Pareto-optimal, fastest first: " + ", ".join(dep["front"]) + "."))
    others = [rt for rt in RUNTIMES if any(rt in p["other_runtimes_ms"] for p in dep["points"])]
    rows = []
    for p in dep["points"]:
        std = "" if p["delta_m_std"] is None else f" ± {p['delta_m_std']:.2f}"
        fwd = ((summary["methods"].get(p["method"]) or {}).get("metrics") or {}).get(
            "ms_per_image", {}).get("mean")
        rows.append([p["method"], f"{p['delta_m']:+.2f}{std}", _ms(p["latency_ms"]),
                     _ms(p["noise_ms"]), _ms(p["p90_ms"])]
                    + [_ms(p["other_runtimes_ms"].get(rt)) for rt in others]
                    + [_ms(fwd), "yes" if p["pareto"] else "no",
                       ", ".join(p["dominated_by"]) or "—"])
    b.append(("table", ["method", "Δm (%)", f"e2e {label} (ms)", "noise ± (ms)", "p90 (ms)"]
              + [f"e2e {RUNTIMES[rt][1]} (ms)" for rt in others]
              + ["forward only (ms)", "Pareto-optimal", "dominated by"], rows))
    if dep["excluded"]:
        b.append(("p", "Not on the front: " + "; ".join(f"{m} ({why})"
                                                        for m, why in dep["excluded"].items())
                  + "."))
    budget = (summary.get("recommendations") or {}).get("latency_budget")
    if budget:
        b.append(("p", budget["text"]))
    return b
