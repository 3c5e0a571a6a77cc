"""Training commands: train, compare, report, demo. The options of `train` and `compare` that set
configuration values are generated from the config models (medmtl/cli/options.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from medmtl.cli.app import Opt, app, console, csv_list, print_metrics
from medmtl.cli.options import (
    check_balancer_options,
    config_options,
    config_overrides,
    imgsz_option,
    one_line,
    with_config_options,
)
from medmtl.cli.preflight import check_option_files, check_view_label_files, preflight
from medmtl.config import TrainConfig
from medmtl.data.corrections import CorrectionError

# medmtl.report.pareto.RUNTIMES' names, spelt out so that building the CLI imports no report code
# (matplotlib, scipy); tests/test_cli_startup.py checks that the two agree
_RUNTIMES = ("torch-cpu", "ort-cpu", "torch-cuda")


def split_methods(text: str) -> list[str]:
    """medmtl.methods.split_methods, imported when a command runs (medmtl.methods loads the
    model registry: torch, timm)."""
    from medmtl.methods import split_methods as split

    return split(text)

LatencyBudget = Annotated[float | None, Opt(
    "--latency-budget", metavar="MS", min=0.0,
    help="Also name the most accurate method (highest delta-m) whose end-to-end latency is "
         "within MS milliseconds", rich_help_panel="Report")]
LatencyRuntime = Annotated[str, Opt(
    help="End-to-end latency the Pareto front and the budget use: " + " | ".join(_RUNTIMES),
    rich_help_panel="Report")]
DmTolerance = Annotated[float, Opt(
    min=0.0, help="Delta-m points the efficiency pick (fastest Pareto-optimal method) may give "
                  "up against the best", rich_help_panel="Report")]

TRAIN_OPTIONS = config_options()
# compare varies the method per run (--methods) and owns --out (the comparison folder) and seeds
COMPARE_OPTIONS = config_options(exclude_panels=("Method",), exclude=("--out", "--seed"))
_RUN, _METHOD = "Run", "Method"


def build_train_config(method: str | None, task: str | None, config: Path | None,
                       values: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of `medmtl train`'s options: defaults <- preset <- --config YAML <- flags.
    Bad values fail here, in one line naming the flag, before any work starts."""
    from medmtl.balancing import resolve_config
    from medmtl.cli.options import config_file_error, read_config_file
    from medmtl.config import merge_dicts
    from medmtl.methods import build_config

    if task:
        if task not in ("detect", "classify"):
            raise typer.BadParameter("--task must be detect or classify", param_hint="--task")
        if method:
            raise typer.BadParameter("give --task or --method, not both")
        method = task
    from_file = read_config_file(config)  # the guarded YAML reader (alias-bomb limits)
    flags, balancer_flags = config_overrides(values, TRAIN_OPTIONS)
    over = merge_dicts(from_file, flags)
    try:
        cfg = build_config(method or "fixed", over)
        check_balancer_options(balancer_flags, cfg.balancer.name)
        cfg.balancer = resolve_config(cfg.balancer, strict=True)
    except ValidationError as e:
        raise config_file_error(e, config, from_file, flags) or one_line(e, TRAIN_OPTIONS) \
            from None
    except KeyError as e:
        raise typer.BadParameter(str(e).strip("'\""),
                                 param_hint="--task" if task else "--method") from None
    except ValueError as e:
        raise typer.BadParameter(str(e).strip("'\"")) from None
    return cfg


@app.command()
@with_config_options(TRAIN_OPTIONS)
def train(
    task: Annotated[str | None, Opt(help="Single-task reference: detect | classify",
                                    rich_help_panel=_METHOD)] = None,
    method: Annotated[str | None, Opt(help="Preset: original, fixed, gradnorm, uncertainty, dwa, "
                                           "pcgrad, cagrad, famo, dual, split2, detach, staged "
                                           "(with --init-from), distill (with --teacher) (any "
                                           "registered balancer too), or a spec arch:balancer"
                                           "[:key=value,...] \\[default: fixed]",
                                      rich_help_panel=_METHOD)] = None,
    devices: Annotated[int, Opt(help="Train data-parallel in N processes (torchrun; --batch is "
                                     "the global batch)", rich_help_panel=_RUN)] = 1,
    config: Annotated[Path | None, Opt(help="YAML with TrainConfig overrides (flags win)",
                                       rich_help_panel=_RUN)] = None,
    resume: Annotated[bool, Opt(help="Continue the run in --out from weights/last.pt",
                                rich_help_panel=_RUN)] = False,
    progress: Annotated[bool, Opt("--progress/--no-progress", help="Show progress within each "
                                  "epoch: a bar in a terminal, else a line every 30 s "
                                  "(MEDMTL_PROGRESS_EVERY); the epoch lines show either way",
                                  rich_help_panel=_RUN)] = True,
    old_weights: Annotated[str | None, Opt("--weights", hidden=True)] = None,
    **config_values: Any,
) -> None:
    """Train one model (single task, or joint with an architecture and a balancer)."""
    from medmtl.distributed import world_size_from_env
    from medmtl.engine.trainer import train as run_train

    if old_weights is not None:
        raise typer.BadParameter(
            f"is now --task-weights (task loss weights, e.g. --task-weights {old_weights}); "
            "--weights names a checkpoint in val, predict and export", param_hint="--weights")

    if devices < 1:
        raise typer.BadParameter("must be >= 1", param_hint="--devices")
    if progress:  # a bad MEDMTL_PROGRESS_EVERY fails now, not at the first epoch
        from medmtl.engine.progress import log_interval

        log_interval()
    cfg = build_train_config(method, task, config, config_values)
    preflight(cfg.data, {"device": cfg.device}, TRAIN_OPTIONS, check_config=False)
    check_view_label_files(cfg.data, cfg.model_dump())
    if devices > 1 and world_size_from_env() <= 1:
        _launch_distributed(devices)
        return
    try:
        run_dir = run_train(cfg, resume=resume, progress=progress)
    except CorrectionError as e:
        raise typer.BadParameter(str(e), param_hint="--corrections") from None
    if world_size_from_env() <= 1 or os.environ.get("RANK") == "0":
        print_metrics(run_dir / "metrics.json")


def _launch_distributed(n_proc: int) -> None:
    """Re-run this very command line under torchrun in `n_proc` processes on this machine."""
    import subprocess

    from medmtl.distributed import launch_command, strip_devices_option

    args = strip_devices_option(sys.argv[1:])
    if not args or args[0] != "train":
        raise typer.BadParameter("--devices re-runs the `medmtl train ...` command line; from "
                                 "Python, start torchrun yourself", param_hint="--devices")
    cmd = launch_command(n_proc, args)
    console.print(f"launching {n_proc} processes: torchrun --standalone "
                  f"--nproc-per-node={n_proc} -m medmtl {' '.join(args)}")
    rc = subprocess.call(cmd)
    if rc:
        raise typer.Exit(rc)


@app.command()
@with_config_options(COMPARE_OPTIONS)
def compare(
    methods: Annotated[str, Opt(help="Comma-separated presets or specs arch:balancer[:key=value,"
                                     "...] (e.g. split2:gradnorm:alpha=0.5); add detect,classify "
                                     "for the single-task references (needed for delta-m)",
                                rich_help_panel=_METHOD)]
    = "original,fixed,gradnorm,dual,detect,classify",
    seeds: Annotated[int, Opt(help="Seeds per method (0..N-1)", rich_help_panel=_RUN)] = 3,
    jobs: Annotated[int | None, Opt(help="Runs in parallel \\[default: what the machine has "
                                          "room for]", rich_help_panel=_RUN)] = None,
    baseline: Annotated[str | None, Opt(help="Method the report compares against "
                                             "\\[default: fixed, else the first joint method]",
                                        rich_help_panel=_METHOD)] = None,
    out: Annotated[Path, Opt(help="Comparison folder", rich_help_panel=_RUN)]
    = Path("runs/compare"),
    shard: Annotated[str | None, Opt(help="Run only part I of N of the grid (job arrays): I/N; "
                                          "then `medmtl report DIR --retime`",
                                     rich_help_panel=_RUN)] = None,
    latency_budget: LatencyBudget = None,
    latency_runtime: LatencyRuntime = "torch-cpu",
    dm_tolerance: DmTolerance = 1.0,
    **config_values: Any,
) -> None:
    """Train every method x seed with the same data, budget and evaluation, then write the report."""
    from medmtl.experiments.compare import parse_shard, run_compare

    data = config_values.pop("data")  # required (with_config_options)
    _check_runtime(latency_runtime)
    try:
        part = parse_shard(shard) if shard else None
    except ValueError as e:
        raise typer.BadParameter(str(e).split(": ", 1)[1], param_hint="--shard") from None
    over, _ = config_overrides(config_values, COMPARE_OPTIONS)
    preflight(data, over, COMPARE_OPTIONS, split_methods(methods))
    check_option_files(data, over)
    from medmtl.data.splits import data_leakage, leakage_line

    leak = leakage_line(data_leakage(data, over.get("group_regex") or TrainConfig().group_regex),
                        data)  # each run records it too (metrics.json data.leakage)
    if leak:
        console.print(leak, markup=False, highlight=False)
    try:
        run_compare(data, split_methods(methods), list(range(seeds)), out, overrides=over, jobs=jobs,
                    report=False, shard=part)
    except ValidationError as e:
        raise one_line(e, COMPARE_OPTIONS) from None
    except (KeyError, ValueError) as e:
        raise typer.BadParameter(str(e).strip("'\""), param_hint="--methods") from None
    if part is None:
        _report(out, baseline, latency_budget, latency_runtime, dm_tolerance)
    else:
        console.print(f"shard {shard} done; when every shard is: medmtl report {out} --retime")
    summary = out / ("compare.json" if part is None else f"compare.shard{part[0]}of{part[1]}.json")
    failed = [n for n, r in json.loads(summary.read_text())["runs"].items()
              if r["status"] == "failed"]
    if failed:
        console.print(f"[red]{len(failed)} run(s) failed: {', '.join(failed)}[/]")
        raise typer.Exit(1)


@app.command()
@with_config_options(COMPARE_OPTIONS)
def tune(
    methods: Annotated[str, Opt(help="Methods to tune (presets or specs), each with the same "
                                     "budget", rich_help_panel=_METHOD)] = "fixed,gradnorm",
    trials: Annotated[int, Opt(help="Trials per method (on val)", rich_help_panel=_METHOD)] = 8,
    untuned: Annotated[str, Opt(help="Methods also run as they are in the final comparison, "
                                     "e.g. detect,classify (the Δm references)",
                                rich_help_panel=_METHOD)] = "",
    seeds: Annotated[int, Opt(help="Seeds of the final comparison of the tuned methods (0: "
                                   "tune only)", rich_help_panel=_RUN)] = 3,
    out: Annotated[Path, Opt(help="Folder: tune.db, trials/, then runs/ and the report",
                             rich_help_panel=_RUN)] = Path("runs/tune"),
    storage: Annotated[str | None, Opt(help="Optuna storage URL shared by several machines "
                                            "\\[default: sqlite in --out]",
                                       rich_help_panel=_RUN)] = None,
    jobs: Annotated[int | None, Opt(help="Final comparison: runs in parallel \\[default: what the "
                                          "machine has room for]",
                                    rich_help_panel=_RUN)] = None,
    baseline: Annotated[str | None, Opt(help="Method the report compares against "
                                             "\\[default: fixed, else the first joint method]",
                                        rich_help_panel=_METHOD)] = None,
    **config_values: Any,
) -> None:
    """Tune every method's own hyper-parameters with an equal budget on val (Optuna, resumable),
    then train the best configuration of each over the seeds and write the report."""
    from medmtl.experiments.compare import run_compare
    from medmtl.experiments.tune import tune as run_tune
    from medmtl.experiments.tune import tuned_variants
    from medmtl.methods import check_method

    data = config_values.pop("data")  # required (with_config_options)
    if trials < 1:
        raise typer.BadParameter("must be >= 1", param_hint="--trials")
    names, extra = split_methods(methods), split_methods(untuned)
    try:
        for m in (*names, *extra):
            check_method(m)
    except (KeyError, ValueError) as e:
        raise typer.BadParameter(str(e).strip("'\"")) from None
    over, _ = config_overrides(config_values, COMPARE_OPTIONS)
    preflight(data, over, COMPARE_OPTIONS)
    check_option_files(data, over)
    result = run_tune(data, names, trials, out, overrides=over, storage=storage,
                      references=extra, seeds=list(range(max(seeds, 1))))
    if seeds < 1:
        console.print(f"wrote {out / 'tune.json'}")
        return
    variants = tuned_variants(result)
    run_compare(data, [*variants, *extra], list(range(seeds)), out, overrides=over, jobs=jobs,
                report=False, variants=variants)
    _report(out, baseline)


def _check_runtime(runtime: str) -> None:
    if runtime not in _RUNTIMES:
        raise typer.BadParameter(f"{runtime!r}: choose from {', '.join(_RUNTIMES)}",
                                 param_hint="--latency-runtime")


def _report(folder: Path, baseline: str | None, budget: float | None = None,
            runtime: str = "torch-cpu", tolerance: float = 1.0, bootstrap: Any = None) -> None:
    from medmtl.report import write_report

    paths = write_report(folder, baseline=baseline, latency_budget_ms=budget,
                         latency_runtime=runtime, delta_m_tolerance=tolerance,
                         bootstrap=bootstrap)
    for k, v in paths.items():
        console.print(f"{k}: {v}")
    recs = json.loads(paths["json"].read_text())["recommendations"]
    if recs.get("withheld"):
        console.print(recs["withheld"], markup=False)
        return
    console.print(recs["accuracy_first"]["text"], markup=False)  # names a best method or why not
    console.print(recs["efficiency_first"]["text"], markup=False)
    if recs.get("latency_budget"):
        console.print(recs["latency_budget"]["text"], markup=False)


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="A compare folder (holding runs/)")],
    baseline: Annotated[str | None, Opt(help="Method to compare against \\[default: fixed, "
                                             "else the first joint method]")] = None,
    retime: Annotated[bool, Opt(help="First re-time every run's model in this process (runs "
                                     "trained on different machines)")] = False,
    latency_budget: LatencyBudget = None,
    latency_runtime: LatencyRuntime = "torch-cpu",
    dm_tolerance: DmTolerance = 1.0,
    bootstrap_map: Annotated[int, Opt(min=0, help="Bootstrap resamples of the test images for "
                                                  "the mAP intervals (0: none)")] = 200,
    bootstrap_view: Annotated[int, Opt(min=0, help="Bootstrap resamples for the view-accuracy "
                                                   "and macro-F1 intervals (0: none)")] = 2000,
    bootstrap_seed: Annotated[int, Opt(help="Random seed of the bootstrap draws")] = 0,
    bootstrap_unit: Annotated[str, Opt(help="What the bootstrap resamples: clip (frames of a "
                                            "clip are not independent), patient, or image")]
    = "clip",
) -> None:
    """Write report.md, report.html, summary.json and summary.csv for a comparison folder."""
    from medmtl.report.bootstrap import BootstrapSettings
    from medmtl.report.collect import check_compare_folder

    _check_runtime(latency_runtime)
    if bootstrap_unit not in ("clip", "patient", "image"):
        raise typer.BadParameter(f"{bootstrap_unit!r}: clip, patient or image",
                                 param_hint="--bootstrap-unit")
    check_compare_folder(folder)  # not one run's folder: one line, exit 2
    if retime:
        from medmtl.experiments.retime import remeasure_latency

        runs = sorted(p.parent for p in folder.glob("runs/*/metrics.json"))
        remeasure_latency(runs, console)
    _report(folder, baseline, latency_budget, latency_runtime, dm_tolerance,
            BootstrapSettings(bootstrap_map, bootstrap_view, bootstrap_seed, unit=bootstrap_unit))


@app.command()
def demo(
    out: Annotated[Path, Opt(help="Output folder")] = Path("demo"),
    methods: Annotated[str, Opt(help="Methods to compare")]
    = "original,fixed,gradnorm,dual,detect,classify",
    epochs: Annotated[int, Opt(help="Epochs per run")] = 6,
    train_images: Annotated[int, Opt("--train", help="Synthetic training images")] = 160,
    val_images: Annotated[int, Opt("--val", help="Synthetic validation images")] = 80,
    imgsz: Annotated[int, imgsz_option()] = 96,
    jobs: Annotated[int | None, Opt(help="Runs in parallel \\[default: what the machine has "
                                          "room for]")] = None,
) -> None:
    """Synthetic data -> compare (one seed, size n) -> report; prints the path of report.html."""
    import time

    from medmtl.data.synth import generate
    from medmtl.experiments.compare import run_compare
    from medmtl.report import write_report

    t0 = time.perf_counter()
    data_yaml = generate(out / "data", n_train=train_images, n_val=val_images, imgsz=imgsz, seed=0)
    # validated every second epoch (and the last): the demo's budget is issue 23's 300 s from a
    # fresh clone, set-up included
    over: dict[str, Any] = {"epochs": epochs, "imgsz": imgsz, "batch": 16, "workers": 0,
                            "val_every": 2, "model": {"size": "n"}}
    run_compare(str(data_yaml), csv_list(methods), [0], out / "compare", overrides=over, jobs=jobs,
                report=False)
    paths = write_report(out / "compare")
    console.print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    console.print(str(Path(paths["html"]).resolve()))
