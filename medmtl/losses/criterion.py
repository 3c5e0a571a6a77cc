"""The multi-task criterion: model output + batch targets -> one loss per task.

It plays the part of DETR's `SetCriterion`: the trainer hands it the forward's output and the
targets, and gets back the per-task losses that the balancer turns into gradients. Loss terms of
a method (distillation from a teacher) come from its plug-in's `extra_losses`
(medmtl/engine/plugin_api.py), each a task of its own for the balancer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from medmtl.config import LossConfig
from medmtl.distributed import LOCAL, Comm
from medmtl.losses.classify import ViewLoss
from medmtl.losses.detection import DetectionLoss


class MultiTaskCriterion:
    """`detect`: the detection loss (assigner + BCE + CIoU + DFL) of the raw head outputs;
    `classify`: the masked view cross-entropy (forward-corrected by `view_corruption` on the
    rows whose label is not trusted, `ViewLoss`). `detect.last_fg` keeps the anchors the last
    detection loss assigned (distillation reads them).
    Normalisers are those of the global batch when `comm` is a process group
    (medmtl/distributed.py)."""

    def __init__(self, tasks: Sequence[str], num_classes: int, num_views: int, reg_max: int,
                 strides: Sequence[int], cfg: LossConfig | None = None,
                 view_counts: list[int] | None = None,
                 view_corruption: Any = None) -> None:
        cfg = cfg if cfg is not None else LossConfig()
        self.tasks = tuple(tasks)
        self.detect = DetectionLoss(num_classes, reg_max, list(strides), cfg)
        self.view = ViewLoss(num_views, cfg, view_counts, view_corruption)
        # the validation loss: the same, without forward correction (--view-labels forward)
        self.view_eval = self.view if view_corruption is None else ViewLoss(num_views, cfg,
                                                                            view_counts)

    def __call__(self, out: Mapping[str, Any], targets: Mapping[str, Any],
                 present: Mapping[str, bool], comm: Comm = LOCAL) -> dict[str, Tensor]:
        """Losses of the tasks this model has and the (global) batch has labels for, in task
        order. `present[task]` is decided by the caller on the host (no device sync here)."""
        losses: dict[str, Tensor] = {}
        self.detect.last_fg = None
        if "detect" in self.tasks and present.get("detect"):
            losses["detect"] = self.detect([p.float() for p in out["detect"]], targets, comm)[0]
        if "classify" in self.tasks and present.get("classify"):
            vl = self.view(out["classify"].float(), targets["view"], targets["view_mask"], comm,
                           present=True, trusted=targets.get("view_trusted"))
            if vl is not None:
                losses["classify"] = vl
        return losses


__all__ = ["MultiTaskCriterion"]
