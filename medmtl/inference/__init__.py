"""Inference and deployment: `load_model` -> `Predictor` (PyTorch) or `OnnxPredictor` (ONNX
Runtime), frame sources (image, folder, glob, video, DICOM), `medmtl predict` and `medmtl export`.

    from medmtl import load_model
    model = load_model("runs/exp/weights/best.pt")   # device="auto": CUDA, else MPS, else CPU
    result = model.predict("frame.png", conf=0.25)   # FrameResult: detections, view, view_probs
    result = model.predict(cv2.imread("frame.png"), channels="bgr")   # numpy arrays: RGB unless told
    for r in model.predict_video("clip.mp4"): ...    # one FrameResult per frame

Modules, each importing only those above it in this list:

- ``results``: `Detection`, `FrameResult`, `to_rgb_array` (image inputs -> RGB uint8)
- ``sources``: frames in (image, folder, glob, video, DICOM), always RGB
- ``base``: `BasePredictor` (letterbox, NMS via `select_detections`, mapping back to pixels)
- ``torch_predictor``: `Predictor`; ``export``: ONNX export and `OnnxPredictor`
- ``loader``: `load_model` (``.pt`` or ``.onnx``)
- ``draw``, ``writers``: annotated images / clips out
- ``app``: `predict_command` (predictions.jsonl, summary.json)

Checkpoints are read by `medmtl.models.checkpoint`; nothing here imports `medmtl.engine`.
onnx, onnxruntime and pydicom are imported only when used.
"""

from __future__ import annotations

from medmtl.evaluation.postprocess import select_detections
from medmtl.inference.app import predict_command
from medmtl.inference.base import BasePredictor
from medmtl.inference.export import OnnxPredictor, export_command, export_onnx
from medmtl.inference.loader import load_model
from medmtl.inference.results import Detection, FrameResult, to_rgb_array
from medmtl.inference.torch_predictor import Predictor
from medmtl.models.checkpoint import checkpoint_dict

__all__ = [
    "BasePredictor",
    "Detection",
    "FrameResult",
    "OnnxPredictor",
    "Predictor",
    "checkpoint_dict",
    "export_command",
    "export_onnx",
    "load_model",
    "predict_command",
    "select_detections",
    "to_rgb_array",
]
