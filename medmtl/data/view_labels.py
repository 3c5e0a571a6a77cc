"""View labels per clip: the clip-majority view and the training policies for noisy view labels.

A view is a property of a clip (`medmtl.data.groups.clip_of`), so frames of one clip that carry
different view labels are label noise. Within a set of records (one split), a clip's *majority*
is the view most of its labelled frames carry; when two or more views tie for most, the clip has
no majority and each frame keeps its own label. Frames without a view label stay unlabelled
under every policy (nothing is invented for them).

Policies (`TrainConfig.view_labels`), applied to the training split only:

* ``as-is``: the labels of the files (after any corrections);
* ``clip-majority``: every labelled frame of a clip with a majority gets that majority;
* ``drop-inconsistent``: frames whose label differs from their clip's majority lose their view
  label (they still count for detection);
* ``forward``: the labels of the files, as ``as-is``; the view loss of these frames is
  forward-corrected by an estimated corruption matrix (`medmtl.losses.classify.ViewLoss`).

Trusted clip labels (``--trusted``, `medmtl.data.trusted`) apply on top of any policy:
`apply_trusted` gives every frame of a trusted clip in the training split the trusted view and
flags it (``ImageRecord.view_trusted``), which the forward correction leaves uncorrected.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from typing import Any

from medmtl.data.groups import DEFAULT_CLIP_REGEX, clip_of

POLICIES = ("as-is", "clip-majority", "drop-inconsistent", "forward")


def clip_majorities(records: Sequence[Any], clip_regex: str = DEFAULT_CLIP_REGEX,
                    ) -> tuple[list[str], dict[str, int | None]]:
    """(clip id of each record, clip -> majority view or None when tied / unlabelled)."""
    clips = [clip_of(r.path, clip_regex) for r in records]
    votes: dict[str, Counter[int]] = {}
    for c, r in zip(clips, records, strict=True):
        votes.setdefault(c, Counter())
        if r.view is not None:
            votes[c][r.view] += 1
    major: dict[str, int | None] = {}
    for c, v in votes.items():
        top = v.most_common(2)
        major[c] = top[0][0] if top and (len(top) == 1 or top[0][1] > top[1][1]) else None
    return clips, major


def majority_labels(records: Sequence[Any], clip_regex: str = DEFAULT_CLIP_REGEX,
                    ) -> list[int | None]:
    """Each record's clip-majority view (its own label where the clip has none; None where the
    frame is unlabelled)."""
    clips, major = clip_majorities(records, clip_regex)
    return [None if r.view is None else (major[c] if major[c] is not None else r.view)
            for c, r in zip(clips, records, strict=True)]


def view_label_stats(records: Sequence[Any], clip_regex: str = DEFAULT_CLIP_REGEX,
                     ) -> dict[str, int]:
    """How noisy the view labels of a set of records are, clip by clip."""
    clips, major = clip_majorities(records, clip_regex)
    labelled: dict[str, set[int]] = {}
    for c, r in zip(clips, records, strict=True):
        if r.view is not None:
            labelled.setdefault(c, set()).add(r.view)
    disagree = sum(r.view is not None and major[c] is not None and r.view != major[c]
                   for c, r in zip(clips, records, strict=True))
    return {"clips": len(major), "clips_labelled": len(labelled),
            "clips_mixed": sum(len(v) > 1 for v in labelled.values()),
            "clips_tied": sum(c in labelled and m is None for c, m in major.items()),
            "frames_disagreeing": int(disagree)}


def apply_view_policy(records: Sequence[Any], policy: str,
                      clip_regex: str = DEFAULT_CLIP_REGEX) -> tuple[list[Any], dict[str, Any]]:
    """(training records under `policy`, counts). Changed records are copies: the split's own
    records (what evaluation and the audit see) are left as they are."""
    if policy not in POLICIES:
        raise ValueError(f"view label policy {policy!r}: expected one of {', '.join(POLICIES)}")
    stats: dict[str, Any] = {"policy": policy, **view_label_stats(records, clip_regex),
                             "frames_relabelled": 0, "frames_masked": 0}
    if policy in ("as-is", "forward"):  # forward: the files' labels, the loss corrects them
        return list(records), stats
    target = majority_labels(records, clip_regex)
    out = []
    for r, t in zip(records, target, strict=True):
        if r.view is None or t == r.view:
            out.append(r)
        else:
            r = copy.copy(r)
            r.view = t if policy == "clip-majority" else None
            stats["frames_relabelled" if policy == "clip-majority" else "frames_masked"] += 1
            out.append(r)
    return out, stats


def describe_policy(stats: dict[str, Any]) -> str:
    """One line for the console and the log."""
    head = (f"view labels {stats['policy']}: {stats['clips_mixed']} of {stats['clips_labelled']} "
            f"labelled clips carry more than one view, {stats['frames_disagreeing']} frames "
            f"disagree with their clip's majority, {stats['clips_tied']} clips tied (frames keep "
            "their own label)")
    if stats["policy"] == "clip-majority":
        return f"{head}; {stats['frames_relabelled']} frames relabelled to the clip majority"
    if stats["policy"] == "drop-inconsistent":
        return f"{head}; {stats['frames_masked']} frames' view labels masked"
    if stats["policy"] == "forward":
        return f"{head}; the files' labels kept, their view loss forward-corrected (--corruption)"
    return head


def apply_trusted(records: Sequence[Any], trusted: Any, clip_regex: str = DEFAULT_CLIP_REGEX,
                  others: Sequence[Any] = ()) -> tuple[list[Any], dict[str, Any]]:
    """(training records with the trusted views, counts). Every frame of a clip that `trusted`
    (a `medmtl.data.trusted.TrustedSet`) names gets the clip's trusted view and
    ``view_trusted=True``, on a copy (a frame without a view label too: the decision is the
    clip's). `others` (the evaluation splits' records) only count where a trusted clip is found;
    ``unmatched`` lists the trusted clips with no frame in `records` or `others`."""
    stats: dict[str, Any] = {**trusted.record(), "frames_trusted": 0, "frames_relabelled": 0,
                             "frames_labelled": 0, "clips_in_train": 0, "clips_unmatched": 0,
                             "unmatched": []}
    out, seen = [], set()
    for r in records:
        clip = clip_of(r.path, clip_regex)
        view = trusted.view_of(clip)
        if view is None:
            out.append(r)
            continue
        seen.add(clip)
        stats["frames_trusted"] += 1
        stats["frames_relabelled"] += r.view is not None and r.view != view
        stats["frames_labelled"] += r.view is None
        r = copy.copy(r)
        r.view, r.view_trusted = view, True
        out.append(r)
    found = seen | {clip_of(r.path, clip_regex) for r in others}
    unmatched = sorted(c for c in trusted.labels if c not in found)
    stats.update(clips_in_train=len(seen), clips_unmatched=len(unmatched), unmatched=unmatched)
    return out, stats


def describe_trusted(stats: dict[str, Any]) -> str:
    """One line for the console and the log."""
    per = ", ".join(f"{k} {v}" for k, v in stats["per_class"].items())
    return (f"trusted view labels {stats['path']} (sha256 {stats['sha256'][:12]}): "
            f"{stats['clips']} clips ({per}); {stats['frames_trusted']} training frames of "
            f"{stats['clips_in_train']} clips take the trusted view ({stats['frames_relabelled']} "
            f"relabelled, {stats['frames_labelled']} had no view label), "
            f"{stats['clips_unmatched']} clips match no frame")


__all__ = ["POLICIES", "apply_trusted", "apply_view_policy", "clip_majorities",
           "describe_policy", "describe_trusted", "majority_labels", "view_label_stats"]
