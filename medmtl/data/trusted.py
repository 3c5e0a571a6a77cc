"""Trusted view labels and the estimated corruption matrix (issue #27).

A *trusted* label is a clip's view judged by a person who looked at it (the review page's
decisions, or a CSV written by hand). It is evidence of another kind than the label files: it
lets medmtl estimate how the files' view labels are corrupted (`medmtl.labelissues.noise`) and
train the view head with that correction (``--view-labels forward``).

Trusted file: a CSV with the header ``clip,view,reviewer,date,how`` (any column order, extra
columns kept as they are ignored), one row per clip:

* ``clip``: the clip id (`medmtl.data.groups.clip_of` of any of its frames, e.g.
  ``a2lrwqduZsKc-unnamed_1_2``); one decision labels every frame of the clip;
* ``view``: a class name of the data's ``cls_names``, or ``?`` for "looked at, can't tell" (not
  a label: the clip is only kept out of the next suggested review lists);
* ``reviewer``: who judged it (a name, or e.g. ``medmtl developer, not a clinician``);
* ``date``: ``YYYY-MM-DD``;
* ``how``: how the view was judged (e.g. ``by eye, 3 frames``), free text.

A clip named twice with two views is an error; twice with the same view, one label.

Corruption file (``corruption.json``, written by ``medmtl audit --label-issues --trusted``):
``{"classes": [...], "matrix": [[...]], ...}`` where ``matrix[i][j]`` estimates
P(label file says j | true view i); rows sum to 1.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.csvio import csv_header, csv_rows
from medmtl.data.dataset_yaml import DataError
from medmtl.errors import clip_text

TRUSTED_COLUMNS = ("clip", "view", "reviewer", "date", "how")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class TrustedLabel:
    clip: str
    view: int
    reviewer: str
    date: str
    how: str
    line: int


@dataclass
class TrustedSet:
    """The trusted clip labels of one file."""

    path: Path
    sha256: str
    cls_names: list[str]
    labels: dict[str, TrustedLabel] = field(default_factory=dict)
    unsure: dict[str, TrustedLabel] = field(default_factory=dict)  # view -1: can't tell

    def __len__(self) -> int:
        return len(self.labels)

    def view_of(self, clip: str) -> int | None:
        t = self.labels.get(clip)
        return None if t is None else t.view

    def per_class(self) -> dict[str, int]:
        counts = np.bincount([t.view for t in self.labels.values()],
                             minlength=len(self.cls_names))
        return dict(zip(self.cls_names, counts.tolist(), strict=True))

    def record(self) -> dict[str, Any]:
        """metrics.json / label_issues.json block: file, sha256, clips, per class, reviewers."""
        return {"path": str(self.path), "sha256": self.sha256, "clips": len(self),
                "per_class": self.per_class(), "cant_tell": len(self.unsure),
                "reviewers": sorted({t.reviewer for t in self.labels.values()})}


def load_trusted(path: str | Path, cls_names: list[str]) -> TrustedSet:
    """Read and check a trusted-labels CSV; any defect is a `DataError` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: trusted labels file not found (a CSV with the header "
                        f"{','.join(TRUSTED_COLUMNS)})")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save the trusted labels as a UTF-8 CSV") \
            from None
    reader = csv.DictReader(text.splitlines(), strict=True)  # an open quote is an error
    header = [c.strip() for c in (csv_header(reader, path, DataError) or [])]
    missing = [c for c in TRUSTED_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; the header must hold "
                        f"{','.join(TRUSTED_COLUMNS)}")
    out = TrustedSet(path, hashlib.sha256(raw).hexdigest(), list(cls_names))
    for line, row in enumerate(csv_rows(reader, path, DataError), start=2):
        row = {k.strip(): v.strip() if isinstance(v, str) else "" for k, v in row.items() if k}
        clip, view = row["clip"], row["view"]
        if not clip:
            raise DataError(f"{path}:{line}: empty clip")
        if view == "?":
            out.unsure.setdefault(clip, TrustedLabel(clip, -1, row["reviewer"], row["date"],
                                                     row["how"], line))
            continue
        if view not in cls_names:
            raise DataError(f"{path}:{line}: view {clip_text(view)!s} is not one of "
                            f"{', '.join(cls_names)} (or ? for can't tell)")
        for col in ("reviewer", "how"):
            if not row[col]:
                raise DataError(f"{path}:{line}: empty {col}; say who judged the clip and how "
                                "(a trusted label without them is not evidence)")
        if not _DATE.match(row["date"]):
            raise DataError(f"{path}:{line}: date {clip_text(row['date'])} is not YYYY-MM-DD")
        label = TrustedLabel(clip, cls_names.index(view), row["reviewer"], row["date"],
                             row["how"], line)
        old = out.labels.get(clip)
        if old is not None and old.view != label.view:
            raise DataError(f"{path}:{line}: clip {clip} is labelled "
                            f"{cls_names[old.view]} on line {old.line} and {view} here")
        out.labels.setdefault(clip, label)
    if not out.labels and not out.unsure:
        raise DataError(f"{path}: no trusted label (only a header)")
    for clip in list(out.unsure):
        if clip in out.labels:  # judged elsewhere in the file: the judgement stands
            del out.unsure[clip]
    return out


@dataclass
class Corruption:
    """An estimated corruption matrix: ``matrix[i, j]`` = P(given j | true i)."""

    classes: list[str]
    matrix: np.ndarray
    path: Path | None = None
    doc: dict[str, Any] = field(default_factory=dict)


COND_WARN = 10.0


def conditioning_note(matrix: np.ndarray, classes: list[str]) -> str | None:
    """A warning when the matrix is ill-conditioned (condition number above `COND_WARN`): two
    true views whose rows are close corrupt alike, so the file labels cannot tell them apart
    and forward correction may trade one view's recall for the other's."""
    m = np.asarray(matrix, np.float64)
    cond = float(np.linalg.cond(m))
    if cond <= COND_WARN:
        return None
    k = len(classes)
    pairs = [(float(np.abs(m[i] - m[j]).sum()), i, j) for i in range(k) for j in range(i + 1, k)]
    d, i, j = min(pairs)
    return (f"the corruption matrix is ill-conditioned (condition number {cond:.0f}): the rows "
            f"of {classes[i]} and {classes[j]} differ by only {d:.2f} (L1), so the file labels "
            f"barely tell these true views apart; forward correction may trade one's recall for "
            f"the other's, and only the trusted clips carry that distinction")


def load_corruption(path: str | Path, cls_names: list[str]) -> Corruption:
    """Read ``corruption.json``; its classes must be ``cls_names`` in order, rows must sum to 1."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        classes, m = list(doc["classes"]), np.asarray(doc["matrix"], np.float64)
    except FileNotFoundError:
        raise DataError(f"{path}: corruption file not found (medmtl audit --label-issues "
                        "--trusted FILE writes one)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a corruption file ({clip_text(e)}); expected JSON with "
                        "'classes' and 'matrix'") from None
    k = len(cls_names)
    if classes != list(cls_names):
        raise DataError(f"{path}: classes {classes} differ from the data's cls_names "
                        f"{list(cls_names)}")
    if m.shape != (k, k) or not np.all(np.isfinite(m)) or m.min() < 0 \
            or not np.allclose(m.sum(1), 1.0, atol=1e-3):
        raise DataError(f"{path}: matrix must be {k}x{k}, non-negative, rows summing to 1")
    if abs(np.linalg.det(m)) < 1e-6:
        raise DataError(f"{path}: the matrix is singular (two true views corrupt alike); "
                        "forward correction cannot tell them apart")
    return Corruption(list(classes), m / m.sum(1, keepdims=True), path, doc)


__all__ = ["COND_WARN", "TRUSTED_COLUMNS", "Corruption", "conditioning_note", "TrustedLabel", "TrustedSet", "load_corruption",
           "load_trusted"]
