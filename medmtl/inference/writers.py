"""`MediaWriter`: the annotated output of one input file, an image (PIL) or an mp4 clip (OpenCV,
imported on first use, not with the module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


class MediaWriter:
    """Annotated output of one file: an image (still) or an mp4 (clip), opened on first frame."""

    def __init__(self, path: Path, clip: bool, fps: float | None) -> None:
        self.path, self.clip, self.fps = path, clip, fps or 30.0
        self.writer: Any = None
        self.size: tuple[int, int] | None = None

    def write(self, rgb: np.ndarray) -> None:
        import cv2

        if not self.clip:
            Image.fromarray(rgb).save(self.path)
            return
        if self.writer is None:
            self.size = (rgb.shape[1], rgb.shape[0])
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"),
                                          self.fps, self.size)
            if not self.writer.isOpened():
                raise RuntimeError(f"cannot open a video writer for {self.path} (mp4v)")
        if (rgb.shape[1], rgb.shape[0]) != self.size:
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
