"""When the report may name a best method: the evidence rules applied to the recommendations.

A comparison at a tiny budget crowns noise (one seed, mAP@0.5 0.027 against 0.007: "+277 %").
The accuracy-first advice names a best method only when

* every compared method ran at least ``MIN_SEEDS`` seeds (a paired test needs two);
* the top method learnt both tasks: its mean mAP@0.5 is above ``MAP50_FLOOR`` and its view
  accuracy is above the majority-class rate of the scored split (always answering the commonest
  view, read from the confusion matrix in metrics.json);
* every other method is significantly lower (paired t-test across seeds, Holm-adjusted over the
  comparisons with the top, `medmtl.report.recommendations.accuracy_first`): the lead is
  beyond seed noise;
* a top method that trained longer than the baseline (staged and distill count their source
  run's epochs) beats the budget-matched control (`medmtl.report.budget`).

Otherwise it says "no method can be recommended" and why. The efficiency pick and the latency
budget pick need the seeds too; when no joint method learnt both tasks every recommendation is
withheld (`no_learning`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medmtl.report.budget import budget_gaps
from medmtl.report.collect import Run

__all__ = ["MAP50_FLOOR", "MIN_SEEDS", "accuracy_gaps", "apply_evidence", "learning_gaps",
           "majority_rate", "no_learning", "withheld_text"]

MIN_SEEDS = 2
MAP50_FLOOR = 0.05


def majority_rate(runs: Sequence[Run], method: str) -> float | None:
    """The share of the commonest true view in the scored split (mean over the method's runs),
    from metrics.json's classification.confusion (rows: true views); None without one."""
    rates = []
    for r in runs:
        if r.method != method or not r.metrics:
            continue
        cm = (r.metrics.get("classification") or {}).get("confusion")
        if isinstance(cm, list) and cm:
            rows = [float(sum(row)) for row in cm]
            if sum(rows) > 0:
                rates.append(max(rows) / sum(rows))
    return sum(rates) / len(rates) if rates else None


def learning_gaps(runs: Sequence[Run], agg: dict[str, Any], method: str) -> list[str]:
    """Why `method` shows no learning: mAP@0.5 not above the floor, view accuracy not above the
    majority-class rate ([] when both are, or cannot be checked)."""
    mm = agg["methods"][method]["metrics"]
    out = []
    mp = mm["map50"]["mean"]
    if mp is not None and not mp > MAP50_FLOOR:
        out.append(f"{method}'s mAP@0.5 {mp:.3f} is not above the floor {MAP50_FLOOR:g}")
    acc, maj = mm["accuracy"]["mean"], majority_rate(runs, method)
    if acc is not None and maj is not None and not acc > maj:
        out.append(f"{method}'s view accuracy {acc:.3f} is not above the majority-class rate "
                   f"{maj:.3f} (always answering the commonest view)")
    return out


def _joint(agg: dict[str, Any]) -> list[str]:
    return [m for m, e in agg["methods"].items() if e["joint"] and e["n"] > 0]


def no_learning(runs: Sequence[Run], agg: dict[str, Any]) -> str | None:
    """The reason to withhold every recommendation: no joint method learnt both tasks."""
    joint = _joint(agg)
    gaps = {m: learning_gaps(runs, agg, m) for m in joint}
    if not joint or not all(gaps.values()):
        return None
    shown = "; ".join(g for m in joint for g in gaps[m][:1])
    return ("No recommendation: no method learnt both tasks, so differences between them are "
            f"noise ({shown}). Train longer (more epochs or images) and report again.")


def _seed_gaps(agg: dict[str, Any]) -> list[str]:
    few = [f"{m} ({agg['methods'][m]['n']})" for m in _joint(agg)
           if agg["methods"][m]["n"] < MIN_SEEDS]
    if not few:
        return []
    return [f"{', '.join(few)} ran fewer than {MIN_SEEDS} seeds, so seed noise cannot be told "
            "from a difference (`medmtl compare --seeds 3`)"]


def accuracy_gaps(runs: Sequence[Run], agg: dict[str, Any], acc: dict[str, Any]) -> list[str]:
    """Why the accuracy-first advice may not name ``acc["chosen"]`` ([] when it may): too few
    seeds, no learning, a longer budget than its control, or a lead within seed noise (on the
    confirming split when a val choice is tested on test). Needs the verdicts against the chosen
    method (``acc["ranking"]``'s ``vs_best``)."""
    top = acc.get("chosen")
    seeds = _seed_gaps(agg)
    why = list(seeds)
    if top is None:
        return why
    why += learning_gaps(runs, agg, top)
    why += budget_gaps(agg, top)
    tied = [r["method"] for r in acc["ranking"] if r["method"] != top
            and (r.get("vs_best") or {}).get("verdict") != "worse"]
    if tied and not seeds and acc.get("confirmed_on"):
        why.append(f"{top}, chosen on {acc['chosen_on']}, is not confirmed on "
                   f"{acc['confirmed_on']}: {', '.join(tied)} not significantly lower there "
                   "(within seed noise or reversed: paired t-test, Holm-adjusted)")
    elif tied and not seeds:
        why.append(f"the lead of {top} over {', '.join(tied)} is within seed noise "
                   "(not significantly lower: paired t-test, Holm-adjusted)")
    return why


def withheld_text(why: Sequence[str], advice: str) -> str:
    """The accuracy-first sentence when ``why`` withholds the pick: the reasons, then the advice
    it would have given (``advice``: the sentence after its "Accuracy first ...: " head)."""
    return ("Accuracy first: no method can be recommended: " + "; ".join(why)
            + f". For reference only: {advice}")


def apply_evidence(agg: dict[str, Any], eff: dict[str, Any],
                   budget: dict[str, Any] | None) -> None:
    """Withdraw the efficiency and latency-budget picks (in place) when a compared method ran
    too few seeds; the accuracy pick's evidence is :func:`accuracy_gaps`, applied where that
    advice is written."""
    seeds = _seed_gaps(agg)
    if seeds and eff.get("method") is not None:
        eff.update(method=None, tradeoff=None, why_no_pick=list(seeds))
        eff["text"] = eff["text"].split(" Pick: ")[0] + f" No pick is made: {'; '.join(seeds)}."
    if seeds and budget is not None and budget.get("method") is not None:
        budget.update(method=None, why_no_pick=list(seeds))
        budget["text"] = (f"{budget['text'].split(': ', 1)[0]}: no pick is made: "
                          f"{'; '.join(seeds)}; within it: {', '.join(budget['within'])}.")
