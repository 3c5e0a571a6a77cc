"""Label parsing and validation: every image of a split with its boxes and view, plus the problems.

Label file (one per image, under ``labels/`` beside ``images/``, same stem)::

    cls cx cy w h                 detection, YOLO box (normalised)
    cls x1 y1 x2 y2 ... xn yn     detection, polygon with n >= 3 points -> enclosing box
    none                          or: looked at, no jet here (a negative: trains detection as
                                  background); a file without box lines leaves detection unlabelled
                                  (blank line)
    0 1 0                         view: one-hot over cls_names, the last non-empty line

The last non-empty line is the view when it holds only ``0``/``1`` tokens and either follows a
blank line or cannot be a detection line (token count not 5 and not odd >= 7). Nothing is dropped
silently: each defect is a `LabelProblem` naming file and line, and the summary counts what was
used, masked and skipped. ``severity="error"`` means the item (image, box or view) was skipped.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medmtl.data.dataset_yaml import (
    DataError,
    DatasetSpec,
    label_path_for,
    split_images,
    split_source,
)
from medmtl.data.images import check_image
from medmtl.errors import clip_text

if TYPE_CHECKING:
    from medmtl.data.corrections import Corrections

NO_JET = "none"  # a detection line saying: looked at, nothing to box (a negative frame)
MAX_BOXES = 1000  # boxes per image (default of --max-boxes): the assigner's memory grows with it
MAX_LABEL_BYTES = 16 << 20  # a label file larger than this is not read
COORD_TOL = 1e-3  # normalised coordinates this far outside [0, 1] are clipped without a warning
Severity = Literal["warning", "error"]


@dataclass(frozen=True)
class LabelProblem:
    file: str
    line: int | None  # 1-based; None for file-level problems
    kind: str
    message: str  # already names file (and line)
    severity: Severity

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


@dataclass
class ImageRecord:
    path: Path
    image_id: int
    width: int
    height: int
    boxes: np.ndarray  # float32 (M, 4) xyxy, original pixels
    classes: np.ndarray  # int64 (M,)
    view: int | None
    has_label_file: bool
    label_path: Path | None = None
    no_jet: bool = False  # the label file says "none": looked at, no box here
    view_trusted: bool = False  # the view is a trusted clip label (--trusted), not the file's

    @property
    def has_boxes(self) -> bool:
        return len(self.boxes) > 0

    @property
    def det_labelled(self) -> bool:
        """Detection is labelled: boxes, or an explicit "none" (a negative frame)."""
        return self.has_boxes or self.no_jet

    @property
    def has_view(self) -> bool:
        return self.view is not None


@dataclass
class SplitIndex:
    split: str
    records: list[ImageRecord]
    problems: list[LabelProblem]
    summary: dict[str, Any]
    names: list[str] = field(default_factory=list)
    cls_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class ParsedLabels:
    boxes: np.ndarray
    classes: np.ndarray
    view: int | None
    problems: list[LabelProblem]
    counts: Counter[str]
    no_jet: bool = False


def _where(file: Path | str, line: int | None) -> str:
    return f"{file}:{line}" if line is not None else f"{file}"


def _problem(file: Path | str, line: int | None, kind: str, msg: str, sev: Severity) -> LabelProblem:
    return LabelProblem(str(file), line, kind, f"{_where(file, line)}: {msg}", sev)


def format_problems(problems: list[LabelProblem], limit: int = 20) -> str:
    """One line per problem (``severity: file:line: message``), at most ``limit``, then a tally."""
    if not problems:
        return "no label problems"
    lines = [str(p) for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    kinds = Counter(p.kind for p in problems)
    lines.append(f"{len(problems)} problem(s): " + ", ".join(f"{k}={n}" for k, n in kinds.most_common()))
    return "\n".join(lines)


def _is_view_tokens(tokens: list[str]) -> bool:
    return bool(tokens) and all(t in ("0", "1") for t in tokens)


def _could_be_box(n_tokens: int) -> bool:
    return n_tokens == 5 or (n_tokens >= 7 and n_tokens % 2 == 1)


def parse_label_text(text: str, file: Path | str, width: int, height: int,
                     num_classes: int, num_views: int, tol: float = COORD_TOL,
                     max_boxes: int = MAX_BOXES) -> ParsedLabels:
    """Parse one label file's text for an image of ``width`` x ``height`` pixels. Box lines past
    ``max_boxes`` are skipped with one error; two view lines that disagree are an error naming
    both lines (the view is skipped)."""
    problems: list[LabelProblem] = []
    counts: Counter[str] = Counter()
    lines = text.splitlines()
    nonblank = [i for i, ln in enumerate(lines) if ln.strip()]
    view: int | None = None
    view_line: int | None = None
    view_extra: set[int] = set()
    if nonblank and num_views > 0:
        last = nonblank[-1]
        tokens = lines[last].split()
        after_blank = last > 0 and not lines[last - 1].strip()
        if _is_view_tokens(tokens) and (after_blank or not _could_be_box(len(tokens))):
            view_line = last
            n = last + 1
            ones = [i for i, t in enumerate(tokens) if t == "1"]
            if len(tokens) != num_views:
                problems.append(_problem(file, n, "view_length", f"view one-hot has {len(tokens)} "
                                         f"values, expected {num_views} (cls_names); view skipped", "error"))
            elif len(ones) != 1:
                problems.append(_problem(file, n, "view_onehot", f"view line "
                                         f"{clip_text(lines[last].strip())!r} has {len(ones)} ones, "
                                         "expected exactly 1; view skipped", "error"))
            else:
                view = ones[0]
            # another line that can only be a view line: a conflict (or a repeat)
            for j in nonblank[:-1]:
                other = lines[j].split()
                if not (_is_view_tokens(other) and not _could_be_box(len(other))):
                    continue
                view_extra.add(j)
                if other == tokens:
                    problems.append(_problem(file, j + 1, "view_duplicate", f"view line repeated "
                                             f"(same as line {n}); ignored", "warning"))
                else:
                    problems.append(_problem(file, j + 1, "view_conflict", f"view lines {j + 1} "
                                             f"and {n} disagree ({clip_text(lines[j].strip())!r} vs "
                                             f"{clip_text(lines[last].strip())!r}); view skipped",
                                             "error"))
                    view = None
            counts["views_skipped" if view is None else "views"] += 1

    boxes: list[list[float]] = []
    classes: list[int] = []
    box_lines = [i for i in nonblank if i != view_line and i not in view_extra]
    none_lines = [i for i in box_lines if lines[i].strip().lower() == NO_JET]
    box_lines = [i for i in box_lines if i not in none_lines]
    no_jet = bool(none_lines)
    if len(box_lines) > max_boxes:
        extra = len(box_lines) - max_boxes
        problems.append(_problem(file, box_lines[max_boxes] + 1, "too_many_boxes", f"{len(box_lines)} "
                                 f"box lines, more than --max-boxes {max_boxes}; the last {extra} "
                                 "skipped", "error"))
        counts["boxes_skipped"] += extra
        box_lines = box_lines[:max_boxes]
    for i in box_lines:
        n = i + 1
        tokens = lines[i].split()
        if not _could_be_box(len(tokens)):
            problems.append(_problem(file, n, "token_count", f"{len(tokens)} tokens; expected 5 "
                                     "('cls cx cy w h'), an odd count >= 7 (polygon 'cls x1 y1 ... "
                                     "xn yn'), or a view one-hot after a blank line; box skipped", "error"))
            counts["boxes_skipped"] += 1
            continue
        try:
            vals = [float(t) for t in tokens]
        except ValueError:
            bad = next(t for t in tokens if not _is_float(t))
            problems.append(_problem(file, n, "non_numeric", f"non-numeric token "
                                     f"{clip_text(bad)!r}; box skipped", "error"))
            counts["boxes_skipped"] += 1
            continue
        if not all(math.isfinite(v) for v in vals):
            problems.append(_problem(file, n, "non_numeric", "non-finite value (nan/inf); box skipped",
                                     "error"))
            counts["boxes_skipped"] += 1
            continue
        c = vals[0]
        if not c.is_integer() or not 0 <= c < num_classes:
            problems.append(_problem(file, n, "class_id", f"class id {clip_text(tokens[0])!r} not an integer in "
                                     f"[0, {num_classes - 1}] (names); box skipped", "error"))
            counts["boxes_skipped"] += 1
            continue
        if len(vals) == 5:
            cx, cy, w, h = vals[1:]
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        else:
            xs, ys = vals[1::2], vals[2::2]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
        if min(x1, y1) < -tol or max(x2, y2) > 1 + tol:
            problems.append(_problem(file, n, "coord_range", f"box ({x1:.4g}, {y1:.4g}, {x2:.4g}, "
                                     f"{y2:.4g}) outside [0, 1]; clipped", "warning"))
            counts["boxes_clipped"] += 1
        x1, x2 = (min(max(v, 0.0), 1.0) * width for v in (x1, x2))
        y1, y2 = (min(max(v, 0.0), 1.0) * height for v in (y1, y2))
        if x2 - x1 <= 1e-6 * width or y2 - y1 <= 1e-6 * height:
            problems.append(_problem(file, n, "degenerate", f"box has zero width or height "
                                     f"({x2 - x1:.3g} x {y2 - y1:.3g} px) after clipping; box skipped",
                                     "warning"))
            counts["boxes_skipped"] += 1
            continue
        boxes.append([x1, y1, x2, y2])
        classes.append(int(c))
        counts["boxes"] += 1
    if no_jet and (boxes or counts["boxes_skipped"]):
        problems.append(_problem(file, none_lines[0] + 1, "no_jet_conflict", "'none' (no jet) "
                                 "beside box lines; the boxes are kept, the 'none' ignored",
                                 "error"))
        no_jet = False
    return ParsedLabels(np.asarray(boxes, np.float32).reshape(-1, 4),
                        np.asarray(classes, np.int64), view, problems, counts, no_jet)


def _is_float(t: str) -> bool:
    try:
        float(t)
    except ValueError:
        return False
    return True


def _orphans(spec: DatasetSpec, split: str, images: list[Path]) -> list[Path]:
    """Label files in the scanned label folders whose image does not exist on disk."""
    src = split_source(spec, split)
    pairs: set[tuple[Path, Path]] = set()  # (label dir, image dir)
    if src.is_dir():
        dirs = {p.parent for p in images} | {src}
        pairs = {(label_path_for(d / "x.jpg").parent, d) for d in dirs}
    else:
        pairs = {(label_path_for(p).parent, p.parent) for p in images}
    stems: dict[Path, set[str]] = {}
    out: list[Path] = []
    for ldir, idir in sorted(pairs):
        if not ldir.is_dir():
            continue
        if idir not in stems:  # any file: an unsupported image is reported as such, not here
            stems[idir] = {p.stem for p in idir.iterdir() if p.is_file()} \
                if idir.is_dir() else set()
        out += [t for t in sorted(ldir.glob("*.txt")) if t.stem not in stems[idir]]
    return sorted(set(out))


def scan_split(spec: DatasetSpec, split: str, strict: bool = False,
               tol: float = COORD_TOL, corrections: Corrections | None = None,
               decode: bool = True, max_boxes: int = MAX_BOXES) -> SplitIndex:
    """Every image of ``split`` with its parsed labels, the problems, and a summary of counts.

    ``corrections`` (`medmtl.data.corrections`) are applied to the records as they are built
    (the summary then counts the corrected labels, and ``corrections_applied``).
    Every file under the split's folder is accounted for (`medmtl.data.images.discover`): used,
    or named in a problem. ``decode=True`` decodes every image (corrupt files are named and
    skipped); ``decode=False`` checks headers only.

    ``strict=True`` raises `DataError` (listing ``file:line`` of each problem) when any problem,
    warning or error, was found.
    """
    key = "val" if split == "valid" else split
    images, notes = split_images(spec, key)
    nc, nv = len(spec.names), len(spec.cls_names)
    records: list[ImageRecord] = []
    problems = [LabelProblem(n.file, None, n.kind, n.message, n.severity)  # type: ignore[arg-type]
                for n in notes]
    counts: Counter[str] = Counter(n.kind for n in notes)
    if not images:
        problems.append(_problem(split_source(spec, key), None, "no_images", f"the {key} split "
                                 f"has no images ({len(notes)} other file(s))", "warning"))
    box_cls: Counter[int] = Counter()
    view_cls: Counter[int] = Counter()
    for image_id, img in enumerate(images):
        size = check_image(img, decode=decode)
        if isinstance(size, str):
            problems.append(_problem(img, None, "image_corrupt", f"unreadable or corrupt image "
                                     f"({size}); image skipped", "error"))
            counts["images_skipped"] += 1
            continue
        w, h = size
        lbl = label_path_for(img)
        parsed = ParsedLabels(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), None, [], Counter())
        has_label = lbl.is_file()
        if not has_label:
            problems.append(_problem(img, None, "label_missing", f"label file missing (expected "
                                     f"{lbl}); image kept without boxes or view", "warning"))
            counts["images_unlabelled"] += 1
        else:
            try:
                nbytes = lbl.stat().st_size
                if nbytes > MAX_LABEL_BYTES:
                    raise OSError(f"{nbytes} bytes, more than {MAX_LABEL_BYTES}")
                text = lbl.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as e:
                problems.append(_problem(lbl, None, "label_unreadable", f"cannot read label file "
                                         f"({type(e).__name__}: {clip_text(e, 200)}); labels "
                                         "skipped", "error"))
                counts["images_unlabelled"] += 1
                has_label = False
            else:
                parsed = parse_label_text(text, lbl, w, h, nc, nv, tol, max_boxes)
                problems += parsed.problems
                counts.update(parsed.counts)
                if len(parsed.boxes) == 0 and nc > 0 and not parsed.no_jet:
                    problems.append(_problem(lbl, None, "no_boxes", "no usable detection box; image "
                                             "excluded from the detection loss (write 'none' in "
                                             "its label file if it has no jet)", "warning"))
                if parsed.view is None and nv > 0:
                    problems.append(_problem(lbl, None, "no_view", "no usable view line; image "
                                             "excluded from the view loss and metrics", "warning"))
        rec = ImageRecord(img, image_id, w, h, parsed.boxes, parsed.classes, parsed.view,
                          has_label, lbl if has_label else None, parsed.no_jet)
        if corrections is not None:
            counts["corrections"] += corrections.apply(rec, key)
        records.append(rec)
        box_cls.update(rec.classes.tolist())
        if rec.view is not None:
            view_cls[rec.view] += 1

    orphans = _orphans(spec, key, images)
    for t in orphans:
        problems.append(_problem(t, None, "label_orphan", "orphan label: no image with this stem "
                                 "beside it; label ignored", "warning"))
    summary: dict[str, Any] = {
        "split": key,
        "images": len(images) + counts["duplicate_stem"],
        "files_ignored": counts["unsupported_file"],
        "images_duplicate": counts["duplicate_stem"],
        "images_used": len(records),
        "images_skipped": counts["images_skipped"] + counts["duplicate_stem"],
        "images_unlabelled": counts["images_unlabelled"],
        "images_det": sum(r.det_labelled for r in records),
        "images_det_masked": sum(not r.det_labelled for r in records),
        "images_no_jet": sum(r.no_jet for r in records),
        "images_view": sum(r.has_view for r in records),
        "images_view_masked": sum(not r.has_view for r in records),
        "boxes": counts["boxes"],
        "boxes_skipped": counts["boxes_skipped"],
        "boxes_clipped": counts["boxes_clipped"],
        "views": counts["views"],
        "views_skipped": counts["views_skipped"],
        "orphan_labels": len(orphans),
        "warnings": sum(p.severity == "warning" for p in problems),
        "errors": sum(p.severity == "error" for p in problems),
        "boxes_per_class": {n: box_cls[i] for i, n in enumerate(spec.names)},
        "views_per_class": {n: view_cls[i] for i, n in enumerate(spec.cls_names)},
    }
    if corrections is not None:
        summary["corrections_applied"] = counts["corrections"]
    if strict and problems:
        raise DataError(f"{spec.yaml_path} [{key}]: strict mode, {len(problems)} label problem(s):\n"
                        + format_problems(problems, limit=50), problems)
    return SplitIndex(key, records, problems, summary, list(spec.names), list(spec.cls_names))
