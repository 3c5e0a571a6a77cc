"""Corrections file (medmtl/data/corrections.py): parsed, checked and applied on top of the label
files, which stay untouched; every mistake is one line naming the corrections file and line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from medmtl.data import load_data_yaml, scan_split
from medmtl.data.audit import audit_dataset, check_corrections
from medmtl.data.corrections import (
    CorrectionError,
    _normalised,
    format_boxes,
    load_corrections,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medmtl.data.synth import generate

    return generate(tmp_path_factory.mktemp("corr"), n_train=12, n_val=6, imgsz=64, seed=3)


def _rec(data: Path, split: str, i: int):  # noqa: ANN202
    return scan_split(load_data_yaml(data), split).records[i]


def _boxes_text(r) -> str:  # noqa: ANN001
    return format_boxes(_normalised(r.boxes, r.classes, r.width, r.height))


def _write(tmp: Path, *rows: str) -> Path:
    p = tmp / "corrections.csv"
    p.write_text("stem,field,old,new,note\n" + "".join(r + "\n" for r in rows))
    return p


def test_view_and_boxes_corrections_apply_and_leave_the_files(tiny: Path, tmp_path: Path) -> None:
    spec = load_data_yaml(tiny)
    t0, v1 = _rec(tiny, "train", 0), _rec(tiny, "val", 1)
    names = spec.cls_names
    new_view = (t0.view + 1) % 3
    label_before = t0.label_path.read_bytes()
    path = _write(tmp_path,
                  f'{t0.path.stem},view,{names[t0.view]},{names[new_view]},"looks apical, not PLAX"',
                  f"{v1.path.stem},boxes,{_boxes_text(v1)},0 0.5 0.5 0.25 0.5;2 0.25 0.25 0.1 0.1,",
                  "")  # a blank row is skipped
    corr = load_corrections(path, spec)
    assert len(corr) == 2 and corr.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    train = scan_split(spec, "train", corrections=corr)
    val = scan_split(spec, "val", corrections=corr)
    assert train.records[0].view == new_view
    assert train.summary["corrections_applied"] == 1 and val.summary["corrections_applied"] == 1
    r = val.records[1]
    # 64 px image: cx 0.5, w 0.25 -> x 24..40; cy 0.5, h 0.5 -> y 16..48
    np.testing.assert_allclose(r.boxes, [[24, 16, 40, 48], [12.8, 12.8, 19.2, 19.2]], atol=1e-4)
    assert r.classes.tolist() == [0, 2]
    assert corr.record()["applied"] == {"train": 1, "val": 1}
    assert t0.label_path.read_bytes() == label_before
    # other records untouched: same as a scan without corrections
    plain = scan_split(spec, "train")
    assert [x.view for x in plain.records[1:]] == [x.view for x in train.records[1:]]
    # empty new = no view label (masked from the view loss and metrics)
    path2 = _write(tmp_path, f"{t0.path.stem},view,{names[t0.view]},,unsure")
    idx = scan_split(spec, "train", corrections=load_corrections(path2, spec))
    assert idx.records[0].view is None and idx.summary["images_view_masked"] == 1


@pytest.mark.parametrize(("row", "message"), [
    ("{stem},view,{wrong},A4C,", "stale correction"),
    ("{stem},boxes,0 0.1 0.1 0.05 0.05,,", "stale correction"),
    ("nosuchimage-unnamed_1_1.mp4-3,view,PLAX,A4C,", "unknown stem 'nosuchimage"),
    ("{stem},colour,PLAX,A4C,", "unknown field 'colour'"),
    ("{stem},view,{old},A2C,", "new view 'A2C' is not a class"),
    ("{stem},boxes,{boxes},7 0.5 0.5 0.1 0.1,", "class '7' is not an integer"),
    ("{stem},boxes,{boxes},0 0.5 0.5 0.1,", "is not 'cls cx cy w h'"),
    ("{stem},view,{old},A4C", "4 columns, expected 5"),
])
def test_bad_rows_fail_naming_file_and_line(tiny: Path, tmp_path: Path, row: str,
                                            message: str) -> None:
    spec = load_data_yaml(tiny)
    r = _rec(tiny, "train", 2)
    names = spec.cls_names
    text = row.format(stem=r.path.stem, old=names[r.view], wrong=names[(r.view + 1) % 3],
                      boxes=_boxes_text(r))
    ok = _rec(tiny, "train", 3)  # line 2 is fine: the error is on line 3
    path = _write(tmp_path, f"{ok.path.stem},view,{names[ok.view]},{names[ok.view]},ok", text)
    with pytest.raises(CorrectionError) as e:
        check_corrections(tiny, path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:3: ") and message in msg and "\n" not in msg


def test_header_and_duplicates(tiny: Path, tmp_path: Path) -> None:
    spec = load_data_yaml(tiny)
    bad = tmp_path / "bad.csv"
    bad.write_text("image,field,old,new,note\n")
    with pytest.raises(CorrectionError, match=r"bad\.csv:1: header must be stem,field,old,new"):
        load_corrections(bad, spec)
    r = _rec(tiny, "train", 0)
    v = spec.cls_names[r.view]
    dup = _write(tmp_path, f"{r.path.stem},view,{v},{v},", f"{r.path.stem},view,{v},{v},")
    with pytest.raises(CorrectionError, match=r"corrections\.csv:3: .* already corrected on line 2"):
        load_corrections(dup, spec)


def test_audit_reports_the_corrections(tiny: Path, tmp_path: Path) -> None:
    spec = load_data_yaml(tiny)
    rows = []
    for split, i in (("train", 0), ("train", 4), ("val", 0)):
        r = _rec(tiny, split, i)
        rows.append(f"{r.path.stem},view,{spec.cls_names[r.view]},,")
    path = _write(tmp_path, *rows)
    report = audit_dataset(tiny, corrections=path)
    assert report["corrections"]["applied"] == {"train": 2, "val": 1}
    assert report["corrections"]["rows"] == 3
    assert report["splits"]["train"]["summary"]["images_view_masked"] == 2
    assert audit_dataset(tiny)["corrections"] is None


def test_commands_fail_in_one_line_before_any_work(tiny: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medmtl.cli import app

    r = _rec(tiny, "train", 1)
    wrong = load_data_yaml(tiny).cls_names[(r.view + 1) % 3]
    path = _write(tmp_path, f"{r.path.stem},view,{wrong},,stale")
    runner = CliRunner()
    for args in (["audit", "--data", str(tiny)],
                 ["compare", "--data", str(tiny), "--methods", "fixed", "--out",
                  str(tmp_path / "cmp")],
                 ["train", "--data", str(tiny), "--out", str(tmp_path / "run"), "--epochs", "1",
                  "--imgsz", "64", "--workers", "0", "--no-cache"]):
        res = runner.invoke(app, [*args, "--corrections", str(path)])
        assert res.exit_code == 2, res.output
        text = "".join(ln.strip(" │") for ln in res.output.splitlines())  # unwrap rich's panel
        assert f"{path.name}:2: stale correction" in text, res.output
    assert not (tmp_path / "cmp" / "runs").exists()
