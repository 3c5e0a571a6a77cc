"""Data commands: synth, audit, split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medmtl.cli.app import Opt, app, console, err
from medmtl.cli.options import imgsz_option
from medmtl.config import DATA_HELP, DEVICE_HELP
from medmtl.data.groups import DEFAULT_CLIP_REGEX


@app.command()
def synth(
    out: Annotated[Path, Opt(help="Output folder for the data set")] = Path("data/synth"),
    train: Annotated[int, Opt(help="Training images")] = 300,
    val: Annotated[int, Opt(help="Validation images")] = 100,
    test: Annotated[int, Opt(help="Test images")] = 0,
    imgsz: Annotated[int, Opt(help="Side of the generated square images in pixels (train "
                                   "letterboxes them to its own --imgsz)")] = 256,
    seed: Annotated[int, Opt(help="Random seed (same seed, same bytes)")] = 0,
    view_flips: Annotated[float, Opt(min=0.0, max=1.0, help="Probability that a frame's view "
                                     "label is another view (a minority of each clip)")] = 0.0,
    no_jet: Annotated[float, Opt(min=0.0, max=0.99, help="Probability that a frame is jet-free "
                                 "(labelled 'none': a detection negative)")] = 0.0,
) -> None:
    """Write a synthetic colour-Doppler echo data set in the real on-disk format."""
    from medmtl.data.synth import generate

    yaml_path = generate(out, n_train=train, n_val=val, imgsz=imgsz, seed=seed, n_test=test,
                         view_flips=view_flips, no_jet=no_jet)
    console.print(f"wrote {yaml_path}")


_LI = "Label issues (--label-issues)"


@app.command()
def audit(
    data: Annotated[Path, Opt(help=DATA_HELP)],
    group_regex: Annotated[str, Opt(help="Regex whose first group is the patient/group id")]
    = r"^([^-]+)-",
    clip_regex: Annotated[str, Opt(help="Regex whose first group, on the file stem, is the clip "
                                        "id (default fits <patient>-<clip>.mp4-<frame>)")]
    = DEFAULT_CLIP_REGEX,
    clip_threshold: Annotated[float, Opt(min=0.0, max=0.99, help="Flag a frame when the other "
                                         "frames' majority view disagrees and holds more than "
                                         "this share of them")] = 0.5,
    json_out: Annotated[Path | None, Opt("--json", help="Also write the report as JSON")] = None,
    corrections: Annotated[Path | None, Opt(help="Corrections CSV (stem,field,old,new,note) "
                                                 "applied on top of the label files")] = None,
    decode: Annotated[bool, Opt("--decode/--no-decode",
                                help="Decode every image to find corrupt files (--no-decode: "
                                     "headers only, faster)")] = True,
    max_boxes: Annotated[int, Opt(min=1, help="Boxes per image above which a label file is an "
                                              "error")] = 1000,
    label_issues: Annotated[bool, Opt("--label-issues", help="Also rank likely view and box "
                                      "label errors (cleanlab + clip consistency): writes a CSV "
                                      "and review.html", rich_help_panel=_LI)] = False,
    out: Annotated[Path, Opt(help="Folder for the label-issue outputs and fold runs",
                             rich_help_panel=_LI)] = Path("label_issues"),
    probs: Annotated[Path | None, Opt(help="Out-of-sample view probabilities (CSV: stem + one "
                                      "column per view) instead of training folds",
                                      rich_help_panel=_LI)] = None,
    runs: Annotated[list[Path] | None, Opt("--runs", help="Finished run folders whose val "
                                           "predictions (eval/) are out-of-sample; repeatable",
                                           rich_help_panel=_LI)] = None,
    folds: Annotated[int, Opt(min=2, help="Patient-grouped folds (short runs)",
                              rich_help_panel=_LI)] = 5,
    task: Annotated[str, Opt(help="Fold runs: classify (views only) | joint (views + boxes)",
                             rich_help_panel=_LI)] = "classify",
    epochs: Annotated[int, Opt(min=1, help="Epochs per fold run", rich_help_panel=_LI)] = 3,
    imgsz: Annotated[int, imgsz_option(rich_help_panel=_LI)] = 128,
    size: Annotated[str, Opt(help="Model size of the fold runs (n, s, m)",
                             rich_help_panel=_LI)] = "n",
    batch: Annotated[int, Opt(min=1, help="Batch of the fold runs", rich_help_panel=_LI)] = 16,
    seed: Annotated[int, Opt(min=0, help="Seed of the fold runs", rich_help_panel=_LI)] = 0,
    device: Annotated[str, Opt(help=DEVICE_HELP, rich_help_panel=_LI)] = "auto",
    workers: Annotated[int, Opt(min=0, help="Loader workers of the fold runs",
                                rich_help_panel=_LI)] = 0,
    box_conf: Annotated[float, Opt(min=0.0, max=1.0, help="Predicted boxes at or above this "
                                   "score are the suggested box label", rich_help_panel=_LI)]
    = 0.25,
    adjust_probs: Annotated[bool, Opt("--adjust-probs/--raw-probs", help="Adjust the view "
                                      "probabilities for class imbalance (cleanlab's "
                                      "adjust_pred_probs) before ranking", rich_help_panel=_LI)]
    = True,
    review_max: Annotated[int, Opt(min=1, help="At most this many rows per field (view, boxes) on the review page",
                                   rich_help_panel=_LI)] = 400,
    trusted: Annotated[Path | None, Opt(help="Trusted clip labels (CSV clip,view,reviewer,date,"
                                        "how; the review page's trusted.csv): estimate the "
                                        "corruption matrix from them and write corruption.json",
                                        rich_help_panel=_LI)] = None,
    features: Annotated[Path | None, Opt(help="Frame embeddings (.npz with stems, features) for "
                                         "the appearance signal of the suggested review list",
                                         rich_help_panel=_LI)] = None,
    review_budget: Annotated[int, Opt(min=1, help="Clips on the review page's first screen "
                                      "(the suggested review list)", rich_help_panel=_LI)] = 20,
    allow_errors: Annotated[bool, Opt("--allow-errors", help="Exit 0 even when the audit finds "
                                      "errors (corrupt images, unreadable or malformed label "
                                      "files); without it such errors give exit status 1")]
    = False,
) -> None:
    """Count images, boxes, views and label problems per split; find groups leaking across splits
    and clips whose frames carry different view labels; with --label-issues rank likely label
    errors for review. Exit status 1 when it finds errors (corrupt images, unreadable or malformed
    label files; --allow-errors: 0); the last line says what to run next."""
    from medmtl.data.audit import audit_dataset, audit_errors, next_step, render_audit
    from medmtl.data.corrections import CorrectionError
    from medmtl.data.groups import GroupPattern

    try:
        report = audit_dataset(data, group_regex=group_regex, corrections=corrections,
                               decode=decode, max_boxes=max_boxes, clip_regex=clip_regex,
                               clip_threshold=clip_threshold)
    except CorrectionError as e:
        raise typer.BadParameter(str(e), param_hint="--corrections") from None
    console.print(render_audit(report))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {json_out}")
    if label_issues:
        from rich.markup import escape

        from medmtl.labelissues.run import label_issues as run_label_issues

        if task not in ("classify", "joint"):
            raise typer.BadParameter(f"{task!r}: classify or joint", param_hint="--task")
        if size not in ("n", "s", "m"):
            raise typer.BadParameter(f"{size!r}: n, s or m", param_hint="--size")
        try:
            run_label_issues(data, out, pattern=GroupPattern(group_regex, clip_regex),
                             clip_threshold=clip_threshold, probs=probs, runs=runs, folds=folds,
                             task=task, epochs=epochs, imgsz=imgsz, size=size, batch=batch,
                             seed=seed, device=device, workers=workers, box_conf=box_conf,
                             review_max=review_max, adjust=adjust_probs, trusted=trusted,
                             features=features, review_budget=review_budget,
                             corrections=corrections, log=console.print)
        except (ValueError, FileNotFoundError) as e:
            err.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
            raise typer.Exit(2) from None
    n_err, kinds = audit_errors(report)
    console.print(next_step(report, str(data)), markup=False, highlight=False)
    if n_err and not allow_errors:
        what = ", ".join(f"{k}={v}" for k, v in sorted(kinds.items()))
        err.print(f"audit found {n_err} error(s) ({what}): exit status 1 (--allow-errors to "
                  "accept them)", markup=False, highlight=False)
        raise typer.Exit(1)


@app.command()
def split(
    data: Annotated[Path, Opt(help=DATA_HELP)],
    out: Annotated[Path, Opt(help="Folder for the new file lists and data.yaml")],
    by_group: Annotated[bool, Opt("--by-group/--no-by-group", help="Keep groups whole")] = True,
    val: Annotated[float, Opt(help="Fraction of images for validation")] = 0.2,
    seed: Annotated[int, Opt()] = 0,
    group_regex: Annotated[str, Opt(help="Regex whose first group is the patient id (the group "
                                         "kept whole)")] = r"^([^-]+)-",
    clip_regex: Annotated[str, Opt(help="Regex whose first group, on the file stem, is the clip "
                                        "id: clips split across train/val are reported")]
    = DEFAULT_CLIP_REGEX,
) -> None:
    """Re-split train+val so that no group (patient) is in both; writes file lists, no copies."""
    from medmtl.data.splits import crossing_clips, split_by_group

    if not by_group:
        raise typer.BadParameter("only grouped splitting is offered: a random frame split leaks "
                                 "patients", param_hint="--by-group")
    path = split_by_group(data, val_fraction=val, seed=seed, out_dir=out, group_regex=group_regex,
                          clip_regex=clip_regex)
    lists = [[Path(p) for p in (path.parent / f"{s}.txt").read_text().split("\n") if p]
             for s in ("train", "val")]
    crossing = crossing_clips(*lists, clip_regex=clip_regex)
    if crossing:
        err.print(f"[yellow]warning:[/] {len(crossing)} clip(s) have frames in both train and "
                  f"val (e.g. {', '.join(crossing[:3])}): --group-regex does not keep clips "
                  "whole", soft_wrap=True, markup=True)
    console.print(f"wrote {path}")
