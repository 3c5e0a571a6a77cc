"""Issue #14, data side: corrupt images named in audit and in the loader, training on nothing,
every file accounted for, EXIF orientation, conflicting view lines, and resource limits."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from _cli import run_main as _cli
from PIL import Image

from medmtl.data import DataError, MTLDataset, load_data_yaml, scan_split
from medmtl.data.audit import audit_dataset
from medmtl.data.transforms import load_image


def _jpeg(w: int = 48, h: int = 32, seed: int = 0, exif: Image.Exif | None = None) -> bytes:
    a = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90, **({"exif": exif} if exif else {}))
    return buf.getvalue()


def _png(w: int = 48, h: int = 32, colour: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, "PNG")
    return buf.getvalue()


LABEL = "0 0.5 0.5 0.4 0.4\n\n0 1 0\n"


def make_set(root: Path, train: dict[str, bytes | None], labels: dict[str, str] | None = None,
             **yaml_extra: object) -> Path:
    """train/images/<name> with the given bytes (a label per image stem unless `labels` says
    otherwise), one val image, and data.yaml."""
    for s in ("train", "val"):
        (root / s / "images").mkdir(parents=True, exist_ok=True)
        (root / s / "labels").mkdir(parents=True, exist_ok=True)
    (root / "val" / "images" / "v.png").write_bytes(_png())
    (root / "val" / "labels" / "v.txt").write_text(LABEL)
    for name, data in train.items():
        if data is not None:
            (root / "train" / "images" / name).write_bytes(data)
    for stem, text in (labels if labels is not None else
                       {Path(n).stem: LABEL for n in train}).items():
        (root / "train" / "labels" / f"{stem}.txt").write_text(text)
    cfg = {"path": ".", "train": "train/images", "val": "val/images", "names": ["AR", "MR"],
           "cls_names": ["A4C", "PLAX", "PSAX"], **yaml_extra}
    (root / "data.yaml").write_text(yaml.safe_dump(cfg))
    return root / "data.yaml"



def _kinds(problems: list) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in problems:
        out.setdefault(p.kind, []).append(p.message)
    return out


# --- #14.3 corrupt images ---------------------------------------------------------------------

def corrupt_jpegs() -> dict[str, bytes]:
    good = _jpeg()
    half = len(good) // 2
    broken = bytearray(good)
    for i in range(half, half + 64):
        broken[i] = 0xFF if i % 2 else 0x00
    png = bytearray(_png(64, 64, (200, 10, 10)))
    idat = png.index(b"IDAT")
    png[idat + 8: idat + 20] = b"\x00" * 12
    return {"truncated.jpg": good[:half], "eoi_restored.jpg": good[:half] + b"\xff\xd9",
            "bad_huffman.jpg": bytes(broken), "broken_stream.png": bytes(png),
            "empty.png": b"", "good.jpg": good}


def test_audit_decodes_and_names_every_corrupt_image(tmp_path: Path) -> None:
    """#14.3: before, these passed audit with 0 problems and killed training later unnamed."""
    y = make_set(tmp_path, corrupt_jpegs())
    idx = scan_split(load_data_yaml(y), "train")
    bad = {Path(p.file).name for p in idx.problems if p.kind == "image_corrupt"}
    assert bad == {"truncated.jpg", "eoi_restored.jpg", "bad_huffman.jpg", "broken_stream.png",
                   "empty.png"}
    assert [r.path.name for r in idx.records] == ["good.jpg"]
    assert idx.summary["images"] == 6 and idx.summary["images_skipped"] == 5
    eoi = next(p for p in idx.problems if p.file.endswith("eoi_restored.jpg"))
    assert "premature end" in eoi.message.lower() and eoi.severity == "error"
    # headers only (--no-decode): the JPEG whose end marker was put back goes unnoticed
    fast = scan_split(load_data_yaml(y), "train", decode=False)
    assert "eoi_restored.jpg" in {r.path.name for r in fast.records}


def test_loader_names_the_file_and_skips_or_stops(tmp_path: Path) -> None:
    """#14.3: a file that breaks after the scan: --strict stops naming it; otherwise the sample is
    masked out of both losses and counted."""
    y = make_set(tmp_path, {"a.png": _png(), "b.png": _png()})
    idx = scan_split(load_data_yaml(y), "train")
    victim = idx.records[1].path
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    strict = MTLDataset(idx.records, 64, strict=True)
    with pytest.raises(DataError, match=str(victim).replace(".", r"\.") + ": cannot decode"):
        strict[1]
    lenient = MTLDataset(idx.records, 64)
    s = lenient[1]
    assert (s["det_mask"], s["view_mask"], s["view"], len(s["boxes"])) == (False, False, -1, 0)
    assert lenient.unreadable == 1 and lenient[0]["det_mask"] is True
    assert lenient.unreadable == 1


def test_worker_error_is_one_line_naming_the_file() -> None:
    from medmtl.cli import error_text

    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback "
                        "(most recent call last):\n  File \"x.py\", line 1\n"
                        "medmtl.data.dataset_yaml.DataError: /d/a.jpg: cannot decode image")
    assert error_text(wrapped) == "/d/a.jpg: cannot decode image"


# --- #14.4 training on nothing ------------------------------------------------------------------

def test_empty_split_is_a_warning_in_audit_and_an_error_in_train(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """#14.4: before, audit said "images 0" silently and train exited 0 with a best.pt."""
    y = make_set(tmp_path, {"notes.md": b"hello", "data.csv": b"1,2"}, labels={})
    rep = audit_dataset(y)
    tr = rep["splits"]["train"]
    assert tr["images"] == 0 and tr["problems"]["counts"]["no_images"] == 1
    assert tr["summary"]["files_ignored"] == 2
    out = tmp_path / "run"
    code, err = _cli(["train", "--data", str(y), "--out", str(out), "--epochs", "1", "--imgsz",
                      "64", "--workers", "0", "--no-progress"], capsys)
    assert code == 2 and "the train split" in err and "has no usable image" in err
    assert "(0 found, 0 skipped, 2 other files)" in err
    assert not (out / "weights").exists() and not (out / "metrics.json").exists()


def test_empty_cls_names_is_an_error_before_any_work(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    y = make_set(tmp_path, {"a.png": _png()}, cls_names=[])
    out = tmp_path / "run"
    code, err = _cli(["train", "--data", str(y), "--out", str(out), "--imgsz", "64",
                      "--workers", "0", "--no-progress"], capsys)
    assert code == 2 and "'cls_names' is empty" in err and str(y.resolve()) in err
    assert not (out / "weights").exists()


# --- #14.5 discovery, duplicates, EXIF, view conflicts ------------------------------------------

def test_every_file_is_accounted_for(tmp_path: Path) -> None:
    """#14.5: .gif and extension-less images were counted nowhere and their labels called orphan;
    x.jpg and x.png silently shared labels/x.txt."""
    gif = io.BytesIO()
    Image.new("P", (8, 8)).save(gif, "GIF")
    y = make_set(tmp_path, {"a.gif": gif.getvalue(), "noext": _png(), "x.jpg": _jpeg(),
                            "x.png": _png(), "ok.png": _png()})
    idx = scan_split(load_data_yaml(y), "train")
    k = _kinds(idx.problems)
    assert sorted(Path(m.split(":")[0]).name for m in k["unsupported_file"]) == ["a.gif", "noext"]
    assert "label_orphan" not in k
    (dup,) = k["duplicate_stem"]
    assert "x.png" in dup and "x.jpg" in dup and "labels/x.txt" in dup
    assert [r.path.name for r in idx.records] == ["ok.png", "x.jpg"]
    s = idx.summary
    assert (s["images"], s["images_used"], s["images_duplicate"], s["files_ignored"]) == (3, 2, 1, 2)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _jpeg(48, 32, exif=exif)
    y = make_set(tmp_path, {"r.jpg": data}, labels={"r": "0 0.25 0.5 0.5 1.0\n\n1 0 0\n"})
    (rec,) = scan_split(load_data_yaml(y), "train").records
    assert (rec.width, rec.height) == (32, 48)  # displayed size
    np.testing.assert_allclose(rec.boxes, [[0.0, 0.0, 16.0, 48.0]], atol=1e-4)
    img = load_image(rec.path)
    assert img.shape == (48, 32, 3)
    raw = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(img, np.rot90(raw, k=-1))


def test_conflicting_view_lines_name_both_lines(tmp_path: Path) -> None:
    y = make_set(tmp_path, {"a.png": _png(), "b.png": _png()},
                 labels={"a": "0 0.5 0.5 0.2 0.2\n0 1 0\n\n1 0 0\n",
                         "b": "0 0.5 0.5 0.2 0.2\n1 0 0\n\n1 0 0\n"})
    idx = scan_split(load_data_yaml(y), "train")
    k = _kinds(idx.problems)
    (conflict,) = k["view_conflict"]
    assert "a.txt:2:" in conflict and "view lines 2 and 4 disagree" in conflict
    (dup,) = k["view_duplicate"]
    assert "b.txt:2:" in dup and "same as line 4" in dup
    a, b = idx.records
    assert a.view is None and b.view == 0 and len(a.boxes) == len(b.boxes) == 1
    assert "token_count" not in k  # no longer misreported as a bad box


# --- #14.6 resource bombs -----------------------------------------------------------------------

def _yaml_case(tmp_path: Path, text: str) -> Path:
    make_set(tmp_path, {"a.png": _png()})
    y = tmp_path / "bad.yaml"
    y.write_text(text)
    return y


def test_yaml_alias_bomb_and_deep_nesting_fail_fast(tmp_path: Path) -> None:
    rows = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=False):
        rows.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    bomb = "\n".join(rows) + "\npath: .\ntrain: train/images\nval: val/images\nnames: *i\n"
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="alias bomb"):
        load_data_yaml(_yaml_case(tmp_path, bomb))
    with pytest.raises(DataError, match="nested"):
        load_data_yaml(_yaml_case(tmp_path, "names: " + "[" * 50_000 + "]" * 50_000))
    with pytest.raises(DataError, match="'names' entries must be names"):
        load_data_yaml(_yaml_case(tmp_path, "path: .\ntrain: train/images\nval: val/images\n"
                                            "names: [[1, 2]]\ncls_names: [a]\n"))
    with pytest.raises(DataError, match="more than"):
        load_data_yaml(_yaml_case(tmp_path, "# " + "x" * (2 << 20)))
    assert time.perf_counter() - t0 < 30


def test_box_limit_and_long_tokens_are_clipped(tmp_path: Path) -> None:
    many = "".join("0 0.5 0.5 0.1 0.1\n" for _ in range(1500)) + "\n0 1 0\n"
    token = "9" * 10 + "x" * 5_000_000
    y = make_set(tmp_path, {"a.png": _png(), "b.png": _png()},
                 labels={"a": many, "b": f"{token} 0.5 0.5 0.1 0.1\n\n0 1 0\n"})
    idx = scan_split(load_data_yaml(y), "train", max_boxes=1000)
    k = _kinds(idx.problems)
    (limit,) = k["too_many_boxes"]
    assert "a.txt:1001:" in limit and "1500 box lines" in limit
    # 500 past the limit in a.txt, and b.txt's one box with the bad token
    assert len(idx.records[0].boxes) == 1000 and idx.summary["boxes_skipped"] == 501
    (tok,) = k["non_numeric"]
    assert len(tok) < 400 and "more characters" in tok
    rep = audit_dataset(y)
    assert len(json.dumps(rep)) < 50_000
