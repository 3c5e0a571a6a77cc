"""Out-of-sample predictions for every image of the pool (train + val), read from the evaluation
files of run folders (`read_runs`: the K fold runs of `medmtl.labelissues.folds`, or a user's own
runs) or from a probabilities CSV (`read_probs_csv`). No torch here."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.csvio import csv_header, csv_rows
from medmtl.data.dataset_yaml import (
    IMG_EXTS,
    DataError,
    DatasetSpec,
    list_split_images,
    load_data_yaml,
)
from medmtl.data.labels import ImageRecord, scan_split


@dataclass
class Pool:
    """The images whose labels are ranked: every record of ``splits``, keyed by file stem."""

    spec: DatasetSpec
    records: list[ImageRecord]
    splits: list[str]  # per record
    stems: list[str]
    corrections: Any = None  # the applied `Corrections`, or None

    @property
    def index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.stems)}


def load_pool(yaml_path: str | Path, splits: Sequence[str] | None = None,
              corrections: str | Path | None = None) -> Pool:
    """Scan ``splits`` (default: every split but ``test``); a stem in two places is an error.
    ``corrections`` (a corrections CSV) are applied to the labels as they are read, so the
    ranking sees the corrected labels (`Pool.corrections`)."""
    from medmtl.data.corrections import load_corrections

    spec = load_data_yaml(yaml_path)
    corr = load_corrections(corrections, spec) if corrections is not None else None
    names = [s for s in spec.splits if s != "test"] if splits is None else list(splits)
    records, where, stems = [], [], []
    seen: dict[str, Path] = {}
    for s in names:
        if s not in spec.splits:
            raise DataError(f"{spec.yaml_path}: no split {s!r} (has {sorted(spec.splits)})")
        for r in scan_split(spec, s, corrections=corr).records:
            stem = r.path.stem
            if stem in seen:
                raise DataError(f"{spec.yaml_path}: two images share the stem {stem!r} "
                                f"({seen[stem]}, {r.path}); stems identify images here")
            seen[stem] = r.path
            records.append(r)
            where.append(s)
            stems.append(stem)
    if not records:
        raise DataError(f"{spec.yaml_path}: no images in splits {names}")
    return Pool(spec, records, where, stems, corr)


@dataclass
class OOF:
    """Out-of-sample predictions by stem: view probabilities (V,) and, when the source has a
    detector, detections (K, 6) ``[x1, y1, x2, y2, score, cls]`` in original pixels."""

    view_probs: dict[str, np.ndarray] = field(default_factory=dict)
    detections: dict[str, np.ndarray] | None = None
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _run_images(run: Path) -> dict[int, Path]:
    """image_id -> image path of a run's val split (the ids of its eval/ files)."""
    from medmtl.config import TrainConfig

    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run}: not a run folder (no config.yaml)")
    data = Path(TrainConfig.from_yaml(cfg_path).data)
    if not data.is_file():
        raise FileNotFoundError(f"{cfg_path}: its data {data} does not exist (run it from the "
                                "folder it was trained in, or give --probs)")
    return dict(enumerate(list_split_images(load_data_yaml(data), "val")))


def read_runs(runs: Sequence[Path], pool: Pool) -> OOF:
    """View probabilities (and detections, when the runs have them) of the images each run's
    val split held, from `eval/view_predictions.json` and `eval/predictions.json`. An image
    scored by several runs gets the mean of their probabilities and the first run's boxes."""
    names = list(pool.spec.cls_names)
    index = pool.index
    sums: dict[str, np.ndarray] = {}
    seen: dict[str, int] = {}
    dets: dict[str, np.ndarray] | None = {}
    oof = OOF()
    outside = 0
    for run in runs:
        run = Path(run)
        vp = run / "eval" / "view_predictions.json"
        if not vp.is_file():
            raise FileNotFoundError(f"{run}: no eval/view_predictions.json (a run of the view "
                                    "task, finished)")
        doc = json.loads(vp.read_text())
        if list(doc["labels"]) != names:
            raise ValueError(f"{vp}: view labels {doc['labels']} differ from the data's "
                             f"cls_names {names}")
        images = _run_images(run)
        for row in doc["images"]:
            stem = images[int(row["image_id"])].stem
            if stem not in index:
                outside += 1
                continue
            p = np.asarray(row["probs"], np.float64)
            sums[stem] = sums.get(stem, 0.0) + p
            seen[stem] = seen.get(stem, 0) + 1
        pj = run / "eval" / "predictions.json"
        if dets is not None and pj.is_file():
            per: dict[str, list[list[float]]] = {}
            for d in json.loads(pj.read_text()):
                x, y, w, h = d["bbox"]
                per.setdefault(images[int(d["image_id"])].stem, []).append(
                    [x, y, x + w, y + h, d["score"], d["category_id"] - 1])
            for path in images.values():
                if path.stem in index and path.stem not in dets:
                    dets[path.stem] = np.asarray(per.get(path.stem, []),
                                                 np.float64).reshape(-1, 6)
        elif dets is not None:
            dets = None
            oof.notes.append(f"{run} has no eval/predictions.json (no detector): box issues "
                             "are not ranked")
        oof.sources.append(str(run))
    oof.view_probs = {s: sums[s] / seen[s] for s in sums}
    oof.detections = dets
    several = sum(n > 1 for n in seen.values())
    if several:
        oof.notes.append(f"{several} images were scored by more than one run: their "
                         "probabilities are averaged")
    if outside:
        oof.notes.append(f"{outside} predictions are of images outside the pool, ignored")
    return oof


def read_probs_csv(path: Path, pool: Pool) -> OOF:
    """A CSV with a ``stem`` column (the image file stem, or its file name) and one column per
    view (the data's cls_names, any order) holding out-of-sample probabilities; rows must sum to
    1 (within 1e-3)."""
    names = list(pool.spec.cls_names)
    index = pool.index
    oof = OOF(sources=[str(path)])
    unknown = 0
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = csv_header(reader, path, ValueError) or []  # csv.Error: file:line
        missing = [c for c in ["stem", *names] if c not in cols]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected stem,"
                             + ",".join(names))
        for line, row in enumerate(csv_rows(reader, path, ValueError), start=2):
            try:
                p = np.array([float(row[c]) for c in names], np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: non-numeric probability") from None
            if not np.all(np.isfinite(p)) or p.min() < 0 or abs(p.sum() - 1.0) > 1e-3:
                raise ValueError(f"{path}:{line}: probabilities must be >= 0 and sum to 1, got "
                                 f"{p.tolist()}")
            stem = (row["stem"] or "").strip()
            if Path(stem).suffix.lower() in IMG_EXTS:  # a file name given for the stem
                stem = Path(stem).stem
            if stem not in index:
                unknown += 1
                continue
            oof.view_probs[stem] = p / p.sum()
    if unknown:
        oof.notes.append(f"{unknown} rows of {path} name images outside the pool, ignored")
    oof.notes.append("box issues are not ranked: a probabilities CSV has no detections")
    return oof


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``3 epochs``: the counts the summaries and the review page show."""
    return f"{n} {word}{'' if n == 1 else 's'}"


__all__ = ["OOF", "Pool", "load_pool", "plural", "read_probs_csv", "read_runs"]
