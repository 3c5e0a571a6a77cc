"""Data commands: synth, audit, split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medmtl.cli.app import Opt, app, console
from medmtl.data.groups import DEFAULT_CLIP_REGEX


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
    clip_regex: Annotated[str, Opt(help="Regex whose first group, on the file stem, is the clip "
                                        "id (default fits <patient>-<clip>.mp4-<frame>)")]
    = DEFAULT_CLIP_REGEX,
    clip_threshold: Annotated[float, Opt(min=0.0, max=0.99, help="Flag a frame when the other "
                                         "frames' majority view disagrees and holds more than "
                                         "this share of them")] = 0.5,
    json_out: Annotated[Path | None, Opt("--json", help="Also write the report as JSON")] = None,
) -> None:
    """Count images, boxes, views and label problems per split; find groups leaking across splits
    and clips whose frames carry different view labels."""
    from medmtl.data.audit import audit_dataset, render_audit

    report = audit_dataset(data, group_regex=group_regex, clip_regex=clip_regex,
                           clip_threshold=clip_threshold)
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
