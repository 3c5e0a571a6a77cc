"""Models: timm backbone, PAN neck, DetectHead (DFL), ClassifyHead, MultiTaskModel archs."""

from .anchors import dfl_decode, dist_to_box, flatten_predictions, make_anchors
from .backbone import Backbone, create_backbone
from .heads import ClassifyHead, DetectHead
from .mtl import ARCHS, SIZES, MultiTaskModel, SizeSpec, build_model, count_parameters, model_info
from .neck import PANNeck

__all__ = [
    "ARCHS",
    "SIZES",
    "Backbone",
    "ClassifyHead",
    "DetectHead",
    "MultiTaskModel",
    "PANNeck",
    "SizeSpec",
    "build_model",
    "count_parameters",
    "create_backbone",
    "dfl_decode",
    "dist_to_box",
    "flatten_predictions",
    "make_anchors",
    "model_info",
]
