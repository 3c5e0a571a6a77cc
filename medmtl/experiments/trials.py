"""The trials of a tuning study, read from Optuna's storage: the sampler each trial draws with
(TPE seeded by (seed, trial number), random for its start-up trials) and what it actually was,
the distinct completed configurations, and the places of the budget already claimed. Used by
`medmtl.experiments.tune`."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

STARTUP_TRIALS = 5  # TPE draws its first min(5, budget) configurations at random


def n_startup(trials: int) -> int:
    """TPE's random start-up trials for a budget of `trials`."""
    return min(STARTUP_TRIALS, trials)


def _sampler(seed: int, number: int, startup: int) -> Any:
    """The TPE sampler of trial `number`, seeded by (seed, number): trial 0 by `seed` alone, and
    processes that run at once, or a search resumed later, never share a random sequence.
    `constant_liar`: the trials running elsewhere count as bad, so TPE does not draw next to
    them."""
    import optuna

    s = seed if number == 0 else int(np.random.SeedSequence([seed, number]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=s, n_startup_trials=startup, constant_liar=True)


def sampler_plan(trials: int) -> str:
    """What the sampler will be for a budget of `trials`, in words."""
    k = n_startup(trials)
    if trials <= k:
        return (f"random (a budget of {trials} is within TPE's {k} random start-up trials: every "
                "configuration is a random draw)")
    return f"TPE (first {k} trials random)"


def _key(t: Any) -> tuple[tuple[str, float], ...]:
    return tuple(sorted(t.params.items()))


def _distinct_complete(study: Any) -> list[Any]:
    """The complete trials, the first of each parameter set only: a repeated configuration is
    not a new point of the budget."""
    import optuna

    seen: set[tuple[tuple[str, float], ...]] = set()
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state == optuna.trial.TrialState.COMPLETE and _key(t) not in seen:
            seen.add(_key(t))
            out.append(t)
    return out


def _claimed(study: Any, before: int | None = None) -> tuple[int, int]:
    """(distinct complete configurations, running trials) of the study, of the trials numbered
    below `before` when given: the places of the budget already taken."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
    seen: set[tuple[tuple[str, float], ...]] = set()
    running = 0
    for t in study.get_trials(deepcopy=False, states=states):
        if before is not None and t.number >= before:
            continue
        if t.state == optuna.trial.TrialState.RUNNING:
            running += 1
        else:
            seen.add(_key(t))
    return len(seen), running


def _sampler_record(trials: list[Any], budget: int, seed: int) -> dict[str, Any]:
    """The sampler planned for the budget and what drew each configuration, counted: "TPE" only
    when TPE drew at least one (a budget within its random start-up never gets there)."""
    drawn = Counter(t.user_attrs.get("drawn_by") or "unknown" for t in trials if t.params)
    text = f"{drawn.get('random', 0)} drawn at random, {drawn.get('TPE', 0)} by TPE"
    text += "".join(f", {n} {how}" for how, n in sorted(drawn.items())
                    if how not in ("random", "TPE"))
    return {"name": "TPE" if drawn.get("TPE") else "random", "planned": sampler_plan(budget),
            "n_startup_trials": n_startup(budget), "seed": f"({seed}, trial number)",
            "constant_liar": True, "drawn": dict(drawn), "text": text}
