"""What goes into a predictor and what comes out: `ImageInput` (path, PIL image, numpy array),
`to_rgb_array` (any of them -> (H, W, 3) uint8 RGB), and the results `Detection` / `FrameResult`.

The bottom of `medmtl.inference`: it imports nothing from the rest of the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from medmtl.data.transforms import load_image, to_rgb_uint8

ImageInput = str | Path | Image.Image | np.ndarray
Channels = Literal["rgb", "bgr"]


@dataclass
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original image pixels
    score: float
    cls: int
    name: str


@dataclass
class FrameResult:
    detections: list[Detection]
    view: int | None  # None: model without the classify task, or below `view_min_prob`
    view_name: str | None
    view_probs: dict[str, float]  # softmax over cls_names ({} without the classify task)
    image_size: tuple[int, int]  # (h, w) of the original image
    source: str = ""
    frame: int = 0
    # why no view is reported though the model has the view task: "blank image", or
    # "p=0.51 < threshold 0.62" (the abstention threshold, medmtl.evaluation.abstention)
    view_uncertain: str | None = None

    @property
    def view_text(self) -> str:
        """``view PLAX 0.93``, ``view uncertain (p=0.51 < threshold 0.62)``, ``view uncertain:
        blank image``; "" without the view task."""
        if self.view_name is not None and self.view_prob is not None:
            return f"view {self.view_name} {self.view_prob:.2f}"
        if not self.view_probs:
            return ""
        why = self.view_uncertain
        if not why:
            return "view uncertain"
        return f"view uncertain: {why}" if why.startswith("blank") else f"view uncertain ({why})"

    @property
    def view_prob(self) -> float | None:
        """Probability of the predicted view (None when no view is reported)."""
        return None if self.view_name is None else self.view_probs.get(self.view_name)

    def to_dict(self, ndigits: int | None = None) -> dict[str, Any]:
        """JSON-ready dict; ``ndigits`` rounds boxes (ndigits) and probabilities (ndigits + 3)."""
        def r(x: float, extra: int = 0) -> float:
            return float(x) if ndigits is None else round(float(x), ndigits + extra)

        return {
            "source": self.source,
            "frame": self.frame,
            "image_size": list(self.image_size),
            "detections": [{"box": [r(v) for v in d.box], "score": r(d.score, 3), "cls": d.cls,
                            "name": d.name} for d in self.detections],
            "view": self.view,
            "view_name": self.view_name,
            "view_prob": None if self.view_prob is None else r(self.view_prob, 3),
            "view_probs": {k: r(v, 3) for k, v in self.view_probs.items()},
            "view_uncertain": self.view_uncertain,
        }


def to_rgb_array(image: ImageInput, channels: Channels = "rgb") -> np.ndarray:
    """Path, PIL image or numpy array -> (H, W, 3) uint8 RGB, scaled like the data layer.

    numpy arrays are RGB(A) unless ``channels="bgr"`` (BGR(A), as OpenCV gives them): on colour
    Doppler, swapped red and blue reverse the flow direction, so say which you pass. uint8 is taken as is (HxW grey, HxWx1, HxWx3 RGB, HxWx4 RGBA -> alpha dropped); any
    other integer dtype is 16-bit data (``v / 257``, clipped to [0, 65535]); floats in [0, 1] are
    multiplied by 255, other floats are clipped to [0, 255].
    """
    if channels not in ("rgb", "bgr"):
        raise ValueError(f'channels must be "rgb" or "bgr", got {channels!r}')
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return to_rgb_uint8(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a path, PIL image or numpy array, got {type(image).__name__}")
    a = image
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        a = a[:, :, :3] if a.shape[2] == 4 else a
        if channels == "bgr" and a.shape[2] == 3:
            a = a[:, :, ::-1]
    elif a.ndim != 2:
        raise ValueError(f"expected an HxW or HxWxC (C in 1, 3, 4) array, got shape {a.shape}")
    if a.dtype == np.uint8:
        pass
    elif np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        a = np.rint(np.clip(a.astype(np.float32), 0, 65535) / 257.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        f = np.nan_to_num(a.astype(np.float32))
        f = f * 255.0 if f.size and f.max() <= 1.0 else f
        a = np.rint(np.clip(f, 0, 255)).astype(np.uint8)
    else:
        raise TypeError(f"unsupported array dtype {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def source_name(image: ImageInput) -> str:
    """The ``source`` recorded in a `FrameResult` when the caller gives none."""
    if isinstance(image, (str, Path)):
        return str(image)
    if isinstance(image, Image.Image):
        return str(getattr(image, "filename", "") or "<image>")
    return "<array>"
