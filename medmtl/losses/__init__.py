"""Losses: task-aligned assignment, detection (BCE + CIoU + DFL) and view classification."""

from medmtl.losses.assigner import Assignment, TaskAlignedAssigner, pairwise_iou
from medmtl.losses.classify import ViewLoss
from medmtl.losses.detection import DetectionLoss, dfl_loss

__all__ = [
    "Assignment",
    "DetectionLoss",
    "TaskAlignedAssigner",
    "ViewLoss",
    "dfl_loss",
    "pairwise_iou",
]
