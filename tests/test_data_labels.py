"""Dataset YAML, label forms and every label defect: file:line in the message, counted in the summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from medmtl.data import DataError, SplitIndex, format_problems, load_data_yaml, scan_split

W, H = 40, 20  # image size used below: boxes in pixels are easy to check


def _write_set(root: Path, labels: dict[str, str | None], split: str = "train",
               cls_names: list[str] | None = None, extra: dict | None = None) -> Path:
    """Images (W x H PNG) + labels for ``split`` (and an empty ``val``); return the YAML path."""
    for s in {split, "val"}:
        (root / s / "images").mkdir(parents=True, exist_ok=True)
        (root / s / "labels").mkdir(parents=True, exist_ok=True)
    for stem, text in labels.items():
        Image.new("RGB", (W, H), (10, 20, 30)).save(root / split / "images" / f"{stem}.png")
        if text is not None:
            (root / split / "labels" / f"{stem}.txt").write_text(text)
    data = {"path": ".", "train": "train/images", "val": "val/images", "names": ["A", "B"],
            "cls_names": cls_names if cls_names is not None else ["v0", "v1", "v2"], **(extra or {})}
    y = root / "data.yaml"
    y.write_text(yaml.safe_dump(data))
    return y


def _scan(tmp_path: Path, labels: dict[str, str | None],
          cls_names: list[str] | None = None) -> SplitIndex:
    return scan_split(load_data_yaml(_write_set(tmp_path, labels, cls_names=cls_names)), "train")


# --- dataset YAML ---------------------------------------------------------------------------------

def test_yaml_dict_names_valid_key_and_txt_list(tmp_path: Path) -> None:
    y = _write_set(tmp_path / "d", {"a": "0 0.5 0.5 0.5 0.5\n\n1 0 0"},
                   extra={"names": {0: "A", 1: "B"}, "cls_names": {1: "v1", 0: "v0", 2: "v2"}})
    (tmp_path / "d" / "lists").mkdir()
    (tmp_path / "d" / "lists" / "val.txt").write_text("train/images/a.png\n\n")
    raw = yaml.safe_load(y.read_text())
    del raw["val"]
    raw["valid"] = "lists/val.txt"
    raw["path"] = "d"
    y2 = tmp_path / "other.yaml"
    y2.write_text(yaml.safe_dump(raw))
    spec = load_data_yaml(y2)
    assert spec.names == ["A", "B"] and spec.cls_names == ["v0", "v1", "v2"]
    assert spec.root == (tmp_path / "d").resolve() and spec.yaml_path == y2.resolve()
    assert spec.splits["val"].name == "val.txt"
    idx = scan_split(spec, "val")
    assert [r.path.name for r in idx.records] == ["a.png"] and idx.records[0].view == 0


@pytest.mark.parametrize(("edit", "needle"), [
    ({"train": None}, "missing key 'train'"),
    ({"names": None}, "missing key 'names'"),
    ({"cls_names": None}, "missing key 'cls_names'"),
    ({"val": "nope/images"}, "does not exist"),
    ({"path": "missing_root"}, "is not a folder"),
])
def test_yaml_errors_name_the_file(tmp_path: Path, edit: dict, needle: str) -> None:
    y = _write_set(tmp_path, {"a": "0 0.5 0.5 0.5 0.5"})
    raw = yaml.safe_load(y.read_text())
    for k, v in edit.items():
        raw.pop(k) if v is None else raw.__setitem__(k, v)
    y.write_text(yaml.safe_dump(raw))
    with pytest.raises(DataError) as e:
        load_data_yaml(y)
    assert str(y.resolve()) in str(e.value) and needle in str(e.value)


# --- label forms ------------------------------------------------------------------------------------

def test_yolo_polygon_and_view_lines(tmp_path: Path) -> None:
    text = "1 0.5 0.5 0.5 0.5\n0 0.1 0.2 0.3 0.2 0.3 0.6 0.1 0.6\n\n0 0 1"
    idx = _scan(tmp_path, {"a": text})
    (r,) = idx.records
    np.testing.assert_allclose(r.boxes, [[10, 5, 30, 15], [4, 4, 12, 12]], atol=1e-4)
    assert r.boxes.dtype == np.float32 and r.classes.dtype == np.int64
    assert r.classes.tolist() == [1, 0] and r.view == 2 and r.has_label_file
    assert idx.problems == []
    s = idx.summary
    assert (s["images"], s["boxes"], s["views"], s["warnings"], s["errors"]) == (1, 2, 1, 0, 0)
    assert s["boxes_per_class"] == {"A": 1, "B": 1} and s["views_per_class"]["v2"] == 1


def test_file_with_only_view_and_only_boxes(tmp_path: Path) -> None:
    idx = _scan(tmp_path, {"boxes": "0 0.5 0.5 0.2 0.2\n", "view": "\n0 1 0\n", "view2": "1 0 0"})
    by = {r.path.stem: r for r in idx.records}
    assert by["boxes"].view is None and len(by["boxes"].boxes) == 1
    assert by["view"].view == 1 and len(by["view"].boxes) == 0
    assert by["view2"].view == 0  # 3 tokens cannot be a box: a view even without a blank line
    kinds = {(Path(p.file).stem, p.kind) for p in idx.problems}
    assert kinds == {("boxes", "no_view"), ("view", "no_boxes"), ("view2", "no_boxes")}
    assert all(p.severity == "warning" and p.file in p.message for p in idx.problems)
    s = idx.summary
    assert (s["images_used"], s["images_det"], s["images_det_masked"]) == (3, 1, 2)
    assert (s["images_view"], s["images_view_masked"], s["views"]) == (2, 1, 2)


def test_five_token_line_view_or_box(tmp_path: Path) -> None:
    five = ["c0", "c1", "c2", "c3", "c4"]
    idx = _scan(tmp_path, {"v": "0 0.5 0.5 0.2 0.2\n\n0 1 0 0 0", "b": "0 0.5 0.5 0.2 0.2\n1 1 0 1 1"},
                cls_names=five)
    by = {r.path.stem: r for r in idx.records}
    assert by["v"].view == 1 and len(by["v"].boxes) == 1  # after a blank line, last: the view
    assert by["b"].view is None and len(by["b"].boxes) == 2  # no blank line: a YOLO box


# --- defects ----------------------------------------------------------------------------------------

DEFECTS = [
    # label text, kind, line, severity, boxes used, summary key counting the skipped/clipped item
    ("0 0.5 0.5 0.2\n\n0 1 0", "token_count", 1, "error", 0, "boxes_skipped"),
    ("0 0.1 0.1 0.2 0.1 0.2 0.2 0.1\n\n0 1 0", "token_count", 1, "error", 0, "boxes_skipped"),
    ("1 0.5 0.5 0.2 0.2\n0 0.5 abc 0.2 0.2\n\n0 1 0", "non_numeric", 2, "error", 1, "boxes_skipped"),
    ("0 0.5 nan 0.2 0.2\n\n0 1 0", "non_numeric", 1, "error", 0, "boxes_skipped"),
    ("7 0.5 0.5 0.2 0.2\n\n0 1 0", "class_id", 1, "error", 0, "boxes_skipped"),
    ("-1 0.5 0.5 0.2 0.2\n\n0 1 0", "class_id", 1, "error", 0, "boxes_skipped"),
    ("0.5 0.5 0.5 0.2 0.2\n\n0 1 0", "class_id", 1, "error", 0, "boxes_skipped"),
    ("0 0.5 0.5 0.2 0.2\n0 0.95 0.5 0.2 0.2\n\n0 1 0", "coord_range", 2, "warning", 2, "boxes_clipped"),
    ("0 0.5 0.5 0.0 0.2\n\n0 1 0", "degenerate", 1, "warning", 0, "boxes_skipped"),
    ("0 0.5 0.5 0.2 0.2\n\n0 0 0", "view_onehot", 3, "error", 1, "views_skipped"),
    ("0 0.5 0.5 0.2 0.2\n\n1 1 0", "view_onehot", 3, "error", 1, "views_skipped"),
    ("0 0.5 0.5 0.2 0.2\n\n\n0 1 0 0", "view_length", 4, "error", 1, "views_skipped"),
]


@pytest.mark.parametrize(("text", "kind", "line", "severity", "n_boxes", "counter"), DEFECTS)
def test_defect_names_file_and_line(tmp_path: Path, text: str, kind: str, line: int,
                                    severity: str, n_boxes: int, counter: str) -> None:
    idx = _scan(tmp_path, {"img-1": text})
    hits = [p for p in idx.problems if p.kind == kind]
    assert len(hits) == 1, format_problems(idx.problems)
    p = hits[0]
    label = tmp_path / "train" / "labels" / "img-1.txt"
    assert p.file == str(label) and p.line == line and p.severity == severity
    assert f"{label}:{line}:" in p.message and f"img-1.txt:{line}" in str(p)
    assert idx.summary[counter] == 1
    assert idx.summary["boxes"] == n_boxes == len(idx.records[0].boxes)
    assert idx.summary["images_used"] == 1  # a bad line never drops the image


def test_clipped_box_is_kept_in_the_image(tmp_path: Path) -> None:
    idx = _scan(tmp_path, {"a": "0 0.95 0.5 0.2 0.2\n\n0 1 0"})
    np.testing.assert_allclose(idx.records[0].boxes, [[34, 8, 40, 12]], atol=1e-4)
    idx = _scan(tmp_path / "b", {"a": "0 1.5 0.5 0.2 0.2\n\n0 1 0"})  # clipped to nothing
    assert {p.kind for p in idx.problems} == {"coord_range", "degenerate", "no_boxes"}
    assert idx.summary["boxes_skipped"] == 1 and idx.summary["images_det_masked"] == 1


def test_missing_label_orphan_and_corrupt_images(tmp_path: Path) -> None:
    y = _write_set(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n\n0 1 0", "b": None, "c": "0 0.5 0.5 0.2 0.2"})
    (tmp_path / "train" / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "train" / "images" / "broken.png").write_bytes(b"not an image at all")
    good = (tmp_path / "train" / "images" / "a.png").read_bytes()
    (tmp_path / "train" / "images" / "cut.png").write_bytes(good[: len(good) // 2])
    Image.new("RGB", (W, H)).save(tmp_path / "train" / "images" / "trunc.jpg")
    jpg = (tmp_path / "train" / "images" / "trunc.jpg").read_bytes()
    (tmp_path / "train" / "images" / "trunc.jpg").write_bytes(jpg[: len(jpg) // 2])
    idx = scan_split(load_data_yaml(y), "train")
    by_kind: dict[str, list[str]] = {}
    for p in idx.problems:
        by_kind.setdefault(p.kind, []).append(Path(p.file).name)
        assert p.file in p.message
    assert sorted(by_kind["image_corrupt"]) == ["broken.png", "cut.png", "trunc.jpg"]
    assert by_kind["label_missing"] == ["b.png"] and by_kind["label_orphan"] == ["ghost.txt"]
    assert by_kind["no_view"] == ["c.txt"]
    ids = {r.path.name: r.image_id for r in idx.records}  # index in sorted order of all images
    assert ids == {"a.png": 0, "b.png": 1, "c.png": 3}
    b = next(r for r in idx.records if r.path.name == "b.png")
    assert not b.has_label_file and b.view is None and len(b.boxes) == 0
    s = idx.summary
    assert (s["images"], s["images_used"], s["images_skipped"], s["images_unlabelled"]) == (6, 3, 3, 1)
    assert (s["orphan_labels"], s["errors"], s["warnings"]) == (1, 3, 3)


def test_strict_raises_with_file_and_line(tmp_path: Path) -> None:
    y = _write_set(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n\n0 1 0"})
    spec = load_data_yaml(y)
    assert len(scan_split(spec, "train").records) == 1
    with pytest.raises(DataError) as e:
        scan_split(spec, "train", strict=True)
    assert f"{tmp_path / 'train' / 'labels' / 'a.txt'}:2:" in str(e.value)
    assert e.value.problems and e.value.problems[0].kind == "class_id"
    y = _write_set(tmp_path / "w", {"a": "0 0.5 0.5 0.2 0.2\n"})  # a warning only (no view)
    with pytest.raises(DataError, match="no usable view line"):
        scan_split(load_data_yaml(y), "train", strict=True)


def test_format_problems_limit(tmp_path: Path) -> None:
    text = "9 0.5 0.5 0.2 0.2\n" * 30 + "\n0 1 0"
    idx = _scan(tmp_path, {"a": text})
    out = format_problems(idx.problems, limit=5)
    assert out.count("class_id") == 1 and "a.txt:1:" in out and "a.txt:6:" not in out
    assert "... and 26 more" in out and "31 problem(s)" in out
    assert format_problems([]) == "no label problems"
