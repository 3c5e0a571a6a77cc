"""Audit (synthetic mini set + the real data set when present) and the patient-grouped split."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image
from rich.console import Console

from medmtl.data import (
    audit_dataset,
    group_of,
    load_data_yaml,
    render_audit,
    scan_split,
    split_by_group,
)

REAL_YAML = Path(__file__).resolve().parents[2] / "shared/data/regurgitation/data.yaml"


def _grouped_set(root: Path) -> Path:
    """Patients p0..p7 with 1..4 frames, spread over train and valid (p0, p1 in both)."""
    plan = {"train": {f"p{i}": i % 4 + 1 for i in range(6)}, "valid": {"p0": 1, "p1": 2, "p6": 2,
                                                                       "p7": 3}}
    for split, pats in plan.items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for pat, n in pats.items():
            for k in range(n):
                stem = f"{pat}-clip{k}.mp4-{split}"
                Image.new("RGB", (32 + 8 * (k % 2), 24), (9, 9, 9)).save(
                    root / split / "images" / f"{stem}.jpg")
                view = "" if (pat, k) == ("p2", 0) else "\n0 1 0"
                (root / split / "labels" / f"{stem}.txt").write_text(f"{k % 2} 0.5 0.5 0.25 0.5\n"
                                                                     + view)
    y = root / "data.yaml"
    y.write_text(yaml.safe_dump({"path": ".", "train": "train/images", "val": "valid/images",
                                 "names": ["A", "B"], "cls_names": ["x", "y", "z"]}))
    return y


def test_group_of() -> None:
    assert group_of("/a/images/ZmNlwq5mZcKcwps=-unnamed_1_2.mp4-7.jpg") == "ZmNlwq5mZcKcwps="
    assert group_of("nodash.png") == "nodash"
    assert group_of("site1_p3_x.png", r"^(\w+?_p\d+)_") == "site1_p3"


def test_audit_synthetic_set(tmp_path: Path) -> None:
    rep = audit_dataset(_grouped_set(tmp_path))
    json.dumps(rep)  # JSON-serialisable
    tr, va = rep["splits"]["train"], rep["splits"]["val"]
    assert (tr["images"], va["images"]) == (13, 8)
    assert tr["boxes_per_class"] == {"A": 8, "B": 5} and va["views_per_class"] == {"x": 0, "y": 8, "z": 0}
    assert tr["images_without_view"] == ["p2-clip0.mp4-train.txt"] and tr["images_without_boxes"] == []
    assert tr["problems"]["counts"] == {"no_view": 1} and "p2-clip0.mp4-train.txt" in tr["problems"]["first"][0]
    assert tr["image_sizes"] == {"32x24": 8, "40x24": 5}
    assert tr["box_sizes"]["height_px"] == {"min": 12.0, "median": 12.0, "max": 12.0}
    assert tr["box_sizes"]["rel_area"]["max"] == pytest.approx(0.125)
    pair = rep["leakage"]["pairs"]["train/val"]
    assert pair["shared_groups"] == 2 and pair["images"] == {"train": 3, "val": 3}
    assert pair["examples"] == ["p0", "p1"] and rep["leakage"]["leaks"]
    buf = io.StringIO()
    Console(file=buf, width=140).print(render_audit(rep))
    assert "Group leakage" in buf.getvalue() and "no_view=1" in buf.getvalue()


def test_split_by_group_no_shared_group_and_deterministic(tmp_path: Path) -> None:
    y = _grouped_set(tmp_path / "data")
    out1 = split_by_group(y, val_fraction=0.3, seed=1, out_dir=tmp_path / "s1")
    out2 = split_by_group(y, val_fraction=0.3, seed=1, out_dir=tmp_path / "s2")
    t1, v1 = ((tmp_path / "s1" / f).read_text() for f in ("train.txt", "val.txt"))
    assert (t1, v1) == tuple((tmp_path / "s2" / f).read_text() for f in ("train.txt", "val.txt"))
    train = [Path(p) for p in t1.split()]
    val = [Path(p) for p in v1.split()]
    assert all(p.is_absolute() and p.is_file() for p in train + val)
    assert len(train) + len(val) == 21 and len(set(train) | set(val)) == 21
    assert {group_of(p) for p in train}.isdisjoint({group_of(p) for p in val})
    assert 0.15 * 21 <= len(val) <= 0.45 * 21
    spec = load_data_yaml(out1)
    assert spec.root == (tmp_path / "data").resolve()
    assert spec.splits == {"train": tmp_path / "s1" / "train.txt", "val": tmp_path / "s1" / "val.txt"}
    assert spec.names == ["A", "B"] and spec.cls_names == ["x", "y", "z"] and out2.is_file()
    idx = scan_split(spec, "val")  # labels are found beside the original images
    assert len(idx.records) == len(val) and all(r.has_label_file for r in idx.records)
    rep = audit_dataset(out1)
    assert not rep["leakage"]["leaks"]
    splits = {s: split_by_group(y, 0.3, seed=s, out_dir=tmp_path / f"r{s}").parent.joinpath(
        "val.txt").read_text() for s in range(6)}
    assert len(set(splits.values())) > 1  # the seed matters


def test_audit_real_dataset() -> None:
    if not REAL_YAML.is_file():
        pytest.skip(f"real data set not found at {REAL_YAML}")
    rep = audit_dataset(REAL_YAML)
    tr, va = rep["splits"]["train"], rep["splits"]["val"]
    assert (tr["images"], va["images"]) == (1042, 183)
    assert tr["boxes_per_class"] == {"AR": 321, "MR": 318, "PR": 84, "TR": 319}
    assert va["boxes_per_class"] == {"AR": 66, "MR": 55, "PR": 14, "TR": 48}
    assert tr["views_per_class"] == {"A4C": 111, "PLAX": 555, "PSAX": 374}
    assert va["views_per_class"] == {"A4C": 28, "PLAX": 78, "PSAX": 77}
    assert sorted(tr["images_without_view"]) == ["aGdjwqtqa8Kb-unnamed_1_6.mp4-40.txt",
                                                 "bmRlwqVuacKY-unnamed_1_3.mp4-28.txt"]
    assert va["images_without_view"] == [] and tr["summary"]["boxes_skipped"] == 0
    assert set(tr["image_sizes"]) == {"430x320", "700x495", "800x556"}
    assert rep["leakage"]["leaks"] and rep["leakage"]["pairs"]["train/val"]["shared_groups"] > 0


def _main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from _cli import run_cli

    return run_cli(args, capsys)


def test_audit_exit_status_and_next_step(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """#24.7: errors give exit status 1 (--allow-errors: 0); the last line says what to run."""
    y = _grouped_set(tmp_path / "data")  # p0 and p1 in train and val, no error
    code, out, _ = _main(["audit", "--data", str(y)], capsys)
    assert code == 0
    assert out.strip().splitlines()[-1] == (
        f"next step: `medmtl split --data {y} --out DIR` for a patient-grouped split (2 "
        "patient(s) are in both train and val), then `medmtl train --data DIR/data.yaml`")
    grouped = split_by_group(y, val_fraction=0.3, seed=1, out_dir=tmp_path / "s")
    code, out, _ = _main(["audit", "--data", str(grouped)], capsys)
    assert code == 0 and out.strip().splitlines()[-1] == (
        f"next step: `medmtl train --data {grouped}` (or `medmtl compare --data {grouped}`)")
    # a truncated JPEG and an unreadable label: two errors
    img = tmp_path / "data" / "train" / "images"
    (img / "p9-clip0.mp4-1.jpg").write_bytes((img / "p0-clip0.mp4-train.jpg").read_bytes()[:60])
    (tmp_path / "data" / "train" / "labels" / "p9-clip0.mp4-1.txt").write_text("0 0.5 0.5 .2 .2")
    (tmp_path / "data" / "train" / "labels" / "p1-clip0.mp4-train.txt").write_bytes(b"\xff\xfe\x00")
    code, out, err = _main(["audit", "--data", str(y), "--json", str(tmp_path / "a.json")],
                           capsys)
    assert code == 1
    assert "truncated" not in err and "Traceback" not in err
    kinds = "image_corrupt=1, label_unreadable=1"
    assert err.strip() == (f"audit found 2 error(s) ({kinds}): exit status 1 (--allow-errors "
                           "to accept them)")
    assert out.strip().splitlines()[-1].startswith(
        f"next step: fix or remove what the 2 error(s) name ({kinds}; 'Label problems' above")
    # named among the errors (the JSON: the console table folds long names at its width)
    first = json.loads((tmp_path / "a.json").read_text())["splits"]["train"]["problems"]
    assert any("p9-clip0.mp4-1.jpg" in e for e in first["first_errors"])
    code, out, err = _main(["audit", "--data", str(y), "--allow-errors"], capsys)
    assert code == 0 and err == "" and "next step: fix or remove" in out
    from typer.testing import CliRunner

    from medmtl.cli import app

    text = " ".join(CliRunner().invoke(app, ["audit", "--help"], env={"COLUMNS": "200"})
                    .output.split())
    assert "--allow-errors" in text and "Exit status 1 when it finds errors" in text
