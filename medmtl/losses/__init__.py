"""Losses: task-aligned assignment, detection (BCE + CIoU + DFL), view classification, and the
multi-task criterion that maps model output and batch to per-task losses."""

from medmtl.losses.assigner import Assignment, TaskAlignedAssigner, pairwise_iou
from medmtl.losses.classify import ViewLoss
from medmtl.losses.criterion import MultiTaskCriterion
from medmtl.losses.detection import DetectionLoss, dfl_loss

__all__ = [
    "Assignment",
    "DetectionLoss",
    "MultiTaskCriterion",
    "TaskAlignedAssigner",
    "ViewLoss",
    "dfl_loss",
    "pairwise_iou",
]
