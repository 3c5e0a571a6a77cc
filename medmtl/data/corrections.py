"""Label corrections applied on top of the label files, which stay untouched.

A corrections file is a CSV with the header ``stem,field,old,new,note`` and one row per change:

* ``stem``: the image file's stem (``<patient>-<clip>.mp4-<frame>``);
* ``field``: ``view`` (``old`` / ``new`` are class names of ``cls_names``, e.g. ``PLAX``; empty =
  no view label) or ``boxes`` (the image's whole detection label: YOLO lines ``cls cx cy w h``,
  normalised, joined with ``;``; empty = no boxes);
* ``note``: free text (the reviewer's reason).

``old`` must match the label the files give (a view by name; boxes as a multiset, each coordinate
within `BOX_TOL` of the image side), else the correction is stale and loading fails naming the
corrections file and line: a correction never applies to a label it was not written for. An
unknown stem (in no split of the data YAML), an unknown field or class, a malformed box, or a
second row for the same stem and field fail the same way. `scan_split(..., corrections=...)`
applies the rows of the split it scans while it builds the records, so every consumer (training,
evaluation, audit) sees the corrected labels and the split summary counts them.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.csvio import csv_rows
from medmtl.data.dataset_yaml import DataError, DatasetSpec, list_split_images

HEADER = ("stem", "field", "old", "new", "note")
FIELDS = ("view", "boxes")
BOX_TOL = 1e-3  # |old - current| per normalised coordinate for `old` boxes to match


class CorrectionError(DataError):
    """A corrections file that cannot be applied; the message names the file and line."""


@dataclass(frozen=True)
class Correction:
    line: int
    stem: str
    field: str
    old: Any  # view: int | None; boxes: float64 (M, 5) [cls, cx, cy, w, h]
    new: Any
    note: str


@dataclass
class Corrections:
    """A parsed corrections file; `applied` counts the rows applied, per split scanned."""

    path: Path
    sha256: str
    rows: list[Correction]
    cls_names: list[str]
    applied: dict[str, int] = field(default_factory=dict)
    _by_stem: dict[str, list[Correction]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for c in self.rows:
            self._by_stem.setdefault(c.stem, []).append(c)

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, c: Correction) -> str:
        return f"{self.path}:{c.line}"

    def record(self) -> dict[str, Any]:
        """What a run records (metrics.json's `data.corrections`)."""
        return {"file": str(self.path), "sha256": self.sha256, "rows": len(self.rows),
                "fields": {f: sum(c.field == f for c in self.rows) for f in FIELDS},
                "applied": dict(self.applied)}

    def check_stems(self, stems: set[str]) -> None:
        """Fail on the first row whose stem is no image of the data set."""
        for c in self.rows:
            if c.stem not in stems:
                raise CorrectionError(f"{self.where(c)}: unknown stem {c.stem!r}: no image of "
                                      "that name in any split of the data set")

    def apply(self, rec: Any, split: str) -> int:
        """Apply this file's rows for `rec` (an `ImageRecord`) in place; the number applied."""
        rows = self._by_stem.get(rec.path.stem, ())
        for c in rows:
            if c.field == "view":
                if rec.view != c.old:
                    raise CorrectionError(
                        f"{self.where(c)}: stale correction: {rec.path.name}'s view is "
                        f"{self._view_name(rec.view)}, not {self._view_name(c.old)} as 'old' "
                        "says (label file edited since the review?)")
                rec.view = c.new
            else:
                current = _normalised(rec.boxes, rec.classes, rec.width, rec.height)
                if not _same_boxes(current, c.old):
                    raise CorrectionError(
                        f"{self.where(c)}: stale correction: {rec.path.name}'s boxes are "
                        f"{format_boxes(current) or '(none)'}, not {format_boxes(c.old) or '(none)'}"
                        " as 'old' says (label file edited since the review?)")
                rec.boxes, rec.classes = _pixels(c.new, rec.width, rec.height)
        if rows:
            self.applied[split] = self.applied.get(split, 0) + len(rows)
        return len(rows)

    def _view_name(self, v: int | None) -> str:
        return "(none)" if v is None else self.cls_names[v]


def _normalised(boxes: np.ndarray, classes: np.ndarray, w: int, h: int) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h
    bw, bh = (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h
    return np.stack([np.asarray(classes, np.float64), cx, cy, bw, bh], 1).reshape(-1, 5)


def _pixels(rows: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rows, np.float64).reshape(-1, 5)
    x1, y1 = (r[:, 1] - r[:, 3] / 2) * w, (r[:, 2] - r[:, 4] / 2) * h
    x2, y2 = (r[:, 1] + r[:, 3] / 2) * w, (r[:, 2] + r[:, 4] / 2) * h
    boxes = np.stack([x1, y1, x2, y2], 1).clip(0, [w, h, w, h]).astype(np.float32)
    return boxes.reshape(-1, 4), r[:, 0].astype(np.int64)


def _same_boxes(a: np.ndarray, b: np.ndarray) -> bool:
    if len(a) != len(b):
        return False
    sa, sb = (x[np.lexsort(x.T[::-1])] for x in (a, b))
    return bool(np.all(sa[:, 0] == sb[:, 0]) and np.all(np.abs(sa[:, 1:] - sb[:, 1:]) <= BOX_TOL))


def format_boxes(rows: np.ndarray) -> str:
    """The file's notation: ``cls cx cy w h`` lines joined with ``;``."""
    return ";".join(f"{int(r[0])} " + " ".join(f"{v:.6g}" for v in r[1:]) for r in rows)


def _parse_boxes(text: str, where: str, what: str, num_classes: int) -> np.ndarray:
    rows: list[list[float]] = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        tokens = part.split()
        try:
            vals = [float(t) for t in tokens]
        except ValueError:
            vals = []
        if len(tokens) != 5 or len(vals) != 5 or not all(math.isfinite(v) for v in vals):
            raise CorrectionError(f"{where}: {what} box {part!r} is not 'cls cx cy w h' (five "
                                  "numbers; boxes joined with ';')")
        if not vals[0].is_integer() or not 0 <= vals[0] < num_classes:
            raise CorrectionError(f"{where}: {what} box {part!r}: class {tokens[0]!r} is not an "
                                  f"integer in [0, {num_classes - 1}] (names)")
        if min(vals[1:]) < 0 or max(vals[1:]) > 1 or vals[3] <= 0 or vals[4] <= 0:
            raise CorrectionError(f"{where}: {what} box {part!r}: coordinates must be normalised "
                                  "to [0, 1] with positive width and height")
        rows.append(vals)
    return np.asarray(rows, np.float64).reshape(-1, 5)


def _parse_view(text: str, where: str, what: str, cls_names: list[str]) -> int | None:
    if not text:
        return None
    if text not in cls_names:
        raise CorrectionError(f"{where}: {what} view {text!r} is not a class of cls_names "
                              f"({', '.join(cls_names)}; empty = no view label)")
    return cls_names.index(text)


def load_corrections(path: str | Path, spec: DatasetSpec) -> Corrections:
    """Parse and check a corrections file against a data set: format, fields, class names, and
    that every stem is an image of one of the data YAML's splits."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CorrectionError(f"{path}: cannot read the corrections file ({e.strerror or e})") \
            from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CorrectionError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    reader = csv.reader(text.splitlines(), strict=True)
    rows_in = csv_rows(reader, path, CorrectionError)  # csv.Error: file:line, one line
    header = next(rows_in, None)
    if header is None or tuple(h.strip().lower() for h in header) != HEADER:
        raise CorrectionError(f"{path}:1: header must be {','.join(HEADER)}, got "
                              f"{','.join(header or []) or '(empty file)'}")
    names, cls_names = list(spec.names), list(spec.cls_names)
    rows: list[Correction] = []
    seen: dict[tuple[str, str], int] = {}
    for cells in rows_in:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        where = f"{path}:{line}"
        if len(cells) != len(HEADER):
            raise CorrectionError(f"{where}: {len(cells)} columns, expected {len(HEADER)} "
                                  f"({','.join(HEADER)}; quote a note that holds commas)")
        stem, fld, old, new, note = (c.strip() for c in cells)
        if not stem:
            raise CorrectionError(f"{where}: empty stem")
        if fld not in FIELDS:
            raise CorrectionError(f"{where}: unknown field {fld!r}; expected view or boxes")
        if (stem, fld) in seen:
            raise CorrectionError(f"{where}: {stem} {fld} is already corrected on line "
                                  f"{seen[stem, fld]}; give one row per image and field")
        seen[stem, fld] = line
        if fld == "view":
            o, n = (_parse_view(v, where, w, cls_names) for v, w in ((old, "old"), (new, "new")))
        else:
            o, n = (_parse_boxes(v, where, w, len(names)) for v, w in ((old, "old"), (new, "new")))
        rows.append(Correction(line, stem, fld, o, n, note))
    out = Corrections(path, hashlib.sha256(raw).hexdigest(), rows, cls_names)
    stems = {p.stem for split in spec.splits for p in list_split_images(spec, split)}
    out.check_stems(stems)
    return out


def subset_corrections(corr: Corrections, stems: set[str], out: str | Path) -> Path:
    """Write the rows of ``corr`` whose stem is in ``stems`` to ``out`` (same format, rows as the
    file gives them): the corrections of a data set made of some of the original's images (the
    label-issue folds), which `load_corrections` would refuse for the other stems."""
    text = corr.path.read_bytes().decode("utf-8-sig")
    rows = list(csv.reader(text.splitlines(), strict=True))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for cells in rows[1:]:
            if cells and cells[0].strip() in stems:
                w.writerow(cells)
    return out


__all__ = ["BOX_TOL", "Correction", "CorrectionError", "Corrections", "FIELDS", "HEADER",
           "format_boxes", "load_corrections", "subset_corrections"]
