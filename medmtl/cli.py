"""`medmtl` command line: a thin typer layer; every command calls a package function."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Joint detection + view classification, and honest comparisons of "
                       "gradient-interference remedies.")
console = Console()
err = Console(stderr=True)

Opt = typer.Option


@app.command()
def synth(
    out: Annotated[Path, Opt(help="Output folder for the data set")] = Path("data/synth"),
    train: Annotated[int, Opt(help="Training images")] = 300,
    val: Annotated[int, Opt(help="Validation images")] = 100,
    test: Annotated[int, Opt(help="Test images")] = 0,
    imgsz: Annotated[int, Opt(help="Image side in pixels")] = 256,
    seed: Annotated[int, Opt(help="Random seed (same seed, same bytes)")] = 0,
) -> None:
    """Write a synthetic colour-Doppler echo data set in the real on-disk format."""
    from medmtl.data.synth import generate

    yaml_path = generate(out, n_train=train, n_val=val, imgsz=imgsz, seed=seed, n_test=test)
    console.print(f"wrote {yaml_path}")


@app.command()
def audit(
    data: Annotated[Path, Opt(help="Dataset YAML")],
    group_regex: Annotated[str, Opt(help="Regex whose first group is the patient/group id")]
    = r"^([^-]+)-",
    json_out: Annotated[Path | None, Opt("--json", help="Also write the report as JSON")] = None,
) -> None:
    """Count images, boxes, views and label problems per split; find groups leaking across splits."""
    from medmtl.data.audit import audit_dataset, render_audit

    report = audit_dataset(data, group_regex=group_regex)
    console.print(render_audit(report))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {json_out}")


@app.command()
def split(
    data: Annotated[Path, Opt(help="Dataset YAML")],
    out: Annotated[Path, Opt(help="Folder for the new file lists and data.yaml")],
    by_group: Annotated[bool, Opt("--by-group/--no-by-group", help="Keep groups whole")] = True,
    val: Annotated[float, Opt(help="Fraction of images for validation")] = 0.2,
    seed: Annotated[int, Opt()] = 0,
    group_regex: Annotated[str, Opt()] = r"^([^-]+)-",
) -> None:
    """Re-split train+val so that no group (patient) is in both; writes file lists, no copies."""
    from medmtl.data.audit import split_by_group

    if not by_group:
        raise typer.BadParameter("only grouped splitting is offered: a random frame split leaks "
                                 "patients", param_hint="--by-group")
    path = split_by_group(data, val_fraction=val, seed=seed, out_dir=out, group_regex=group_regex)
    console.print(f"wrote {path}")


def _parse_weights(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    out: dict[str, float] = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        if not v:
            raise typer.BadParameter(f"expected task=value pairs, got {part!r}",
                                     param_hint="--weights")
        out[k.strip()] = float(v)
    return out


def train_config_from_options(opts: dict[str, Any]) -> Any:
    """Build a TrainConfig from CLI-style options (None = keep the preset/default)."""
    import yaml

    from medmtl.config import _merge, build_config

    method = opts.pop("method", None)
    task = opts.pop("task", None)
    if task:
        if task not in ("detect", "classify"):
            raise typer.BadParameter("--task must be detect or classify", param_hint="--task")
        if method:
            raise typer.BadParameter("give --task or --method, not both")
        method = task
    over: dict[str, Any] = {}
    cfg_file = opts.pop("config", None)
    if cfg_file:
        over = yaml.safe_load(Path(cfg_file).read_text()) or {}
    model_keys = {"arch", "size", "backbone", "pretrained", "view_source"}
    bal_keys = {"balancer": "name", "alpha": "alpha", "balancer_weights": "weights"}
    for k, v in opts.items():
        if v is None:
            continue
        if k in model_keys:
            over = _merge(over, {"model": {k: v}})
        elif k in bal_keys:
            over = _merge(over, {"balancer": {bal_keys[k]: v}})
        elif k == "label_smoothing":
            over = _merge(over, {"loss": {k: v}})
        else:
            over[k] = v
    return build_config(method or "fixed", over)


@app.command()
def train(
    data: Annotated[str, Opt(help="Dataset YAML")],
    out: Annotated[str, Opt(help="Run directory")] = "runs/exp",
    task: Annotated[str | None, Opt(help="Single-task reference: detect | classify")] = None,
    method: Annotated[str | None, Opt(help="Preset: original, fixed, gradnorm, uncertainty, dwa, "
                                           "pcgrad, cagrad, famo, dual, split2, detach")] = None,
    epochs: Annotated[int | None, Opt()] = None,
    imgsz: Annotated[int | None, Opt()] = None,
    size: Annotated[str | None, Opt(help="Model size n | s | m")] = None,
    batch: Annotated[int | None, Opt()] = None,
    arch: Annotated[str | None, Opt(help="shared | dual | detach | split<k>")] = None,
    balancer: Annotated[str | None, Opt(help="Task balancer (overrides the preset)")] = None,
    weights: Annotated[str | None, Opt(help="Fixed task weights, e.g. detect=1,classify=0.1")]
    = None,
    alpha: Annotated[float | None, Opt(help="GradNorm alpha")] = None,
    view_source: Annotated[str | None, Opt(help="backbone | neck8 | neck16 | neck32")] = None,
    backbone: Annotated[str | None, Opt(help="Any timm model name")] = None,
    pretrained: Annotated[bool | None, Opt("--pretrained/--no-pretrained")] = None,
    optimizer: Annotated[str | None, Opt(help="sgd | adamw")] = None,
    lr: Annotated[float | None, Opt()] = None,
    accumulate: Annotated[int | None, Opt(help="Gradient accumulation steps")] = None,
    label_smoothing: Annotated[float | None, Opt()] = None,
    device: Annotated[str | None, Opt(help="auto | cpu | cuda | cuda:1 | mps")] = None,
    workers: Annotated[int | None, Opt()] = None,
    seed: Annotated[int | None, Opt()] = None,
    deterministic: Annotated[bool | None, Opt("--deterministic/--no-deterministic")] = None,
    val_every: Annotated[int | None, Opt()] = None,
    patience: Annotated[int | None, Opt(help="Early stopping patience (0 = off)")] = None,
    cache: Annotated[bool | None, Opt("--cache/--no-cache")] = None,
    devices: Annotated[int, Opt(help="Train data-parallel in N processes (torchrun; --batch is "
                                     "the global batch)")] = 1,
    sync_bn: Annotated[bool | None, Opt("--sync-bn/--no-sync-bn",
                                        help="BatchNorm statistics over all processes")] = None,
    compile: Annotated[bool | None, Opt("--compile/--no-compile",
                                        help="torch.compile the model (eager if it fails)")] = None,
    ema: Annotated[bool | None, Opt("--ema/--no-ema")] = None,
    amp: Annotated[bool | None, Opt("--amp/--no-amp")] = None,
    strict: Annotated[bool | None, Opt("--strict/--no-strict", help="Data warnings are errors")]
    = None,
    diag_steps: Annotated[int | None, Opt(help="Interference measurements per epoch")] = None,
    diag_per_stage: Annotated[bool | None, Opt("--diag-per-stage/--no-diag-per-stage",
                                               help="Also log gradient cosine per shared stage")]
    = None,
    config: Annotated[Path | None, Opt(help="YAML with TrainConfig overrides")] = None,
    resume: Annotated[bool, Opt(help="Continue the run in --out from weights/last.pt")] = False,
    progress: Annotated[bool, Opt("--progress/--no-progress")] = True,
) -> None:
    """Train one model (single task, or joint with an architecture and a balancer)."""
    opts = dict(locals())  # first statement: exactly the options
    from medmtl.distributed import world_size_from_env
    from medmtl.engine.trainer import train as run_train

    resume_, progress_ = opts.pop("resume"), opts.pop("progress")
    n_proc = opts.pop("devices")
    if n_proc < 1:
        raise typer.BadParameter("must be >= 1", param_hint="--devices")
    opts["balancer_weights"] = _parse_weights(opts.pop("weights"))
    cfg = train_config_from_options(opts)  # validate here, before starting processes
    if n_proc > 1 and world_size_from_env() <= 1:
        _launch_distributed(n_proc)
        return
    run_dir = run_train(cfg, resume=resume_, progress=progress_)
    if world_size_from_env() <= 1 or os.environ.get("RANK") == "0":
        _print_metrics(run_dir / "metrics.json")


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


def _print_metrics(path: Path) -> None:
    m = json.loads(path.read_text())
    parts = []
    if m.get("detection"):
        d = m["detection"]
        parts.append(f"mAP@0.5 {d['map50']:.3f}  mAP@0.5:0.95 {d['map50_95']:.3f}  "
                     f"P {d['precision']:.3f}  R {d['recall']:.3f}")
    if m.get("classification"):
        c = m["classification"]
        parts.append(f"view accuracy {c['accuracy']:.3f}  macro-F1 {c['macro_f1']:.3f}")
    console.print(f"[bold]{m['split']}[/] ({m['images']} images): " + " | ".join(parts))
    console.print(f"wrote {path}")


@app.command()
def val(
    weights: Annotated[Path, Opt(help="Checkpoint (.pt)")],
    data: Annotated[Path, Opt(help="Dataset YAML")],
    split: Annotated[str, Opt(help="val | test | train")] = "val",
    out: Annotated[Path, Opt(help="Output folder")] = Path("runs/val"),
    imgsz: Annotated[int | None, Opt()] = None,
    batch: Annotated[int, Opt()] = 16,
    conf: Annotated[float | None, Opt(help="Score threshold before NMS")] = None,
    iou: Annotated[float | None, Opt(help="NMS IoU")] = None,
    device: Annotated[str, Opt()] = "auto",
    workers: Annotated[int, Opt()] = 2,
) -> None:
    """Evaluate a checkpoint: metrics.json, predictions.json and ground_truth.json (COCO)."""
    from medmtl.engine.validate import validate_checkpoint

    validate_checkpoint(weights, data, split, out, imgsz=imgsz, batch=batch, conf=conf, iou=iou,
                        device=device, workers=workers)
    _print_metrics(out / "metrics.json")


@app.command()
def predict(
    weights: Annotated[Path, Opt(help="Checkpoint (.pt) or exported graph (.onnx)")],
    source: Annotated[str, Opt(help="Image, folder, glob, video (mp4/avi) or DICOM file")],
    out: Annotated[Path, Opt(help="Output folder")] = Path("runs/predict"),
    conf: Annotated[float, Opt(help="Box score threshold")] = 0.25,
    iou: Annotated[float, Opt(help="NMS IoU")] = 0.6,
    max_det: Annotated[int, Opt()] = 100,
    imgsz: Annotated[int | None, Opt()] = None,
    device: Annotated[str, Opt()] = "auto",
    save_media: Annotated[bool, Opt("--save-media/--no-save-media",
                                    help="Write annotated images / videos")] = True,
    view_min_prob: Annotated[float, Opt(help="Below this view probability the view is "
                                             "reported as uncertain")] = 0.0,
) -> None:
    """Detect jets and name the view on images, folders, globs, videos or DICOM cines."""
    from medmtl.inference.predictor import predict_command

    summary = predict_command(weights, source, out, conf=conf, iou=iou, max_det=max_det,
                              imgsz=imgsz, device=device, save_media=save_media,
                              view_min_prob=view_min_prob)
    console.print(f"{summary.get('frames', 0)} frames; wrote {out}")


@app.command()
def export(
    weights: Annotated[Path, Opt(help="Checkpoint (.pt)")],
    format: Annotated[str, Opt(help="onnx")] = "onnx",
    out: Annotated[Path | None, Opt(help="Output path (default: WEIGHTS with .onnx)")] = None,
    dynamic: Annotated[bool, Opt(help="Dynamic batch and image size")] = False,
    half: Annotated[bool, Opt(help="fp16 weights (needs CUDA)")] = False,
    opset: Annotated[int, Opt()] = 17,
    imgsz: Annotated[int | None, Opt()] = None,
) -> None:
    """Export to ONNX: boxes and scores before NMS, plus view logits; checked against PyTorch."""
    from medmtl.inference.export import export_command

    export_command(weights, format=format, out=out, dynamic=dynamic, half=half, opset=opset,
                   imgsz=imgsz)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


@app.command()
def compare(
    data: Annotated[str, Opt(help="Dataset YAML")],
    methods: Annotated[str, Opt(help="Comma-separated presets; add detect,classify for the "
                                     "single-task references (needed for delta-m)")]
    = "original,fixed,gradnorm,dual,detect,classify",
    seeds: Annotated[int, Opt(help="Seeds per method (0..N-1)")] = 3,
    epochs: Annotated[int, Opt()] = 30,
    imgsz: Annotated[int | None, Opt()] = None,
    size: Annotated[str | None, Opt()] = None,
    batch: Annotated[int | None, Opt()] = None,
    lr: Annotated[float | None, Opt()] = None,
    workers: Annotated[int | None, Opt()] = None,
    device: Annotated[str | None, Opt()] = None,
    jobs: Annotated[int | None, Opt(help="Runs in parallel (default: what the machine has room "
                                          "for)")] = None,
    baseline: Annotated[str | None, Opt(help="Method the report compares against")] = None,
    out: Annotated[Path, Opt(help="Comparison folder")] = Path("runs/compare"),
    shard: Annotated[str | None, Opt(help="Run only part I of N of the grid (job arrays): I/N; "
                                          "then `medmtl report DIR --retime`")] = None,
) -> None:
    """Train every method x seed with the same data, budget and evaluation, then write the report."""
    from medmtl.engine.compare import parse_shard, run_compare

    try:
        part = parse_shard(shard) if shard else None
    except ValueError as e:
        raise typer.BadParameter(str(e).split(": ", 1)[1], param_hint="--shard") from None
    over: dict[str, Any] = {"epochs": epochs}
    over.update({k: v for k, v in {"imgsz": imgsz, "batch": batch, "lr": lr, "workers": workers,
                                   "device": device}.items() if v is not None})
    if size:
        over["model"] = {"size": size}
    run_compare(data, _csv(methods), list(range(seeds)), out, overrides=over, jobs=jobs,
                report=False, shard=part)
    if part is None:
        _report(out, baseline)
    else:
        console.print(f"shard {shard} done; when every shard is: medmtl report {out} --retime")


def _report(folder: Path, baseline: str | None) -> None:
    from medmtl.report import write_report

    paths = write_report(folder, baseline=baseline)
    for k, v in paths.items():
        console.print(f"{k}: {v}")


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="A compare folder (holding runs/)")],
    baseline: Annotated[str | None, Opt(help="Method to compare against")] = None,
    retime: Annotated[bool, Opt(help="First re-time every run's model in this process (runs "
                                     "trained on different machines)")] = False,
) -> None:
    """Write report.md, report.html, summary.json and summary.csv for a comparison folder."""
    if retime:
        from medmtl.engine.compare import remeasure_latency

        runs = sorted(p.parent for p in folder.glob("runs/*/metrics.json"))
        remeasure_latency(runs, console)
    _report(folder, baseline)


@app.command()
def demo(
    out: Annotated[Path, Opt(help="Output folder")] = Path("demo"),
    methods: Annotated[str, Opt()] = "original,fixed,gradnorm,dual,detect,classify",
    epochs: Annotated[int, Opt()] = 12,
    train_images: Annotated[int, Opt("--train")] = 240,
    val_images: Annotated[int, Opt("--val")] = 80,
    imgsz: Annotated[int, Opt()] = 128,
    jobs: Annotated[int | None, Opt()] = None,
) -> None:
    """Synthetic data -> compare (one seed, size n) -> report; prints the path of report.html."""
    import time

    from medmtl.data.synth import generate
    from medmtl.engine.compare import run_compare
    from medmtl.report import write_report

    t0 = time.perf_counter()
    data_yaml = generate(out / "data", n_train=train_images, n_val=val_images, imgsz=imgsz, seed=0)
    over: dict[str, Any] = {"epochs": epochs, "imgsz": imgsz, "batch": 16, "workers": 0,
                            "model": {"size": "n"}}
    run_compare(str(data_yaml), _csv(methods), [0], out / "compare", overrides=over, jobs=jobs,
                report=False)
    paths = write_report(out / "compare")
    console.print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    console.print(str(Path(paths["html"]).resolve()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
