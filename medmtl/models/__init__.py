"""Models: timm backbone, PAN neck, DetectHead (DFL), ClassifyHead, and the architectures:
`MultiTaskNet` (the interface, `base.py`), plug-ins in `archs/` registered in `ARCHS`."""

from .anchors import dfl_decode, dist_to_box, flatten_predictions, make_anchors
from .backbone import Backbone, create_backbone
from .base import ARCHS, MultiTaskNet, parameters_of, unique_parameters
from .branched import BranchedModel, MultiTaskModel
from .heads import ClassifyHead, DetectHead
from .mtl import build_model, count_parameters, model_info
from .neck import PANNeck
from .sizes import SIZES, SizeSpec, config_backbone

__all__ = [
    "ARCHS",
    "SIZES",
    "Backbone",
    "BranchedModel",
    "ClassifyHead",
    "DetectHead",
    "MultiTaskModel",
    "MultiTaskNet",
    "PANNeck",
    "SizeSpec",
    "build_model",
    "config_backbone",
    "count_parameters",
    "create_backbone",
    "dfl_decode",
    "dist_to_box",
    "flatten_predictions",
    "make_anchors",
    "model_info",
    "parameters_of",
    "unique_parameters",
]
