"""`BasePredictor`: the pre- and post-processing every predictor shares.

The path of a frame: any image (path, PIL, numpy; grey, RGB, RGBA, 16-bit; numpy arrays RGB by
default, ``channels="bgr"`` for OpenCV's order) -> (H, W, 3) uint8 RGB (`to_rgb_array`) ->
letterbox to the predictor's ``imgsz`` -> ``_forward`` (the subclass: PyTorch in
`medmtl.inference.torch_predictor`, ONNX Runtime in `medmtl.inference.export`) -> decoded boxes and
scores -> `select_detections` (class-aware NMS, the same rules as
`medmtl.evaluation.postprocess.postprocess`) -> boxes mapped back to original pixels with
`unletterbox_boxes`. Only the forward pass differs, so the PyTorch and ONNX Runtime paths give the
same results.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from medmtl.data.transforms import letterbox, unletterbox_boxes
from medmtl.errors import InputError, NonFiniteError
from medmtl.evaluation.abstention import is_blank
from medmtl.evaluation.postprocess import select_detections
from medmtl.inference.results import (
    Channels,
    Detection,
    FrameResult,
    ImageInput,
    source_name,
    to_rgb_array,
)
from medmtl.inference.sources import open_media


class BasePredictor:
    """Pre/post-processing shared by `Predictor` (PyTorch) and `OnnxPredictor` (ONNX Runtime).

    Subclasses implement `_forward(images float32 (B, 3, S, S) in [0, 1]) -> (boxes, scores,
    view_logits)` (None for a missing task): decoded boxes (B, N, 4) xyxy in letterboxed pixels,
    sigmoid scores (B, N, nc), view logits (B, num_views).
    """

    def __init__(self, names: Sequence[str], cls_names: Sequence[str], tasks: Sequence[str],
                 imgsz: int, max_batch: int = 16) -> None:
        if imgsz % 32:
            raise InputError(f"--imgsz must be a multiple of 32 (the largest stride), got {imgsz}")
        self.names, self.cls_names = list(names), list(cls_names)
        self.tasks, self.imgsz, self.max_batch = tuple(tasks), int(imgsz), max(1, int(max_batch))
        # the checkpoint's view-abstention record (measured on val; None: not recorded)
        self.abstention: dict | None = None

    @property
    def view_threshold(self) -> float:
        """The default ``view_min_prob``: the checkpoint's abstention threshold, else 0."""
        return float((self.abstention or {}).get("threshold") or 0.0)

    def _forward(self, images: np.ndarray) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        raise NotImplementedError

    def __repr__(self) -> str:
        where = getattr(self, "weights", None)
        dev = getattr(self, "device", None)
        parts = [f"weights={where!r}" if where else None, f"tasks={'+'.join(self.tasks)}",
                 f"imgsz={self.imgsz}", f"device={dev}" if dev is not None else None,
                 f"classes={self.names}" if "detect" in self.tasks else None,
                 f"views={self.cls_names}" if "classify" in self.tasks else None]
        return f"{type(self).__name__}({', '.join(p for p in parts if p)})"

    def predict(self, image: ImageInput, conf: float = 0.25, iou: float = 0.6, max_det: int = 100,
                view_min_prob: float | None = None, source: str | None = None, frame: int = 0,
                channels: Channels = "rgb") -> FrameResult:
        """Detections (original pixels) and the view of one image (path, PIL, numpy).

        ``view_min_prob``: below this largest view probability the view is reported uncertain
        (``view`` None, ``view_uncertain`` says why); None: the checkpoint's abstention
        threshold, measured on val when the run finished (`view_threshold`; 0 when the
        checkpoint has none). A blank (near-constant) image never gets a view.

        ``channels``: the channel order of numpy arrays: "rgb" (the default; what PIL, imageio and
        matplotlib give) or "bgr" (what ``cv2.imread`` and ``cv2.VideoCapture`` give: pass
        ``channels="bgr"``, or swapped red and blue reverse the Doppler flow direction). Paths and
        PIL images are decoded by medmtl and always read the right way round.
        """
        return self.predict_batch([image], conf, iou, max_det, view_min_prob,
                                  None if source is None else [source], [frame], channels)[0]

    def predict_batch(self, images: Sequence[ImageInput], conf: float = 0.25, iou: float = 0.6,
                      max_det: int = 100, view_min_prob: float | None = None,
                      sources: Sequence[str] | None = None,
                      frames: Sequence[int] | None = None,
                      channels: Channels = "rgb") -> list[FrameResult]:
        """`predict` on several images, run ``max_batch`` at a time; one result per image.

        ``channels``: the channel order of numpy arrays: "rgb" (the default; what PIL, imageio and
        matplotlib give) or "bgr" (what ``cv2.imread`` and ``cv2.VideoCapture`` give: pass
        ``channels="bgr"``, or swapped red and blue reverse the Doppler flow direction). Paths and
        PIL images are decoded by medmtl and always read the right way round.
        """
        if channels not in ("rgb", "bgr"):
            raise InputError(f'channels must be "rgb" or "bgr", got {channels!r}')
        results: list[FrameResult] = []
        for i in range(0, len(images), self.max_batch):
            chunk = list(images[i:i + self.max_batch])
            src = [source_name(im) for im in chunk] if sources is None else \
                list(sources[i:i + self.max_batch])
            frm = [0] * len(chunk) if frames is None else list(frames[i:i + self.max_batch])
            arrays = [to_rgb_array(im, channels) for im in chunk]
            results += self._predict_chunk(arrays, conf, iou, max_det, view_min_prob, src, frm)
        return results

    def predict_video(self, path: str | Path, conf: float = 0.25, iou: float = 0.6,
                      max_det: int = 100, view_min_prob: float | None = None,
                      ) -> Iterator[FrameResult]:
        """One `FrameResult` per frame of a video or multi-frame DICOM file (or the one frame of
        an image), in order, as they are computed (``max_batch`` frames at a time). Frames are
        decoded by medmtl (OpenCV for video, pydicom for DICOM) and read as RGB."""
        src = str(path)
        frames: list[np.ndarray] = []
        first = 0
        for i, img in enumerate(open_media(path).frames()):
            frames.append(img)
            if len(frames) == self.max_batch:
                yield from self._predict_chunk(frames, conf, iou, max_det, view_min_prob,
                                               [src] * len(frames), list(range(first, i + 1)))
                frames, first = [], i + 1
        if frames:
            yield from self._predict_chunk(frames, conf, iou, max_det, view_min_prob,
                                           [src] * len(frames),
                                           list(range(first, first + len(frames))))

    def _predict_chunk(self, arrays: list[np.ndarray], conf: float, iou: float, max_det: int,
                       view_min_prob: float | None, sources: list[str], frames: list[int],
                       ) -> list[FrameResult]:
        """``view_min_prob`` None: the checkpoint's abstention threshold (`view_threshold`); a
        blank frame (`is_blank`) never gets a view."""
        if view_min_prob is None:
            view_min_prob = self.view_threshold
        lbs = [letterbox(a, self.imgsz) for a in arrays]
        x = np.stack([lb[0] for lb in lbs]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        dets, logits = self.detect_views(np.ascontiguousarray(x), conf, iou, max_det)
        if dets is None:
            dets = [None] * len(arrays)
        probs = None if logits is None else logits.float().softmax(-1).cpu().numpy()
        out = []
        for k, (a, (_, scale, px, py)) in enumerate(zip(arrays, lbs, strict=True)):
            hw = (int(a.shape[0]), int(a.shape[1]))
            detections: list[Detection] = []
            d = dets[k]
            if d is not None and len(d):
                d = d.cpu().numpy().astype(np.float64)
                b = unletterbox_boxes(d[:, :4], scale, px, py, hw)
                for row, box in zip(d, b, strict=True):
                    c = int(row[5])
                    xyxy = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
                    detections.append(Detection(xyxy, float(row[4]), c,
                                                self.names[c] if c < len(self.names) else str(c)))
            view, view_name, view_probs, why = None, None, {}, None
            if probs is not None:
                p = probs[k]
                view_probs = {self._view_label(j): float(v) for j, v in enumerate(p)}
                j = int(p.argmax())
                if is_blank(a):
                    why = "blank image"
                elif p[j] >= view_min_prob:
                    view, view_name = j, self._view_label(j)
                else:
                    d = 2 if f"{p[j]:.2f}" != f"{view_min_prob:.2f}" else 4
                    why = f"p={p[j]:.{d}f} < threshold {view_min_prob:.{d}f}"
            out.append(FrameResult(detections, view, view_name, view_probs, hw, sources[k],
                                   frames[k], why))
        return out

    def detect_views(self, x: np.ndarray, conf: float, iou: float, max_det: int
                     ) -> tuple[list[Tensor] | None, Tensor | None]:
        """Letterboxed float32 (B, 3, S, S) in [0, 1] -> per image (K, 6) ``[x1, y1, x2, y2,
        score, cls]`` in letterboxed pixels after NMS (None without the detect task), and the
        view logits (B, V) (or None). `medmtl val` on an ``.onnx`` graph calls this too."""
        boxes, scores, logits = self._forward(x)
        self._check_finite((("boxes", boxes), ("scores", scores), ("view logits", logits)))
        dets = (select_detections(boxes, scores, (x.shape[2], x.shape[3]), conf, iou, max_det)
                if boxes is not None and scores is not None else None)
        return dets, logits

    def _check_finite(self, named: Sequence[tuple[str, Tensor | None]]) -> None:
        for name, t in named:
            if t is not None and not bool(torch.isfinite(torch.as_tensor(t)).all()):
                raise NonFiniteError(f"{getattr(self, 'weights', 'the model')}: non-finite "
                                     f"(NaN/inf) {name} in the model's output; the weights are "
                                     "broken, this is not 'no detections'")

    def _view_label(self, j: int) -> str:
        return self.cls_names[j] if j < len(self.cls_names) else str(j)
