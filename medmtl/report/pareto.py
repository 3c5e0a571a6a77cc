"""Deployment advice: the Pareto front of accuracy (Δm, higher better) against end-to-end
latency (lower better), and the picks made from it.

The front is computed by pure functions on `Point`s (`dominates`, `pareto_front`, `dominators`,
`budget_pick`, `tolerance_pick`); `analyse` builds the points from the runs (Δm from
:func:`medmtl.report.stats.delta_m` through the aggregate, latency from metrics.json's
``efficiency.latency_e2e*_ms``) and returns what summary.json records under ``deployment``.
Compressed variants (``<method>+int8``, ``+half``: `collect.compressed_runs`) are points like the
others when the aggregate carries them (`stats.compressed_entries`); they have only ONNX Runtime
latencies, so they are on the front with ``--latency-runtime ort-cpu``.

Ties: two latencies differing by no more than the sum of their noise bands are equal (neither is
faster), and so are two Δm differing by no more than the sum of their seed standard deviations
(a 0.7-point lead with standard deviations of 3 to 9 points is no lead). A method's latency is the mean over its runs of their medians; its noise
band is the largest of its runs' (half the interquartile range of the timed calls), and at least
half the range of its runs' medians (the seeds of one method share its architecture, so their
differences are measurement noise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medmtl.report.collect import Run

# runtime name -> (metrics.json key infix, label)
RUNTIMES: dict[str, tuple[str, str]] = {
    "torch-cpu": ("", "PyTorch CPU"),
    "ort-cpu": ("_ort", "ONNX Runtime CPU"),
    "torch-cuda": ("_cuda", "PyTorch CUDA"),
}
DEFAULT_RUNTIME = "torch-cpu"
TIE_RULE = ("two latencies tie (neither is faster) when they differ by no more than the sum of "
            "their noise bands; two Δm tie (neither is more accurate) when they differ by no more "
            "than the sum of their standard deviations over seeds")
OPTIMAL_RULE = ("A method is Pareto-optimal when no other method has a Δm at least as high and "
                "a latency at least as low (ties count as equal), and is better on one of them")


@dataclass(frozen=True)
class Point:
    method: str
    accuracy: float  # Δm (%), higher is better
    latency: float  # ms, lower is better
    noise: float = 0.0  # ms: half-width of the latency's noise band
    accuracy_noise: float = 0.0  # Δm points: its standard deviation over seeds


def latency_tie(a: Point, b: Point) -> bool:
    """Within the sum of the noise bands (plus 1e-9 ms for floating-point rounding)."""
    return abs(a.latency - b.latency) <= a.noise + b.noise + 1e-9


def accuracy_tie(a: Point, b: Point) -> bool:
    """Δm within the sum of the seed standard deviations (plus 1e-9 for rounding)."""
    return abs(a.accuracy - b.accuracy) <= a.accuracy_noise + b.accuracy_noise + 1e-9


def dominates(a: Point, b: Point) -> bool:
    """``a`` is at least as accurate and at least as fast as ``b`` (a tie, within the noise
    bands, counts as equal), and better on one of the two beyond its noise."""
    tie, acc_tie = latency_tie(a, b), accuracy_tie(a, b)
    faster = not tie and a.latency < b.latency
    more = not acc_tie and a.accuracy > b.accuracy
    return (acc_tie or more) and (tie or faster) and (more or faster)


def dominators(points: Sequence[Point]) -> dict[str, list[str]]:
    """Method -> the methods that dominate it (empty list: Pareto-optimal)."""
    return {p.method: [q.method for q in points if q is not p and dominates(q, p)]
            for p in points}


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The Pareto-optimal points, fastest first (then most accurate, then by name). Never empty
    when ``points`` is not: the fastest of the most accurate points is always on it."""
    dom = dominators(points)
    front = [p for p in points if not dom[p.method]]
    return sorted(front, key=lambda p: (p.latency, -p.accuracy, p.method))


def budget_pick(points: Sequence[Point], budget_ms: float) -> Point | None:
    """The most accurate point whose latency (median) is within ``budget_ms``; among equally
    accurate ones the fastest. None when no point fits."""
    fit = [p for p in points if p.latency <= budget_ms]
    return min(fit, key=lambda p: (-p.accuracy, p.latency, p.method)) if fit else None


def tolerance_pick(front: Sequence[Point], tolerance: float) -> Point | None:
    """The fastest point of ``front`` whose accuracy is at most ``tolerance`` below the best."""
    if not front:
        return None
    best = max(p.accuracy for p in front)
    near = [p for p in front if p.accuracy >= best - tolerance]
    return min(near, key=lambda p: (p.latency, -p.accuracy, p.method))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _run_latency(run: Run, infix: str) -> dict[str, float] | None:
    eff = (run.metrics or {}).get("efficiency") or {}
    ms = eff.get(f"latency_e2e{infix}_ms")
    if not _finite(ms):
        return None
    noise = eff.get(f"latency_e2e{infix}_noise_ms")
    p90 = eff.get(f"latency_e2e{infix}_p90_ms")
    return {"ms": float(ms), "noise": float(noise) if _finite(noise) else 0.0,
            "p90": float(p90) if _finite(p90) else math.nan}


def method_latency(runs: Sequence[Run], method: str, runtime: str = DEFAULT_RUNTIME
                   ) -> dict[str, Any] | None:
    """Mean over the method's finished runs of their end-to-end medians, with the noise band
    described in the module docstring; None when no run has the figure."""
    infix = RUNTIMES[runtime][0]
    lats = [x for r in runs if r.method == method and r.finished
            if (x := _run_latency(r, infix)) is not None]
    if not lats:
        return None
    meds = [x["ms"] for x in lats]
    p90 = [x["p90"] for x in lats if math.isfinite(x["p90"])]
    return {"ms": sum(meds) / len(meds),
            "noise_ms": max(max(x["noise"] for x in lats), (max(meds) - min(meds)) / 2.0),
            "p90_ms": sum(p90) / len(p90) if p90 else None, "runs": len(lats)}


def _no_latency_reason(runs: Sequence[Run], method: str, runtime: str) -> str:
    infix = RUNTIMES[runtime][0]
    skipped = {str(((r.metrics or {}).get("efficiency") or {}).get(f"latency_e2e{infix}_skipped"))
               for r in runs if r.method == method and r.finished}
    skipped.discard("None")
    why = f" ({'; '.join(sorted(skipped))})" if skipped else ""
    return (f"no end-to-end {RUNTIMES[runtime][1]} latency in metrics.json{why}; "
            "`medmtl report DIR --retime` measures it")


def analyse(runs: Sequence[Run], agg: dict[str, Any],
            runtime: str = DEFAULT_RUNTIME) -> dict[str, Any]:
    """Points (Δm, latency) of the joint methods, the front (fastest first), each point's
    dominators and the methods left out with the reason; the ``deployment`` block of
    summary.json."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown latency runtime {runtime!r}; choose from "
                         f"{', '.join(RUNTIMES)}")
    infix, label = RUNTIMES[runtime]
    points: list[Point] = []
    rows: dict[str, dict[str, Any]] = {}
    excluded: dict[str, str] = {}
    for m, e in agg["methods"].items():
        dm = e.get("delta_m") or {}
        if not e["n"]:
            excluded[m] = "no finished run"
        elif not e["joint"]:
            excluded[m] = ("single-task reference: no Δm" if m in ("detect", "classify")
                           else "not a joint method: no Δm")
        elif not dm.get("available"):
            excluded[m] = f"Δm unavailable: {dm.get('reason')}"
        elif not _finite(dm.get("mean")):
            excluded[m] = "non-finite Δm"
        elif (lat := method_latency(runs, m, runtime)) is None:
            excluded[m] = (f"compressed ONNX graph: no {label} latency (it runs on ONNX "
                           "Runtime; --latency-runtime ort-cpu)" if e.get("compressed")
                           else _no_latency_reason(runs, m, runtime))
        else:
            points.append(Point(m, float(dm["mean"]), lat["ms"], lat["noise_ms"],
                                float(dm.get("std") or 0.0)))
            others = {rt: x["ms"] for rt in RUNTIMES
                      if rt != runtime and (x := method_latency(runs, m, rt)) is not None}
            rows[m] = {"method": m, "delta_m": float(dm["mean"]), "delta_m_std": dm.get("std"),
                       "latency_ms": lat["ms"], "noise_ms": lat["noise_ms"],
                       "p90_ms": lat["p90_ms"], "latency_runs": lat["runs"],
                       "other_runtimes_ms": others,
                       **({"compressed": e["compressed"], "of": e["of"]} if e.get("compressed")
                          else {})}
    dom = dominators(points)
    for p in points:
        rows[p.method].update({"pareto": not dom[p.method], "dominated_by": dom[p.method]})
    effs = [((r.metrics or {}).get("efficiency") or {}) for r in runs if r.finished
            and r.method in rows]
    return {
        "runtime": runtime, "runtime_label": label, "latency_key": f"latency_e2e{infix}_ms",
        "accuracy": "delta_m", "tie_rule": TIE_RULE, "optimal_rule": OPTIMAL_RULE,
        "includes": sorted({str(x["latency_e2e_includes"]) for x in effs
                            if x.get("latency_e2e_includes")}),
        "threads": sorted({int(x["latency_e2e_threads"]) for x in effs
                           if _finite(x.get("latency_e2e_threads"))}),
        "retimed_together": bool(effs) and all(str(x.get("latency_e2e_context", ""))
                                               .startswith("re-timed") for x in effs),
        "points": [rows[p.method] for p in sorted(points, key=lambda p: (p.latency, p.method))],
        "front": [p.method for p in pareto_front(points)],
        "excluded": excluded,
    }


def points_of(deployment: dict[str, Any]) -> list[Point]:
    """The `Point`s back from an `analyse` result (summary.json's ``deployment``)."""
    return [Point(r["method"], r["delta_m"], r["latency_ms"], r["noise_ms"],
                  float(r.get("delta_m_std") or 0.0)) for r in deployment["points"]]
