"""`medmtl compare`: every method x seed on the same data, budget and evaluation.

Each run is a `medmtl train` subprocess writing `DIR/runs/<method>-s<seed>/`; finished runs
(metrics.json present) are not redone, killed runs resume from their last.pt, and runs go in
parallel where the machine has room (one per GPU, or the CPU cores this process may use split
between runs, at most OMP_NUM_THREADS threads each when it is set).

On a cluster, `shard=(i, n)` runs only the i-th of n interleaved parts of the method x seed grid
(e.g. one part per job-array task, all writing to one shared folder); `medmtl report DIR --retime`
then re-times every model on one machine and writes the report over all parts
(docs/multi-machine.md). Processes that share a folder never train one run twice: a run starts
only when its folder's lock (`runlock.probe`) is free, a run that another process holds is left to
it (status ``elsewhere``, not a failure), and one that another process finished since the plan
was made is not redone.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from medmtl.config import TrainConfig, merge_dicts
from medmtl.engine.progress import run_end_line
from medmtl.engine.runlock import IN_USE, LOCK_NAME, OWNER_NAME, probe
from medmtl.experiments.drift import config_drift, warn_drift
from medmtl.experiments.retime import remeasure_latency
from medmtl.methods import build_config, check_method, method_source, run_name


@dataclass
class PlannedRun:
    name: str
    cfg: TrainConfig
    run_dir: Path
    status: str = "new"  # new | resume | finished | running | done | failed | elsewhere
    returncode: int | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)
    log: Any = field(default=None, repr=False)
    drift: list[str] = field(default_factory=list)  # a finished run's config != the plan's
    holder: str | None = None  # the process that holds (elsewhere) or finished the run
    log_start: int = 0  # where this process's part of the run's log begins


def plan_runs(data: str, methods: list[str], seeds: list[int], out: Path,
              overrides: dict[str, Any] | None = None,
              variants: dict[str, tuple[str, dict[str, Any]]] | None = None) -> list[PlannedRun]:
    """One planned run per method x seed. `variants` maps extra method labels (e.g. the tuned
    `gradnorm@tuned`) to (preset or spec, config overrides of their own)."""
    variants = variants or {}
    for m in methods:
        if m not in variants:
            check_method(m)  # every method before any run starts
    methods = with_sources(methods, variants)
    plan = []
    for m in methods:
        for s in seeds:
            name = f"{run_name(m)}-s{s}"
            run_dir = out / "runs" / name
            over = dict(overrides or {})
            over.update({"data": str(Path(data).resolve()), "seed": s, "out": str(run_dir)})
            need = _source_method(m, variants)
            if need is not None:  # staged / distill: the source method's run of this seed
                over[need[0]] = str((out / "runs" / f"{run_name(need[1])}-s{s}").resolve())
            for key in ("corrections", "trusted", "corruption"):  # files the runs read from
                if over.get(key):  # their own working folder
                    over[key] = str(Path(over[key]).resolve())
            if m in variants:
                base, extra = variants[m]
                cfg = build_config(base, merge_dicts(over, extra))
                cfg.method = m
            else:
                cfg = build_config(m, over)
            pr = PlannedRun(name, cfg, run_dir)
            if (run_dir / "metrics.json").exists():
                pr.status = "finished"
                pr.drift = config_drift(run_dir, cfg)
            elif (run_dir / "weights" / "last.pt").exists():
                pr.status = "resume"
            plan.append(pr)
    return plan


def with_sources(methods: list[str], variants: dict[str, Any] | None = None) -> list[str]:
    """`methods` plus the source method of every method that starts from another run (staged,
    distill: `methods.SOURCES`), added before it when missing."""
    out: list[str] = []
    for m in methods:
        need = _source_method(m, variants)
        if need is not None and need[1] not in methods and need[1] not in out:
            out.append(need[1])
        out.append(m)
    return out


def _source_method(m: str, variants: dict[str, Any] | None) -> tuple[str, str] | None:
    """`methods.method_source` of `m`, or of the preset / spec a variant label stands for."""
    return method_source((variants or {}).get(m, (m,))[0])


def _source_of(r: PlannedRun) -> Path | None:
    """The run directory `r` starts from (--init-from, or the first --teacher), if any."""
    src = r.cfg.init_from or (r.cfg.teacher or "").split(",")[0]
    return Path(src) if src else None


def _sources_first(plan: list[PlannedRun], todo: list[PlannedRun]) -> list[PlannedRun]:
    """The unfinished runs that other runs of `todo` start from (trained before them)."""
    wanted = {p.resolve() for r in todo if (p := _source_of(r)) is not None}
    return [r for r in todo if r.run_dir.resolve() in wanted]


def _skip_orphans(todo: list[PlannedRun], console: Console) -> list[PlannedRun]:
    """Runs whose source run did not finish are marked failed instead of started."""
    ready = []
    for r in todo:
        src = _source_of(r)
        if src is not None and not (src / "metrics.json").exists():
            r.status = "failed"
            console.print(f"[red]{r.name}: not started, the run it starts from ({src}) did not "
                          "finish[/]")
        else:
            ready.append(r)
    return ready


def _thread_cap() -> int | None:
    """OMP_NUM_THREADS when set to a whole number >= 1: the threads a process may use (a job
    scheduler's allocation, `make test`'s THREADS), so no run gets more."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return n if n >= 1 else None


def _resources(n_runs: int, jobs: int | None) -> tuple[int, int, list[str]]:
    """(parallel jobs, threads per job, CUDA device ids). The cores are those this process may
    run on (a job scheduler's CPU binding), and OMP_NUM_THREADS caps the threads of each run
    (two runs of 2 threads each on 2 busy cores spin-wait on each other, many times slower)."""
    import torch

    cap = _thread_cap() or 1 << 16
    if torch.cuda.is_available():
        gpus = [str(i) for i in range(torch.cuda.device_count())]
        return max(1, min(jobs or len(gpus), len(gpus), n_runs)), min(4, cap), gpus
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    j = jobs or (cores if cores < 4 else cores // 2)
    j = max(1, min(j, n_runs))
    return j, max(1, min(cores // j, cap)), []


def _epochs_done(run_dir: Path) -> int:
    """Epochs of the budget done: history rows, plus those an `--arch auto` probe took."""
    from medmtl.engine.autobranch import budget_epochs_used

    h = run_dir / "history.csv"
    if not h.exists():
        return 0
    try:
        with h.open() as f:
            rows = sum(1 for _ in csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error):  # a progress count only: the report names it
        return 0
    return max(0, rows - 1) + budget_epochs_used(run_dir)


def _table(plan: list[PlannedRun], t0: float) -> Table:
    t = Table(title=f"compare ({time.perf_counter() - t0:.0f} s)")
    for c in ("run", "status", "epochs"):
        t.add_column(c)
    for r in plan:
        t.add_row(r.name, r.status, f"{_epochs_done(r.run_dir)}/{r.cfg.epochs}")
    return t


def _clear(run_dir: Path) -> None:
    """Empty a run folder that died before its first checkpoint (its lock files stay: they are
    what other processes hold and probe)."""
    for p in run_dir.iterdir():
        if p.name in (LOCK_NAME, OWNER_NAME):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _start(r: PlannedRun, threads: int, gpu: str | None, cfg_dir: Path) -> bool:
    """Start `r`'s training process, unless another live process holds its folder (status
    ``elsewhere``) or finished it since the plan was made (``finished``): False then. What the
    folder holds is looked at again under its lock, so nothing another process wrote is lost."""
    with probe(r.run_dir) as holder:
        if holder is not None:
            r.status, r.holder = "elsewhere", holder
            return False
        if (r.run_dir / "metrics.json").exists():
            r.status, r.holder = "finished", "another process"
            return False
        r.status = "resume" if (r.run_dir / "weights" / "last.pt").exists() else "new"
        if r.status == "new":
            _clear(r.run_dir)  # a run that died before its first checkpoint: start clean
    cfg_path = cfg_dir / f"{r.name}.yaml"
    r.cfg.to_yaml(cfg_path)
    cmd = [sys.executable, "-m", "medmtl", "train", "--data", r.cfg.data, "--out", str(r.run_dir),
           "--config", str(cfg_path), "--no-progress"]  # the YAML holds the method, resolved
    if r.status == "resume":
        cmd.append("--resume")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    r.run_dir.mkdir(parents=True, exist_ok=True)
    r.log = (r.run_dir.parent / f"{r.name}.log").open("a")
    r.log_start = r.log.tell()
    r.proc = subprocess.Popen(cmd, stdout=r.log, stderr=subprocess.STDOUT, env=env)
    r.status = "running"
    return True


def _taken_elsewhere(r: PlannedRun) -> bool:
    """The run's process stopped at once because another process took the folder between the
    probe and its start (it said so: `RunLocked`)."""
    try:
        with (r.run_dir.parent / f"{r.name}.log").open("rb") as f:
            f.seek(r.log_start)
            return IN_USE.encode() in f.read()[-4000:]
    except OSError:
        return False


def _execute(plan: list[PlannedRun], todo: list[PlannedRun], n_jobs: int, threads: int,
             gpus: list[str], t0: float, cfg_dir: Path, console: Console) -> None:
    """Run `todo` (n_jobs at a time): one line when each run starts and ends, and in a terminal
    the whole plan's live table."""
    free_gpus = list(gpus)
    running: list[tuple[PlannedRun, str | None]] = []
    queue = list(todo)
    started: dict[str, float] = {}
    live_ctx = Live(_table(plan, t0), console=console, refresh_per_second=1, transient=False) \
        if console.is_terminal else contextlib.nullcontext()
    with live_ctx as live:
        while queue or running:
            while queue and len(running) < n_jobs:
                r = queue.pop(0)
                gpu = free_gpus.pop(0) if gpus else None
                if not _start(r, threads, gpu, cfg_dir):
                    if gpu is not None:
                        free_gpus.insert(0, gpu)
                    console.print(_not_started_line(r), soft_wrap=True, markup=False,
                                  highlight=False)
                    continue
                resuming = r.status == "resume"
                started[r.name] = time.perf_counter()
                console.print(f"start  {r.name}  method {r.cfg.method}  seed {r.cfg.seed}"
                              f"{'  (resuming)' if resuming else ''}"
                              f"{'' if gpu is None else f'  gpu {gpu}'}", soft_wrap=True,
                              markup=False, highlight=False)
                running.append((r, gpu))
            time.sleep(1.0)
            for r, gpu in list(running):
                assert r.proc is not None
                rc = r.proc.poll()
                if rc is None:
                    continue
                r.returncode = rc
                r.status = "done" if rc == 0 and (r.run_dir / "metrics.json").exists() else "failed"
                r.log.close()
                if r.status == "failed" and rc == 2 and _taken_elsewhere(r):
                    r.status, r.holder = "elsewhere", "another process"
                    console.print(_not_started_line(r), soft_wrap=True, markup=False,
                                  highlight=False)
                    running.remove((r, gpu))
                    if gpu is not None:
                        free_gpus.append(gpu)
                    continue
                running.remove((r, gpu))
                if gpu is not None:
                    free_gpus.append(gpu)
                console.print(run_end_line(r, time.perf_counter() - started[r.name]),
                              soft_wrap=True, markup=False, highlight=False)
            if live is not None:
                live.update(_table(plan, t0))


def _not_started_line(r: PlannedRun) -> str:
    if r.status == "finished":
        return f"skip   {r.name}  finished by another process meanwhile"
    return f"skip   {r.name}  being trained by {r.holder}; not started here (that process " \
           "finishes it)"


def _needs_references(r: PlannedRun) -> bool:
    return len(r.cfg.model.tasks) > 1 and r.cfg.select == "delta-m" and not r.cfg.select_refs


def _references_first(plan: list[PlannedRun], todo: list[PlannedRun],
                      sharded: bool) -> list[PlannedRun]:
    """The unfinished single-task runs to train before the joint ones (none when no joint run
    selects by Δm without given references). A shard cannot wait for other shards: it uses the
    references finished in the folder when it starts."""
    if sharded or not any(_needs_references(r) for r in todo):
        return []
    return [r for r in todo if len(r.cfg.model.tasks) == 1]


def reference_values(plan: list[PlannedRun]) -> dict[str, float]:
    """Δm references: the mean val figures of the plan's finished single-task runs."""
    from medmtl.evaluation.selection import references_from

    found: dict[str, list[dict[str, Any]]] = {}
    for r in plan:
        if len(r.cfg.model.tasks) == 1 and (r.run_dir / "metrics.json").exists():
            found.setdefault(r.cfg.model.tasks[0], []).append(
                json.loads((r.run_dir / "metrics.json").read_text()))
    return references_from(found)


def _set_references(plan: list[PlannedRun], console: Console,
                    grid: list[PlannedRun] | None = None) -> None:
    """The references (from the finished single-task runs of `grid`, the whole grid when `plan`
    is one shard of it) into every joint run of `plan` that selects by Δm without references of
    its own."""
    refs = reference_values(grid or plan)
    if len(refs) < 4:
        missing = sorted({"map50", "map50_95", "accuracy", "macro_f1"} - set(refs))
        console.print(f"[yellow]Δm selection: no single-task reference for {', '.join(missing)}; "
                      "joint runs select by the unweighted mean of their metrics (add the detect "
                      "and classify methods, or give --select-refs)[/]")
        return
    console.print("Δm selection references (val, single-task runs): "
                  + ", ".join(f"{k} {v:.4f}" for k, v in refs.items()))
    for r in plan:
        if _needs_references(r):
            r.cfg.select_refs = dict(refs)


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' (0 <= I < N) -> (I, N)."""
    i, sep, n = text.partition("/")
    try:
        shard = (int(i), int(n))
    except ValueError:
        shard = (-1, 0)
    if not sep or not 0 <= shard[0] < shard[1]:
        raise ValueError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. "
                         "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT")
    return shard


def run_compare(data: str, methods: list[str], seeds: list[int], out: str | Path,
                overrides: dict[str, Any] | None = None, jobs: int | None = None,
                console: Console | None = None, report: bool = True,
                shard: tuple[int, int] | None = None,
                variants: dict[str, tuple[str, dict[str, Any]]] | None = None,
                retime: bool = True) -> Path:
    """Train the method x seed grid into `out` (see the module's docstring). `retime=False`
    leaves the models' timings as training measured them, for a caller that re-times later
    (tune's reference runs: its final comparison re-times every model together)."""
    console = console or Console(stderr=True, soft_wrap=True)
    out = Path(out)
    cfg_dir = out / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    plan = grid = plan_runs(data, methods, seeds, out, overrides, variants)
    if shard is not None:
        plan = plan[shard[0]::shard[1]]
        console.print(f"shard {shard[0]}/{shard[1]}: {', '.join(r.name for r in plan) or 'nothing'}")
    todo = [r for r in plan if r.status != "finished"]
    drift = warn_drift(plan, console)
    n_jobs, threads, gpus = _resources(len(todo) or 1, jobs)
    console.print(f"{len(plan)} runs ({len(plan) - len(todo)} already finished); "
                  f"{n_jobs} at a time, {threads} CPU threads each"
                  + (f", GPUs {','.join(gpus)}" if gpus else ""))
    t0 = time.perf_counter()
    first = _references_first(plan, todo, shard is not None)
    # the single-task references first: the joint runs select by Δm against them
    _execute(plan, first, n_jobs, threads, gpus, t0, cfg_dir, console)
    if any(_needs_references(r) for r in todo):
        _set_references(plan, console, grid)
    # then the runs that staged / distilled runs start from, then the rest
    second = [r for r in _sources_first(plan, todo) if r not in first]
    _execute(plan, second, n_jobs, threads, gpus, t0, cfg_dir, console)
    rest = [r for r in todo if r not in first and r not in second]
    _execute(plan, _skip_orphans(rest, console), n_jobs, threads, gpus, t0, cfg_dir, console)
    # a shard's timings are superseded by `report --retime` over all shards: no ONNX export here
    # (not the runs another process holds or finished meanwhile: it re-times them itself)
    if retime:
        remeasure_latency([r.run_dir for r in plan if r.holder is None
                           and (r.run_dir / "metrics.json").exists()], console,
                          ort=shard is None)
    failed = [r for r in plan if r.status == "failed"]
    elsewhere = [r.name for r in plan if r.status == "elsewhere"]
    if elsewhere:
        console.print(f"{len(elsewhere)} run(s) being trained by other processes: "
                      f"{', '.join(elsewhere)}; when they finish: medmtl report {out}"
                      + (" --retime" if shard is not None else ""))
    summary = "compare.json" if shard is None else f"compare.shard{shard[0]}of{shard[1]}.json"
    (out / summary).write_text(json.dumps({
        "data": str(Path(data).resolve()), "methods": methods, "seeds": seeds,
        "seconds": round(time.perf_counter() - t0, 1),
        "runs": {r.name: {"status": r.status, "returncode": r.returncode} for r in plan},
        "config_drift": drift},
        indent=2))
    for r in failed:
        console.print(f"[red]run {r.name} failed[/] (exit {r.returncode}); its log: "
                      f"{r.run_dir.parent / (r.name + '.log')}")
    if report:
        from medmtl.report import write_report

        paths = write_report(out)
        console.print(f"report: {paths['html']}")
    return out


