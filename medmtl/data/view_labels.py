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
  label (they still count for detection).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from typing import Any

from medmtl.data.groups import DEFAULT_CLIP_REGEX, clip_of

POLICIES = ("as-is", "clip-majority", "drop-inconsistent")


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
    if policy == "as-is":
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
    return head


__all__ = ["POLICIES", "apply_view_policy", "clip_majorities", "describe_policy",
           "majority_labels", "view_label_stats"]
