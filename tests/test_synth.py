"""Synthetic data set: determinism, on-disk format, defects, and a model-free learnability check."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from medmtl.data.synth import NAMES, VIEWS, generate

NAME_RE = re.compile(r"^[A-Za-z0-9]{12}-unnamed_1_\d+\.mp4-\d+$")


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _parse_label(
    path: Path,
) -> tuple[list[tuple[int, tuple[float, float, float, float]]], int | None, bool]:
    """Strict parser of one label file: (boxes as (cls, xyxy)), view or None, is_yolo."""
    text = path.read_text(encoding="utf-8")
    det_part, sep, view_part = text.partition("\n\n")
    det_lines = [ln for ln in det_part.split("\n") if ln.strip()]
    assert det_lines, f"{path.name}: no detection line"
    boxes = []
    yolo = False
    for ln in det_lines:
        tok = ln.split()
        cls = int(tok[0])
        assert 0 <= cls < len(NAMES)
        vals = [float(t) for t in tok[1:]]
        assert all(0.0 <= v <= 1.0 for v in vals), ln
        if len(tok) == 9:  # 4-point polygon, axis-aligned like the real labels
            xs, ys = vals[0::2], vals[1::2]
            assert len(set(xs)) == 2 and len(set(ys)) == 2, ln
            box = (min(xs), min(ys), max(xs), max(ys))
        elif len(tok) == 5:
            yolo = True
            cx, cy, w, h = vals
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            assert -1e-5 <= box[0] and box[2] <= 1 + 1e-5 and -1e-5 <= box[1] and box[3] <= 1 + 1e-5
        else:
            raise AssertionError(f"{path.name}: bad detection line {ln!r}")
        assert box[2] > box[0] and box[3] > box[1]
        boxes.append((cls, box))
    if not sep:
        assert not text.endswith("\n\n")
        return boxes, None, yolo
    view_tok = view_part.split()
    assert len(view_tok) == len(VIEWS), f"{path.name}: view line {view_part!r}"
    onehot = [int(t) for t in view_tok]
    assert sorted(onehot) == [0] * (len(VIEWS) - 1) + [1]
    return boxes, onehot.index(1), yolo


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth_small")
    generate(out, n_train=60, n_val=20, imgsz=80, seed=5, n_test=10)
    return out


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path: Path) -> None:
    a = _files(generate(tmp_path / "a", n_train=14, n_val=6, imgsz=64, seed=3).parent)
    b = _files(generate(tmp_path / "b", n_train=14, n_val=6, imgsz=64, seed=3).parent)
    assert a == b
    assert len(a) == 1 + 2 * (14 + 6)
    c = _files(generate(tmp_path / "c", n_train=14, n_val=6, imgsz=64, seed=4).parent)
    assert set(a) != set(c)  # new patients
    imgs_a = sorted(v for k, v in a.items() if k.endswith(".jpg"))
    imgs_c = sorted(v for k, v in c.items() if k.endswith(".jpg"))
    assert not set(imgs_a) & set(imgs_c)


def test_frames_do_not_depend_on_set_size(tmp_path: Path) -> None:
    small = _files(generate(tmp_path / "s", n_train=9, n_val=3, imgsz=64, seed=1).parent)
    big = _files(generate(tmp_path / "b", n_train=25, n_val=7, imgsz=64, seed=1).parent)
    for k, v in small.items():
        if k != "data.yaml":
            assert big[k] == v, k


def test_format(small_set: Path) -> None:
    spec = yaml.safe_load((small_set / "data.yaml").read_text())
    assert spec["path"] == "."
    assert spec["train"] == "train/images" and spec["val"] == "valid/images"
    assert spec["test"] == "test/images"
    assert spec["names"] == ["AR", "MR", "PR", "TR"]
    assert spec["cls_names"] == ["A4C", "PLAX", "PSAX"]

    patients: dict[str, set[str]] = {}
    for split, n in (("train", 60), ("valid", 20), ("test", 10)):
        images = sorted((small_set / split / "images").iterdir())
        labels = sorted((small_set / split / "labels").iterdir())
        assert len(images) == n and len(labels) == n
        assert [p.stem for p in images] == [p.stem for p in labels]
        classes, views, n_yolo, n_boxes = set(), set(), 0, []
        for img, lbl in zip(images, labels, strict=True):
            assert NAME_RE.match(img.stem), img.name
            assert img.suffix == ".jpg" and lbl.suffix == ".txt"
            with Image.open(img) as im:
                assert im.size == (80, 80) and im.mode == "RGB"
            boxes, view, yolo = _parse_label(lbl)
            assert view is not None  # clean by default
            classes |= {c for c, _ in boxes}
            views.add(view)
            n_yolo += yolo
            n_boxes.append(len(boxes))
            for _, (x1, y1, x2, y2) in boxes:  # jets are big enough to learn
                assert 0.04 <= x2 - x1 <= 0.5 and 0.04 <= y2 - y1 <= 0.5
        patients[split] = {p.stem.split("-")[0] for p in images}
        assert len(patients[split]) < n  # several frames per patient
        if split == "train":
            assert classes == set(range(len(NAMES)))
            assert views == set(range(len(VIEWS)))
            assert 0 < n_yolo < n // 2
            assert set(n_boxes) <= {1, 2}
    assert not patients["train"] & patients["valid"]
    assert not patients["train"] & patients["test"]
    assert not patients["valid"] & patients["test"]


def test_defects_only_when_asked(tmp_path: Path) -> None:
    root = generate(tmp_path / "d", n_train=20, n_val=5, imgsz=64, seed=2, defects=True).parent
    missing = [p for p in (root / "train" / "labels").iterdir() if _parse_label(p)[1] is None]
    assert 1 <= len(missing) <= 2
    for p in missing:  # the boxes stay usable
        assert _parse_label(p)[0]
    assert all(_parse_label(p)[1] is not None for p in (root / "valid" / "labels").iterdir())
    yaml_text = (root / "data.yaml").read_text()
    assert "test:" not in yaml_text


def test_regenerates_own_output_but_refuses_foreign_data(tmp_path: Path) -> None:
    out = tmp_path / "x"
    generate(out, n_train=6, n_val=3, imgsz=48, seed=0)
    generate(out, n_train=4, n_val=2, imgsz=48, seed=0)  # shrinks: stale files removed
    assert len(list((out / "train" / "images").iterdir())) == 4
    foreign = tmp_path / "real"
    (foreign / "train" / "images").mkdir(parents=True)
    (foreign / "data.yaml").write_text("path: .\n")
    with pytest.raises(FileExistsError):
        generate(foreign, n_train=2, n_val=1, imgsz=48)
    assert (foreign / "data.yaml").read_text() == "path: .\n"
    with pytest.raises(ValueError):
        generate(tmp_path / "bad", n_train=-1)


def _grey16(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        g = np.asarray(im.convert("L").resize((16, 16), Image.Resampling.BILINEAR), np.float32)
    g = g.ravel()
    return (g - g.mean()) / (g.std() + 1e-6)


def test_learnable_signal(tmp_path: Path) -> None:
    root = generate(tmp_path / "l", n_train=150, n_val=60, imgsz=96, seed=11).parent
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    jet_sat, bg_sat = [], []
    for split in ("train", "valid"):
        xs, ys = [], []
        for img in sorted((root / split / "images").iterdir()):
            boxes, view, _ = _parse_label(root / split / "labels" / f"{img.stem}.txt")
            xs.append(_grey16(img))
            ys.append(view)
            with Image.open(img) as im:
                rgb = np.asarray(im.convert("RGB"), np.float32)
            sat = rgb.max(axis=2) - rgb.min(axis=2)  # colourfulness; grey tissue is ~0
            h, w = sat.shape
            outside = np.ones((h, w), dtype=bool)
            for _, (x1, y1, x2, y2) in boxes:
                r0, r1, c0, c1 = (
                    int(y1 * h),
                    int(np.ceil(y2 * h)),
                    int(x1 * w),
                    int(np.ceil(x2 * w)),
                )
                jet_sat.append(sat[r0:r1, c0:c1].mean())
                outside[max(0, r0 - 3) : r1 + 3, max(0, c0 - 3) : c1 + 3] = False
            bg_sat.append(sat[outside].mean())
        data[split] = (np.stack(xs), np.array(ys))

    # the jet box is strongly coloured, the rest of the frame almost grey
    assert np.median(jet_sat) > 60.0
    assert np.percentile(jet_sat, 5) > 40.0
    assert np.median(bg_sat) < 8.0
    assert np.median(jet_sat) > 10 * np.median(bg_sat)

    # the view is visible at 16x16: nearest class centroid on held-out patients
    xt, yt = data["train"]
    xv, yv = data["valid"]
    centroids = np.stack([xt[yt == k].mean(axis=0) for k in range(len(VIEWS))])
    pred = np.argmin(((xv[:, None, :] - centroids[None]) ** 2).sum(axis=2), axis=1)
    assert (pred == yv).mean() > 0.8
