"""View accuracy against clip-majority labels, and per clip.

Frame-level view accuracy against the label files is capped by label noise when frames of one
clip carry different views (`medmtl.data.view_labels`). Beside it, `clip_view_metrics` scores
the same predictions two more ways, with the clip majorities computed within the evaluated split:

* ``accuracy_clip_majority_labels`` / ``macro_f1_clip_majority_labels``: every labelled frame
  scored against its clip's majority view (its own label where the clip ties);
* ``clip_accuracy``: one vote per clip, the majority of the frame predictions (argmax) over all
  the clip's frames (a tie in votes goes to the view with the larger summed probability), scored
  against the clip's majority label; ``clips`` counts the clips scored, ``clips_tied`` the
  labelled clips left out because their labels tie.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medmtl.data.groups import DEFAULT_CLIP_REGEX
from medmtl.data.view_labels import clip_majorities, view_label_stats
from medmtl.evaluation.metrics import classification_metrics


def clip_votes(clips: Sequence[str], probs: Sequence[np.ndarray]) -> dict[str, int]:
    """Clip -> the view most of its frames predict (ties: larger summed probability)."""
    votes: dict[str, np.ndarray] = {}
    mass: dict[str, np.ndarray] = {}
    for c, p in zip(clips, probs, strict=True):
        p = np.asarray(p, np.float64)
        votes.setdefault(c, np.zeros(len(p)))[int(np.argmax(p))] += 1
        mass.setdefault(c, np.zeros(len(p)))
        mass[c] += p
    return {c: int(np.lexsort((mass[c], v))[-1]) for c, v in votes.items()}


def clip_view_metrics(records: Sequence[Any], view_probs: dict[int, np.ndarray],
                      cls_names: Sequence[str], clip_regex: str = DEFAULT_CLIP_REGEX,
                      ) -> dict[str, Any]:
    """The keys added to metrics.json's classification block (see the module docstring)."""
    recs = [r for r in records if int(r.image_id) in view_probs]
    clips, major = clip_majorities(recs, clip_regex)
    labelled = [(c, r) for c, r in zip(clips, recs, strict=True) if r.view is not None]
    y_major = np.array([major[c] if major[c] is not None else r.view for c, r in labelled],
                       np.int64)
    y_pred = np.array([int(np.argmax(view_probs[int(r.image_id)])) for _, r in labelled],
                      np.int64)
    vs = classification_metrics(y_major, y_pred, len(cls_names), list(cls_names))
    voted = clip_votes(clips, [view_probs[int(r.image_id)] for r in recs])
    scored = [c for c in sorted(voted) if major[c] is not None]
    correct = sum(voted[c] == major[c] for c in scored)
    noise = view_label_stats(recs, clip_regex)
    return {
        "accuracy_clip_majority_labels": vs["accuracy"],
        "macro_f1_clip_majority_labels": vs["macro_f1"],
        "clip_accuracy": correct / len(scored) if scored else None,
        "clips": len(scored),
        "clips_tied": noise["clips_tied"],
        "clips_mixed": noise["clips_mixed"],
        "frames_disagreeing_clip_majority": noise["frames_disagreeing"],
    }


__all__ = ["clip_view_metrics", "clip_votes"]
