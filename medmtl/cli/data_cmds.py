"""Data commands: synth, audit, split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medmtl.cli.app import Opt, app, console


@app.command()
def synth(
    out: Annotated[Path, Opt(help="Output folder for the data set")] = Path("data/synth"),
    train: Annotated[int, Opt(help="Training images")] = 300,
    val: Annotated[int, Opt(help="Validation images")] = 100,
    test: Annotated[int, Opt(help="Test images")] = 0,
    imgsz: Annotated[int, Opt(help="Image side in pixels")] = 256,
    seed: Annotated[int, Opt(help="Random seed (same seed, same bytes)")] = 0,
    view_flips: Annotated[float, Opt(min=0.0, max=1.0, help="Probability that a frame's view "
                                     "label is another view (a minority of each clip)")] = 0.0,
) -> None:
    """Write a synthetic colour-Doppler echo data set in the real on-disk format."""
    from medmtl.data.synth import generate

    yaml_path = generate(out, n_train=train, n_val=val, imgsz=imgsz, seed=seed, n_test=test,
                         view_flips=view_flips)
    console.print(f"wrote {yaml_path}")


@app.command()
def audit(
    data: Annotated[Path, Opt(help="Dataset YAML")],
    group_regex: Annotated[str, Opt(help="Regex whose first group is the patient/group id")]
    = r"^([^-]+)-",
    json_out: Annotated[Path | None, Opt("--json", help="Also write the report as JSON")] = None,
    corrections: Annotated[Path | None, Opt(help="Corrections CSV (stem,field,old,new,note) "
                                                 "applied on top of the label files")] = None,
    decode: Annotated[bool, Opt("--decode/--no-decode",
                                help="Decode every image to find corrupt files (--no-decode: "
                                     "headers only, faster)")] = True,
    max_boxes: Annotated[int, Opt(min=1, help="Boxes per image above which a label file is an "
                                              "error")] = 1000,
) -> None:
    """Count images, boxes, views and label problems per split; find groups leaking across splits."""
    from medmtl.data.audit import audit_dataset, render_audit
    from medmtl.data.corrections import CorrectionError

    try:
        report = audit_dataset(data, group_regex=group_regex, corrections=corrections,
                              decode=decode, max_boxes=max_boxes)
    except CorrectionError as e:
        raise typer.BadParameter(str(e), param_hint="--corrections") from None
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
    from medmtl.data.splits import split_by_group

    if not by_group:
        raise typer.BadParameter("only grouped splitting is offered: a random frame split leaks "
                                 "patients", param_hint="--by-group")
    path = split_by_group(data, val_fraction=val, seed=seed, out_dir=out, group_regex=group_regex)
    console.print(f"wrote {path}")
