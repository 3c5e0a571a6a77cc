"""Inference and deployment: `load_model` -> `Predictor`, frame sources (image, folder, glob,
video, DICOM), `medmtl predict` / `medmtl export` (ONNX) and `OnnxPredictor`.

    from medmtl import load_model
    model = load_model("runs/exp/weights/best.pt", device="cpu")
    result = model.predict("frame.png", conf=0.25)   # FrameResult: detections, view, view_probs
"""

from __future__ import annotations

from typing import Any

from medmtl.inference.predictor import (
    BasePredictor,
    Detection,
    FrameResult,
    Predictor,
    checkpoint_dict,
    load_model,
    predict_command,
    select_detections,
    to_rgb_array,
)

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


def __getattr__(name: str) -> Any:  # onnx / cv2 / pydicom are imported only when used
    if name in ("OnnxPredictor", "export_command", "export_onnx"):
        from medmtl.inference import export

        return getattr(export, name)
    raise AttributeError(f"module 'medmtl.inference' has no attribute {name!r}")
