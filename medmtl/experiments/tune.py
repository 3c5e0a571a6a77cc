"""Tuning with an equal budget: every method gets the same number of trials of the same length.

`tune(...)` runs, per method, an Optuna study (TPE, seeded) over that method's own
hyper-parameters on the val split: the learning rate for every method, the task weight of
`fixed`, and each balancer option whose field declares a `search` range (GradNorm's alpha, CAGrad's
c, DWA's temperature, ...). A trial is a real, shorter training run whose objective is the val
selection score of its best checkpoint (`evaluation.selection`, Δm against the single-task
references by default, trained first): the same number a run uses to pick its checkpoint.

Studies live in a database (`<out>/tune.db`, SQLite, or an Optuna storage URL such as PostgreSQL
shared by several processes or machines: docs/multi-machine.md). The budget is the study's, not a
process's: every process runs trials until the study holds `trials` distinct completed
configurations, a trial claims its place when it starts (one that starts when the places are
taken ends at once, unrun, and is left out of the counts), and a process whose last places are
being run elsewhere waits for them, so every process reports the same best configuration. Each
trial's sampler is seeded by (seed, trial number) (`experiments.trials`): processes that start
together draw different configurations, a resumed search new ones, reproducibly.

A killed search resumes: finished trials are kept; a trial left RUNNING by a dead process on
this host, or whose heartbeat stopped (`storage.HEARTBEAT_S`, a vanished machine), is failed and
Optuna's retry callback queues its parameters again. A trial that fails on its own (a diverging
configuration: non-finite weights or score, or an error in its run) is counted as failed and the
search goes on, up to `trials` failures in one process. A database lost during the search is one
line (`storage.StorageLost`); the next start resumes. The sampler that actually drew each
configuration (random start-up, TPE, or a re-run) is recorded and printed. Each method's best
then runs over the seeds as `<method>@tuned` (`compare`); the report shows `<out>/tune.json`.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import traceback
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from medmtl.balancing import balancer_class
from medmtl.config import TrainConfig, merge_dicts
from medmtl.errors import MedmtlError, NonFiniteError, clip_text
from medmtl.evaluation.selection import selection_score
from medmtl.experiments.storage import (
    GRACE_S,
    _quiet_heartbeat_errors,
    _storage_cause,
    check_storage,
    lost_error,
    open_error,
    open_storage,
    retry_callback,
    shown,
    storage_errors,
)
from medmtl.experiments.trials import (
    _claimed,
    _distinct_complete,
    _sampler,
    _sampler_record,
    n_startup,
    sampler_plan,
)
from medmtl.fileio import atomic_write_text
from medmtl.methods import build_config, run_name

LR_RANGE = (0.25, 4.0)  # the learning rate searched in [lr / 4, lr * 4], log scale
FIXED_WEIGHT_RANGE = (0.05, 5.0)  # fixed: the classify weight (detect stays 1), log scale
POLL_S = 2.0  # how often a process whose last places run elsewhere looks at the study


class TuneFailed(MedmtlError):
    """No trial of a method completed (every one failed): nothing to pick."""

    exit_code = 1


class _TrialFailed(Exception):
    """A trial that failed on its own (diverged, raised): counted, and the search goes on."""


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


def _orphaned(tr: Any, host: str) -> bool:
    """A RUNNING trial whose process is gone: a dead process of this host, or (any host) one that
    died before it recorded who it was, more than `GRACE_S` seconds ago (no heartbeat either, so
    Optuna's check never fails it)."""
    if "host" not in tr.user_attrs:
        start = tr.datetime_start
        return start is not None and (datetime.now() - start).total_seconds() > GRACE_S
    return tr.user_attrs.get("host") == host and not _alive(int(tr.user_attrs.get("pid", -1)))


def _recover_stale(study: Any, console: Console) -> None:
    """Trials left RUNNING by a dead process of this host: failed at once (no need to wait for
    the heartbeat's grace period), and their parameters queued again by Optuna's retry callback.
    Trials of other hosts are Optuna's heartbeat's (`optuna.storages.fail_stale_trials`)."""
    import optuna

    host, retry = socket.gethostname(), retry_callback()
    for tr in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if _orphaned(tr, host):
            try:
                why = "its process died" if "host" in tr.user_attrs else \
                    "left running with no heartbeat and no record of its process"
                study._storage.set_trial_user_attr(tr._trial_id, "failed", why)
                study.tell(tr.number, state=optuna.trial.TrialState.FAIL)
            except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
                continue  # another process of this host recovered it first
            retry(study, study._storage.get_trial(tr._trial_id))
            console.print(f"{study.study_name}: trial {tr.number} was killed; its parameters "
                          "run again")


def _fail_stale(study: Any) -> None:
    """Optuna's heartbeat check: RUNNING trials without a recent heartbeat are failed and their
    parameters queued again (it also runs before each trial that `optimize` starts)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return clip_text(f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__, 200)


def _guarded(study: Any, inner: Any, trials: int, seed: int) -> Any:
    """The objective every process runs: a trial first claims its place of the budget (or ends
    at once, unrun, as `surplus`), records its host, process and how its configuration was
    drawn, then runs `inner`; its own failure (a diverging configuration, an error in its run)
    becomes `_TrialFailed` with the reason recorded. Storage errors and input errors (which would
    fail every trial alike) end the search."""
    import optuna

    startup = n_startup(trials)
    errors = storage_errors()

    def run(trial: Any) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        if trial.user_attrs.get("failed"):  # a retry inherits the failed trial's attributes
            trial.set_user_attr("failed", None)
        if sum(_claimed(study, before=trial.number)) >= trials:
            trial.set_user_attr("surplus", True)
            raise _TrialFailed("the budget's places were taken by other processes")
        if trial.params:  # a retry: its parameters are given
            how = "re-run"
        else:
            fin = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                           optuna.trial.TrialState.PRUNED))
            how = "random" if len(fin) < startup else "TPE"
        trial.set_user_attr("drawn_by", how)
        study.sampler = _sampler(seed, trial.number, startup)
        try:
            value = inner(trial)
        except errors:
            raise
        except MedmtlError as e:
            if not isinstance(e, NonFiniteError):  # bad input fails every trial alike: the
                trial.set_user_attr("failed", _first_line(e))  # search ends in its one line
                raise
            reason = _first_line(e)
        except Exception as e:  # noqa: BLE001 - a trial's own failure is counted, not fatal
            if os.environ.get("MEDMTL_DEBUG", "") not in ("", "0"):
                traceback.print_exc()
            reason = _first_line(e)
        else:
            if value is not None and math.isfinite(value):
                return float(value)
            reason = f"its val score is {value} (not finite)"
        trial.set_user_attr("failed", reason)
        raise _TrialFailed(reason)

    return run


def _objective(method: str, data: str, base: dict[str, Any], out: Path,
               space: dict[str, tuple[float, float, bool]]) -> Any:
    """A trial: a shorter training run of `method` with the trial's parameters; its value is the
    val selection score of the run's best checkpoint."""
    from medmtl.engine.trainer import train

    def run(trial: Any) -> float:
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


def _open_study(method: str, storage: Any, url: str) -> Any:
    """The study of `method` in `storage` (created, or loaded to resume); what SQLAlchemy or
    Optuna raise while opening it (a refused login, a foreign database) is one line."""
    import optuna

    try:
        return optuna.create_study(study_name=method, storage=storage, load_if_exists=True,
                                   direction="maximize")
    except (*storage_errors(), optuna.exceptions.OptunaError, RuntimeError, ValueError) as e:
        raise open_error(url, e) from e


def _search(study: Any, objective: Any, trials: int, console: Console,
            progress: dict[str, int]) -> int:
    """Run trials in this process until the study holds `trials` distinct completed
    configurations (waiting for those other processes are running), or until `trials` trials
    of this process failed; returns how many failed here. `progress["done"]`: the completed
    configurations last seen (for the line of a storage lost on the way)."""
    import optuna

    method, failed, said_wait = study.study_name, 0, False
    ran: list[Any] = []
    while True:
        _recover_stale(study, console)
        _fail_stale(study)
        done, running = _claimed(study)
        progress["done"] = done
        if done >= trials:
            return failed
        if failed >= trials:
            console.print(f"{method}: stopped after {failed} failed trials in this process; "
                          f"{done} of {trials} configurations completed")
            return failed
        if done + running >= trials:  # the last places are being run by other processes
            if not said_wait:
                console.print(f"{method}: {done}/{trials} done; waiting for the trials other "
                              "processes are running: " + _running_text(study),
                              markup=False, highlight=False)
                said_wait = True
            time.sleep(POLL_S)
            continue
        study.optimize(objective, n_trials=1, catch=(_TrialFailed,),
                       callbacks=[lambda _s, t: ran.append(t)])
        t = ran[-1]
        if t.state == optuna.trial.TrialState.COMPLETE:
            progress["done"] += 1
            console.print(f"{method}: trial {t.number} ({t.user_attrs.get('drawn_by')}) val "
                          f"score {t.value:.4f} with " + _params_text(t.params))
        elif not t.user_attrs.get("surplus"):
            failed += 1
            console.print(f"{method}: trial {t.number} failed, counted as failed, the search "
                          f"goes on: {t.user_attrs.get('failed', 'no result')} ("
                          + _params_text(t.params) + ")", markup=False, highlight=False)


def _running_text(study: Any) -> str:
    import optuna

    return ", ".join(f"{t.number} (host {t.user_attrs.get('host', '?')}, pid "
                     f"{t.user_attrs.get('pid', '?')})" for t in study.get_trials(
                         deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def _params_text(params: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in params.items())


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
    rdb = open_storage(storage)  # a database that cannot be opened: one line before any work
    errors = storage_errors()
    previous_hook = _quiet_heartbeat_errors(errors)
    progress = {"done": 0}
    try:
        base = dict(overrides or {})
        base.setdefault("seed", seed)
        refs = _references(data, references or [], seeds or [seed], out, overrides or {},
                           console)
        if refs:
            base["select_refs"] = refs
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: our line, counted
        probe = build_config(methods[0], {**base, "data": data}) if methods else None
        result: dict[str, Any] = {"trials_per_method": trials, "storage": shown(storage),
                                  "objective": "val selection score of the best epoch ("
                                  + (probe.select if probe else "delta-m") + ")",
                                  "select_refs": refs or None, "methods": {}}
        for method in methods:
            cfg = build_config(method, {**base, "data": data})
            space = search_space(cfg)
            study = _open_study(method, rdb, storage)
            progress["done"] = _claimed(study)[0]
            console.print(f"{method}: {progress['done']}/{trials} trials done; tuning "
                          f"{', '.join(space)}; sampler: {sampler_plan(trials)}")
            inner = _objective(method, data, base, out / "trials" / run_name(method), space)
            _search(study, _guarded(study, inner, trials, seed), trials, console, progress)
            result["methods"][method] = _method_result(study, space, trials, seed)
            r = result["methods"][method]
            console.print(f"{method}: {r['completed']}/{trials} configurations completed, "
                          f"{r['failed']} trial(s) failed; sampler: {r['sampler']['name']} ("
                          f"{r['sampler']['text']})")
            if r["best"] is not None:
                console.print(f"{method}: best val score {r['best']['value']:.4f} with "
                              + _params_text(r["best"]["params"]))
    except Exception as e:
        lost = None if isinstance(e, MedmtlError) else _storage_cause(e, errors)
        if lost is None:
            raise
        raise lost_error(storage, lost, progress["done"]) from None
    finally:
        threading.excepthook = previous_hook
        rdb.remove_session()
        rdb.engine.dispose()
    atomic_write_text(out / "tune.json", json.dumps(result, indent=2))  # workers may share --out
    empty = [m for m, r in result["methods"].items() if r["best"] is None]
    if empty:
        raise TuneFailed(f"no trial of {', '.join(empty)} completed (each failed: "
                         f"{out / 'tune.json'} lists why); fix the cause (e.g. a lower --lr) and "
                         "run the same command again: finished trials are kept")
    return result


def _method_result(study: Any, space: dict[str, tuple[float, float, bool]], trials: int,
                   seed: int) -> dict[str, Any]:
    """tune.json's record of one method: its best configuration, its trials (those that ended
    unrun because the budget was taken are counted apart) and the sampler that ran."""
    import optuna

    every = study.get_trials(deepcopy=False)
    listed = [t for t in every if not t.user_attrs.get("surplus")]
    done = _distinct_complete(study)[:trials]
    best = max(done, key=lambda t: t.value) if done else None
    failed = [t for t in listed if t.state == optuna.trial.TrialState.FAIL]
    return {
        "space": {k: list(v) for k, v in space.items()},
        "best": None if best is None else {"params": best.params, "value": best.value,
                                           "trial": best.number},
        "overrides": trial_overrides(best.params) if best is not None else {},
        "completed": len(done),
        "failed": len(failed),
        "unrun_over_budget": len(every) - len(listed),
        "sampler": _sampler_record(listed, trials, seed),
        "trials": [{"number": t.number, "params": t.params, "value": t.value,
                    "state": t.state.name, "drawn_by": t.user_attrs.get("drawn_by"),
                    "host": t.user_attrs.get("host"), "pid": t.user_attrs.get("pid"),
                    **({"failed": t.user_attrs.get("failed") or "stopped without a result (its "
                                                               "worker vanished)"}
                       if t.state == optuna.trial.TrialState.FAIL else {})}
                   for t in listed],
    }


def _references(data: str, references: list[str], seeds: list[int], out: Path,
                overrides: dict[str, Any], console: Console) -> dict[str, float]:
    """Train the single-task reference runs (skipping finished ones) and return their Δm
    references; {} when not asked, when selection is not Δm or references are given. Several
    tune processes sharing one --out train each reference once: a process waits for those
    another one is training, so every trial of the study is scored against the same figures."""
    from medmtl.experiments.compare import plan_runs, reference_values, run_compare

    single = [m for m in references
              if len(build_config(m, {**overrides, "data": data}).model.tasks) == 1]
    probe = build_config("fixed", {**overrides, "data": data})
    if not single or probe.select != "delta-m" or probe.select_refs:
        return {}
    console.print(f"Δm references first: {', '.join(single)} over {len(seeds)} seed(s)")
    while True:
        # (re-timed by the final comparison, with every other model)
        run_compare(data, single, seeds, out, overrides=overrides, console=console, report=False,
                    retime=False)
        plan = plan_runs(data, single, seeds, out, overrides)
        busy = [r for r in plan if r.status != "finished" and _held(r.run_dir)]
        if not busy:
            break
        console.print("waiting for the reference runs other processes are training: "
                      + ", ".join(r.name for r in busy))
        while any(_held(r.run_dir) for r in busy):
            time.sleep(5 * POLL_S)
    refs = reference_values(plan)
    return refs if len(refs) == 4 else {}


def _held(run_dir: Path) -> bool:
    """Another live process holds the run folder."""
    from medmtl.engine.runlock import probe

    with probe(run_dir) as holder:
        return holder is not None


def tuned_variants(result: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """`<method>@tuned` -> (method, the best trial's overrides), for `run_compare(variants=...)`."""
    return {f"{m}@tuned": (m, r["overrides"]) for m, r in result["methods"].items()
            if r.get("best") is not None}


__all__ = ["TuneFailed", "n_startup", "sampler_plan", "search_space", "trial_overrides", "tune",
           "tuned_variants"]
