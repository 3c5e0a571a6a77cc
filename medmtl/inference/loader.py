"""`load_model`: a checkpoint (``.pt``) -> `Predictor`, an exported graph (``.onnx``) ->
`OnnxPredictor`. It sits above both predictor modules, so that neither imports the other."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from medmtl.errors import MedmtlError
from medmtl.inference.base import BasePredictor
from medmtl.inference.export import OnnxPredictor
from medmtl.inference.torch_predictor import Predictor

SHIPPED = "medmtl-echo.pt"  # the echo model trained on this CPU, weights/README.md
WEIGHTS_ENV = "MEDMTL_WEIGHTS"


def default_weights() -> Path:
    """The model used when no weights are given: $MEDMTL_WEIGHTS, else the shipped echo model
    (``weights/medmtl-echo.pt`` of a source checkout or editable install)."""
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env)
    shipped = Path(__file__).resolve().parents[2] / "weights" / SHIPPED
    if not shipped.is_file():
        raise MedmtlError(f"no --weights given and the shipped echo model is not here ({shipped}: "
                          "it comes with a source checkout of medmtl); give --weights FILE or set "
                          f"{WEIGHTS_ENV}")
    return shipped


def load_model(weights: str | Path | None = None, device: str | torch.device = "auto", imgsz: int | None = None,
               use_ema: bool = True, max_batch: int = 16,
               allow_backbone_path: bool = False) -> BasePredictor:
    """Load a checkpoint (``.pt``, safe load) or an exported ``.onnx`` graph as a predictor.
    Without ``weights``: the shipped echo model (`default_weights`; a line on stderr says so).

    ``device``: "auto" (the default, as on the command line: CUDA, else Apple MPS, else the CPU),
    "cpu", "cuda", "cuda:1". ``imgsz``: letterbox size (a multiple of 32;
    default: the size the checkpoint was trained at, or the ONNX graph's). EMA weights are used
    when the checkpoint has them (``use_ema``). A checkpoint whose config names a backbone that
    is not a timm model name (a folder, a hub id) is refused unless ``allow_backbone_path``.

    ``predict`` takes a path, a PIL image or a numpy array; numpy arrays are read as RGB unless
    ``channels="bgr"`` (pass that for ``cv2.imread`` frames). ``predict_video`` yields one result
    per frame of a video or DICOM cine loop.
    """
    if weights is None:
        weights = default_weights()
        print(f"no --weights: using the shipped echo model {weights} (research use, not "
              "diagnosis; weights/README.md)", file=sys.stderr)
    if Path(weights).suffix.lower() == ".onnx":
        return OnnxPredictor.from_file(weights, device=device, imgsz=imgsz, max_batch=max_batch)
    return Predictor.from_checkpoint(weights, device=device, imgsz=imgsz, use_ema=use_ema,
                                     max_batch=max_batch, allow_backbone_path=allow_backbone_path)
