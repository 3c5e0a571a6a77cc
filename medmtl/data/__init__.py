"""Data layer: dataset YAML, label parsing/validation, letterbox, augmentation, Dataset, audit.

See docs/ARCHITECTURE.md ("Data layer") for the contract. ``medmtl.data.synth`` (synthetic data
writer) is a separate module and is not imported here. The torch-based names (`MTLDataset`,
`collate`, `build_dataloader`) load lazily, so the audit and the label checks need no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medmtl.data.audit import audit_dataset, render_audit
from medmtl.data.dataset_yaml import (
    DataError,
    DatasetSpec,
    label_path_for,
    list_split_images,
    load_data_yaml,
)
from medmtl.data.groups import GroupPattern, clip_of, patient_of
from medmtl.data.labels import (
    ImageRecord,
    LabelProblem,
    SplitIndex,
    format_problems,
    parse_label_text,
    scan_split,
)
from medmtl.data.splits import group_of, held_out_split, split_by_group
from medmtl.data.transforms import letterbox, letterbox_boxes, load_image, unletterbox_boxes

__all__ = [
    "DataError",
    "DatasetSpec",
    "GroupPattern",
    "ImageRecord",
    "LabelProblem",
    "MTLDataset",
    "SplitIndex",
    "audit_dataset",
    "build_dataloader",
    "clip_of",
    "collate",
    "format_problems",
    "group_of",
    "label_path_for",
    "letterbox",
    "letterbox_boxes",
    "list_split_images",
    "load_data_yaml",
    "load_image",
    "parse_label_text",
    "patient_of",
    "render_audit",
    "scan_split",
    "split_by_group",
    "held_out_split",
    "unletterbox_boxes",
]

if TYPE_CHECKING:
    from medmtl.data.dataset import MTLDataset, build_dataloader, collate

_LAZY = {"MTLDataset", "build_dataloader", "collate"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from medmtl.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'medmtl.data' has no attribute {name!r}")
