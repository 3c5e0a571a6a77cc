"""Tuning with an equal budget: every method gets the same number of trials of the same length.

`tune(...)` runs, per method, an Optuna study (TPE, seeded) over that method's own
hyper-parameters on the val split: the learning rate for every method, the task weight of
`fixed`, and each balancer option whose field declares a `search` range (GradNorm's alpha, CAGrad's
c, DWA's temperature, ...). A trial is a real, shorter training run whose objective is the val
selection score of its best checkpoint (`evaluation.selection`, Δm against the single-task
references by default, trained first): the same number a run uses to pick its checkpoint.
Studies live in a database (`<out>/tune.db`, SQLite, or any Optuna storage URL shared by several
machines), so a killed search resumes: finished trials are kept, a trial left
RUNNING by a dead process on this host is marked failed and its parameters are tried again, and
only the missing trials run (the budget counts distinct configurations; the resumed sampler is
re-seeded by the number of stored trials, so it does not draw the first process's sequence
again). The best configuration of each method then runs over the seeds as
`<method>@tuned` through `compare`, and the report shows the tuned values and the search trace
(`<out>/tune.json`).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from medmtl.balancing import balancer_class
from medmtl.config import TrainConfig, merge_dicts
from medmtl.engine.storage import check_storage, open_error
from medmtl.evaluation.selection import selection_score
from medmtl.methods import build_config, run_name

LR_RANGE = (0.25, 4.0)  # the learning rate searched in [lr / 4, lr * 4], log scale
FIXED_WEIGHT_RANGE = (0.05, 5.0)  # fixed: the classify weight (detect stays 1), log scale


def search_space(cfg: TrainConfig) -> dict[str, tuple[float, float, bool]]:
    """name -> (low, high, log) of what is tuned for this method's config."""
    space = {"lr": (cfg.lr * LR_RANGE[0], cfg.lr * LR_RANGE[1], True)}
    if cfg.balancer.name == "fixed" and len(cfg.model.tasks) == 2:
        space["w_classify"] = (*FIXED_WEIGHT_RANGE, True)
    for name, f in balancer_class(cfg.balancer.name).Options.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        rng = extra.get("search")
        if isinstance(rng, dict):
            space[name] = (float(rng["low"]), float(rng["high"]), bool(rng.get("log", False)))
    return space


def trial_overrides(params: dict[str, float]) -> dict[str, Any]:
    """Config overrides of a trial's parameters (the inverse of `search_space`'s names)."""
    over: dict[str, Any] = {}
    for k, v in params.items():
        if k == "lr":
            over["lr"] = v
        elif k == "w_classify":
            over = merge_dicts(over, {"balancer": {"weights": {"detect": 1.0, "classify": v}}})
        else:
            over = merge_dicts(over, {"balancer": {k: v}})
    return over


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recover_stale(study: Any, console: Console) -> None:
    """Trials left RUNNING by a dead process of this host: failed, their parameters re-queued."""
    import optuna

    host = socket.gethostname()
    for tr in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if tr.user_attrs.get("host") == host and not _alive(int(tr.user_attrs.get("pid", -1))):
            study.tell(tr.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(tr.params, skip_if_exists=False)
            console.print(f"{study.study_name}: trial {tr.number} was killed; its parameters "
                          "run again")


def _sampler(seed: int, n_before: int, trials: int) -> Any:
    """TPE seeded by (seed, trials already in the study): a fresh search is seeded by `seed`
    alone; a resumed one draws a new, still reproducible, sequence."""
    import optuna

    s = seed if n_before == 0 else int(np.random.SeedSequence([seed, n_before]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=s, n_startup_trials=min(5, trials))


def _distinct_complete(study: Any) -> list[Any]:
    """The complete trials, the first of each parameter set only: a repeated configuration is
    not a new point of the budget."""
    import optuna

    seen: set[tuple[tuple[str, float], ...]] = set()
    out = []
    for t in study.trials:
        key = tuple(sorted(t.params.items()))
        if t.state == optuna.trial.TrialState.COMPLETE and key not in seen:
            seen.add(key)
            out.append(t)
    return out


def _objective(method: str, data: str, base: dict[str, Any], out: Path,
               space: dict[str, tuple[float, float, bool]]) -> Any:
    from medmtl.engine.trainer import train

    def run(trial: Any) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        params = {k: trial.suggest_float(k, lo, hi, log=log) for k, (lo, hi, log) in space.items()}
        over = merge_dicts(base, trial_overrides(params))
        over.update({"data": data, "out": str(out / f"t{trial.number}")})
        cfg = build_config(method, over)
        run_dir = train(cfg, progress=False)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        trial.set_user_attr("run_dir", str(run_dir))
        # val: the split that selects checkpoints, never test
        return selection_score(metrics, cfg.select, cfg.select_refs)

    return run


def _open_study(method: str, storage: str) -> Any:
    """The study of `method` in `storage` (created, or loaded to resume); what SQLAlchemy or
    Optuna raise while opening it (a refused login, a foreign database) is one line."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return optuna.create_study(study_name=method, storage=storage, load_if_exists=True,
                                   direction="maximize")
    except (SQLAlchemyError, optuna.exceptions.OptunaError, RuntimeError, ValueError) as e:
        raise open_error(storage, e) from e


def tune(data: str, methods: list[str], trials: int, out: str | Path,
         overrides: dict[str, Any] | None = None, storage: str | None = None, seed: int = 0,
         console: Console | None = None, references: list[str] | None = None,
         seeds: list[int] | None = None) -> dict[str, Any]:
    """Run (or finish) `trials` trials per method; returns and writes `<out>/tune.json`.

    With `references` (the single-task methods, e.g. detect and classify) and Δm selection, they
    are trained first over `seeds` (as `compare` would, into `<out>/runs/`), and every trial
    selects its checkpoint and is scored by Δm against their val figures."""
    import optuna

    console = console or Console(stderr=True)
    if storage is not None:  # a bad --storage is one line before any work
        check_storage(storage)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'tune.db').resolve()}"
    base = dict(overrides or {})
    base.setdefault("seed", seed)
    refs = _references(data, references or [], seeds or [seed], out, overrides or {}, console)
    if refs:
        base["select_refs"] = refs
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    probe = build_config(methods[0], {**base, "data": data}) if methods else None
    result: dict[str, Any] = {"trials_per_method": trials, "storage": storage,
                              "objective": "val selection score of the best epoch ("
                              + (probe.select if probe else "delta-m") + ")",
                              "select_refs": refs or None, "methods": {}}
    for method in methods:
        cfg = build_config(method, {**base, "data": data})
        space = search_space(cfg)
        study = _open_study(method, storage)
        # a resumed search must not draw again what the first process drew: the sampler's random
        # state is not stored, so it is seeded by the number of trials already in the study
        study.sampler = _sampler(seed, len(study.trials), trials)
        _recover_stale(study, console)
        done = _distinct_complete(study)
        missing = trials - len(done)
        console.print(f"{method}: {len(done)}/{trials} trials done; tuning "
                      f"{', '.join(space)}")
        if missing > 0:
            study.optimize(_objective(method, data, base, out / "trials" / run_name(method), space),
                           n_trials=missing, catch=())
        done = _distinct_complete(study)[:trials]
        best = max(done, key=lambda t: t.value)
        result["methods"][method] = {
            "space": {k: list(v) for k, v in space.items()},
            "best": {"params": best.params, "value": best.value, "trial": best.number},
            "overrides": trial_overrides(best.params),
            "trials": [{"number": t.number, "params": t.params, "value": t.value,
                        "state": t.state.name} for t in study.trials],
        }
        console.print(f"{method}: best val score {best.value:.4f} with "
                      + ", ".join(f"{k}={v:.4g}" for k, v in best.params.items()))
    (out / "tune.json").write_text(json.dumps(result, indent=2))
    return result


def _references(data: str, references: list[str], seeds: list[int], out: Path,
                overrides: dict[str, Any], console: Console) -> dict[str, float]:
    """Train the single-task reference runs (skipping finished ones) and return their Δm
    references; {} when not asked, when selection is not Δm or references are given."""
    from medmtl.engine.compare import plan_runs, reference_values, run_compare

    single = [m for m in references
              if len(build_config(m, {**overrides, "data": data}).model.tasks) == 1]
    probe = build_config("fixed", {**overrides, "data": data})
    if not single or probe.select != "delta-m" or probe.select_refs:
        return {}
    console.print(f"Δm references first: {', '.join(single)} over {len(seeds)} seed(s)")
    run_compare(data, single, seeds, out, overrides=overrides, console=console, report=False)
    refs = reference_values(plan_runs(data, single, seeds, out, overrides))
    return refs if len(refs) == 4 else {}


def tuned_variants(result: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """`<method>@tuned` -> (method, the best trial's overrides), for `run_compare(variants=...)`."""
    return {f"{m}@tuned": (m, r["overrides"]) for m, r in result["methods"].items()}


__all__ = ["search_space", "trial_overrides", "tune", "tuned_variants"]
