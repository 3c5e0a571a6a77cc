"""`MediaWriter`: the annotated output of one input file, an image (PIL) or an mp4 clip (OpenCV,
imported on first use, not with the module). Clips are H.264 (``avc1``) where the OpenCV build
can write it, which browsers and PowerPoint play; else MPEG-4 part 2 (``mp4v``), and `codec`
says which was used."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CODECS = ("avc1", "mp4v")  # first that opens; avc1 = H.264
_OPENS: dict[str, bool] = {}  # fourcc -> whether this OpenCV build could open a writer with it


class MediaWriter:
    """Annotated output of one file: an image (still) or an mp4 (clip), opened on first frame."""

    def __init__(self, path: Path, clip: bool, fps: float | None,
                 codecs: tuple[str, ...] = CODECS) -> None:
        self.path, self.clip, self.fps = path, clip, fps or 30.0
        self.codecs = codecs
        self.codec: str | None = None  # the fourcc the clip was written with
        self.writer: Any = None
        self.size: tuple[int, int] | None = None

    def write(self, rgb: np.ndarray) -> None:
        import cv2

        if not self.clip:
            Image.fromarray(rgb).save(self.path)
            return
        if self.writer is None:
            self.size = (rgb.shape[1], rgb.shape[0])
            for fourcc in self.codecs:
                if _OPENS.get(fourcc) is False:
                    continue
                self.writer = _quiet_writer(cv2, str(self.path), fourcc, self.fps, self.size)
                _OPENS[fourcc] = bool(self.writer.isOpened())
                if _OPENS[fourcc]:
                    self.codec = fourcc
                    break
                self.writer.release()
            else:
                self.writer = None
                raise RuntimeError(f"cannot open a video writer for {self.path} (tried "
                                   f"{', '.join(self.codecs)})")
        if (rgb.shape[1], rgb.shape[0]) != self.size:
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def _quiet_writer(cv2: Any, path: str, fourcc: str, fps: float, size: tuple[int, int]) -> Any:
    """A VideoWriter, without OpenCV's and FFmpeg's log lines when this build lacks the codec
    (the next one is tried, and the summary says which was used): stderr's file descriptor is
    pointed at /dev/null for the call."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    old = log.getLogLevel() if log is not None else None
    if log is not None:
        log.setLogLevel(log.LOG_LEVEL_SILENT)
    saved = None
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
    except (OSError, ValueError):  # no real fd 2 (an embedding host): leave it
        saved = None
    try:
        return cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, size)
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        if log is not None:
            log.setLogLevel(old)
