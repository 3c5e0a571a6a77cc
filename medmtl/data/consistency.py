"""Clip consistency of the view labels: a view belongs to a clip, so frames of one clip that carry
different view labels point at label errors.

All splits are pooled (a clip labelled one way in train and another in val is the same clip).
For every frame with a view label, the *other* labelled frames of its clip vote
(leave-one-frame-out):

* ``support`` of a view = its share of those other frames;
* the frame's **clip majority** is the view with the most votes when it is unique (a tie, or a
  clip with no other labelled frame, has none);
* the frame is **flagged** when its clip majority differs from its label and holds more than
  ``threshold`` (default 0.5: a strict majority) of the other frames.

The **leave-one-frame-out agreement** is the share of the frames with a clip majority whose label
equals it: how often a frame's label can be told from the rest of its clip, an indicator of the
ceiling that label noise puts on frame-level view accuracy (frames whose clip has no majority
are counted apart, not guessed). Nothing here needs torch.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from medmtl.data.groups import GroupPattern

DEFAULT_CLIP_THRESHOLD = 0.5


def loo_clip_counts(clips: Sequence[str], views: Sequence[int | None],
                    num_views: int) -> np.ndarray:
    """(N, V) int: per frame, the view labels of the *other* labelled frames of its clip."""
    totals: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(num_views, np.int64))
    for c, v in zip(clips, views, strict=True):
        if v is not None:
            totals[c][v] += 1
    out = np.zeros((len(clips), num_views), np.int64)
    for i, (c, v) in enumerate(zip(clips, views, strict=True)):
        if c in totals:
            out[i] = totals[c]
            if v is not None:
                out[i, v] -= 1
    return out


def clip_majority(counts: np.ndarray) -> np.ndarray:
    """(N,) int: the unique most frequent view of each row of `loo_clip_counts`, -1 where the
    row is empty or tied."""
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] == 0:  # no views (empty cls_names): no majority
        return np.full(len(counts), -1, dtype=np.int64)
    top = counts.max(axis=1, initial=0)
    unique = (counts == top[:, None]).sum(axis=1) == 1
    return np.where((top > 0) & unique, counts.argmax(axis=1), -1)


def clip_flags(views: Sequence[int | None], counts: np.ndarray,
               threshold: float = DEFAULT_CLIP_THRESHOLD) -> np.ndarray:
    """(N,) bool: the label differs from the clip majority, which holds more than ``threshold``
    of the other labelled frames of the clip."""
    maj = clip_majority(counts)
    total = counts.sum(axis=1)
    share = np.where(total > 0, counts.max(axis=1, initial=0) / np.maximum(total, 1), 0.0)
    lab = np.array([-1 if v is None else v for v in views], np.int64)
    return (lab >= 0) & (maj >= 0) & (maj != lab) & (share > threshold)


def clip_consistency(items: Iterable[tuple[str, str | Path, int | None]], cls_names: Sequence[str],
                     pattern: GroupPattern | None = None,
                     threshold: float = DEFAULT_CLIP_THRESHOLD) -> dict[str, Any]:
    """The audit's ``consistency`` block from ``(split, image path, view index or None)`` items."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"the clip threshold must be in [0, 1), got {threshold}")
    pattern = pattern or GroupPattern()
    rows = [(s, Path(p).stem, pattern.clip_of(p), pattern.patient_of(p), v) for s, p, v in items]
    names = list(cls_names)
    nv = len(names)
    by_clip: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    for split, stem, clip, _, v in rows:
        if v is not None:
            by_clip[clip].append((split, stem, v))
    patient = {clip: pat for _, _, clip, pat, _ in rows}

    def named(c: Counter[int]) -> dict[str, int]:
        return {names[k]: c[k] for k in range(nv) if c[k]}

    mixed, cross = [], []
    within: Counter[str] = Counter()
    for clip in sorted(by_clip):
        frames = by_clip[clip]
        total = Counter(v for _, _, v in frames)
        per_split: dict[str, Counter[int]] = defaultdict(Counter)
        for s, _, v in frames:
            per_split[s][v] += 1
        for s, c in per_split.items():
            within[s] += len(c) > 1
        splits = {s: named(c) for s, c in sorted(per_split.items())}
        if len(total) > 1:
            mixed.append({"clip": clip, "patient": patient[clip], "frames": len(frames),
                          "counts": named(total), "splits": splits,
                          "stems": {names[k]: sorted((st for _, st, v in frames if v == k),
                                                     key=_natural)
                                    for k in sorted(total)}})
            if len(per_split) > 1:
                tops = {s: _top(c, names) for s, c in per_split.items()}
                cross.append({"clip": clip, "splits": splits,
                              "majority_per_split": dict(sorted(tops.items())),
                              "majorities_differ": len(set(tops.values())) > 1})

    labelled = [r for r in rows if r[4] is not None]
    views = [r[4] for r in labelled]
    counts = loo_clip_counts([r[2] for r in labelled], views, nv)
    maj = clip_majority(counts)
    flags = clip_flags(views, counts, threshold)
    lab = np.asarray(views, np.int64)
    decided = maj >= 0
    agree = int((decided & (maj == lab)).sum())
    alone = int((counts.sum(axis=1) == 0).sum())
    shared = sum(len({s for s, _, _ in f}) > 1 for f in by_clip.values())
    return {
        "clip_regex": pattern.clip, "patient_regex": pattern.patient, "threshold": threshold,
        "frames_with_view": len(labelled), "frames_without_view": len(rows) - len(labelled),
        "clips": len(by_clip), "mixed_clips": len(mixed),
        "frames_in_mixed_clips": sum(m["frames"] for m in mixed),
        "mixed_within_split": {s: within[s] for s in sorted(within)},
        "clips_in_several_splits": shared, "cross_split_conflicts": len(cross),
        "mixed": mixed, "cross_split": cross,
        "loo": {"frames_decided": int(decided.sum()), "agree": agree,
                "agreement": agree / int(decided.sum()) if decided.any() else None,
                "frames_tied": int(len(labelled) - decided.sum() - alone),
                "frames_alone": alone, "flagged": int(flags.sum()),
                "flagged_stems": sorted(labelled[i][1] for i in np.flatnonzero(flags))},
    }


def _natural(text: str) -> list[Any]:
    """Sort key that orders embedded numbers by value (frame 2 before frame 10)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _top(c: Counter[int], names: list[str]) -> str:
    best = max(c.values())
    return "/".join(sorted(names[k] for k, n in c.items() if n == best))


def _frame(stem: str, clip: str) -> str:
    """A frame's short name in its clip: the trailing number of what follows the clip id."""
    rest = stem[len(clip):] if stem.startswith(clip) and len(stem) > len(clip) else stem
    m = re.search(r"(\d+)$", rest)
    return f"#{m.group(1)}" if m and rest is not stem else rest


def render_consistency(block: dict[str, Any], max_rows: int = 60) -> list[Table]:
    """Rich tables of a `clip_consistency` block: the summary, then one row per mixed clip."""
    loo = block["loo"]
    t = Table(title=f"View consistency within clips (clip = {block['clip_regex']!r} on the stem)")
    t.add_column("")
    t.add_column("value", justify="right")
    agreement = "-" if loo["agreement"] is None else f"{loo['agreement']:.3f}"
    within = ", ".join(f"{s}: {n}" for s, n in block["mixed_within_split"].items()) or "-"
    for label, val in [
        ("clips with a view label", block["clips"]),
        ("clips with more than one view label", block["mixed_clips"]),
        ("frames in those clips", f"{block['frames_in_mixed_clips']} of "
                                  f"{block['frames_with_view']}"),
        ("mixed within one split", within),
        ("clips in several splits / with conflicting labels",
         f"{block['clips_in_several_splits']} / {block['cross_split_conflicts']}"),
        ("leave-one-frame-out clip-majority agreement", f"{agreement} ({loo['agree']} of "
                                                        f"{loo['frames_decided']} frames)"),
        ("frames without a clip majority (tie / alone)", f"{loo['frames_tied']} / "
                                                         f"{loo['frames_alone']}"),
        (f"frames flagged (majority > {block['threshold']:g} disagrees)", loo["flagged"]),
    ]:
        style = "bold red" if label.startswith("clips with more") and val else None
        t.add_row(label, str(val), style=style)
    out = [t]
    if block["mixed"]:
        m = Table(title=f"Clips with more than one view label ({block['mixed_clips']}; minority frames "
                        "by frame number, stems in the JSON)")
        m.add_column("clip", overflow="fold")
        m.add_column("views", overflow="fold")
        m.add_column("per split", overflow="fold")
        m.add_column("minority frames", overflow="fold")
        for row in block["mixed"][:max_rows]:
            top = max(row["counts"], key=lambda k: row["counts"][k])
            minority = [f"{v} {_frame(s, row['clip'])}" for v, st in row["stems"].items()
                        if v != top for s in st]
            more = f" (+{len(minority) - 6})" if len(minority) > 6 else ""
            m.add_row(row["clip"], ", ".join(f"{k} {n}" for k, n in row["counts"].items()),
                      "; ".join(f"{s}: " + " ".join(f"{k} {n}" for k, n in c.items())
                                for s, c in row["splits"].items()),
                      ", ".join(minority[:6]) + more)
        if len(block["mixed"]) > max_rows:
            m.caption = f"first {max_rows} of {len(block['mixed'])}; all in the JSON"
        out.append(m)
    return out


__all__ = ["DEFAULT_CLIP_THRESHOLD", "clip_consistency", "clip_flags", "clip_majority",
           "loo_clip_counts", "render_consistency"]
