"""Inference on single images and frames: `load_model` -> `Predictor.predict` -> `FrameResult`.

The path of a frame: any image (path, PIL, numpy; grey, RGB, RGBA, 16-bit) -> (H, W, 3) uint8 RGB
-> letterbox to the checkpoint's ``imgsz`` -> model -> decoded boxes and scores
(`medmtl.evaluation.postprocess.decode_predictions`) -> `select_detections` (class-aware NMS, the
same rules as `medmtl.evaluation.postprocess.postprocess`) -> boxes mapped back to original pixels
with `unletterbox_boxes`. `OnnxPredictor` (medmtl/inference/export.py) shares everything but the
forward pass, so the PyTorch and ONNX Runtime paths give the same results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from medmtl.data.transforms import letterbox, load_image, to_rgb_uint8, unletterbox_boxes
from medmtl.devices import select_device
from medmtl.evaluation.postprocess import decode_predictions, select_detections
from medmtl.fileio import atomic_write_text
from medmtl.models.checkpoint import checkpoint_dict as checkpoint_dict
from medmtl.models.checkpoint import model_from_checkpoint

ImageInput = str | Path | Image.Image | np.ndarray


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
        }


def to_rgb_array(image: ImageInput) -> np.ndarray:
    """Path, PIL image or numpy array -> (H, W, 3) uint8 RGB, scaled like the data layer.

    numpy: uint8 is taken as is (HxW grey, HxWx1, HxWx3 RGB, HxWx4 RGBA -> alpha dropped); any
    other integer dtype is 16-bit data (``v / 257``, clipped to [0, 65535]); floats in [0, 1] are
    multiplied by 255, other floats are clipped to [0, 255].
    """
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return to_rgb_uint8(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a path, PIL image or numpy array, got {type(image).__name__}")
    a = image
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        a = a[:, :, :3] if a.shape[2] == 4 else a
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


def _source_name(image: ImageInput) -> str:
    if isinstance(image, (str, Path)):
        return str(image)
    if isinstance(image, Image.Image):
        return str(getattr(image, "filename", "") or "<image>")
    return "<array>"


class BasePredictor:
    """Pre/post-processing shared by `Predictor` (PyTorch) and `OnnxPredictor` (ONNX Runtime).

    Subclasses implement `_forward(images float32 (B, 3, S, S) in [0, 1]) -> (boxes, scores,
    view_logits)` (None for a missing task): decoded boxes (B, N, 4) xyxy in letterboxed pixels,
    sigmoid scores (B, N, nc), view logits (B, num_views).
    """

    def __init__(self, names: Sequence[str], cls_names: Sequence[str], tasks: Sequence[str],
                 imgsz: int, max_batch: int = 16) -> None:
        if imgsz % 32:
            raise ValueError(f"imgsz must be a multiple of 32 (the largest stride), got {imgsz}")
        self.names, self.cls_names = list(names), list(cls_names)
        self.tasks, self.imgsz, self.max_batch = tuple(tasks), int(imgsz), max(1, int(max_batch))

    def _forward(self, images: np.ndarray) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        raise NotImplementedError

    def predict(self, image: ImageInput, conf: float = 0.25, iou: float = 0.6, max_det: int = 100,
                view_min_prob: float = 0.0, source: str | None = None, frame: int = 0) -> FrameResult:
        """Detections (original pixels) and the view of one image (path, PIL, numpy)."""
        return self.predict_batch([image], conf, iou, max_det, view_min_prob,
                                  None if source is None else [source], [frame])[0]

    def predict_batch(self, images: Sequence[ImageInput], conf: float = 0.25, iou: float = 0.6,
                      max_det: int = 100, view_min_prob: float = 0.0,
                      sources: Sequence[str] | None = None,
                      frames: Sequence[int] | None = None) -> list[FrameResult]:
        """`predict` on several images, run ``max_batch`` at a time; one result per image."""
        results: list[FrameResult] = []
        for i in range(0, len(images), self.max_batch):
            chunk = list(images[i:i + self.max_batch])
            src = [_source_name(im) for im in chunk] if sources is None else \
                list(sources[i:i + self.max_batch])
            frm = [0] * len(chunk) if frames is None else list(frames[i:i + self.max_batch])
            results += self._predict_chunk(chunk, conf, iou, max_det, view_min_prob, src, frm)
        return results

    def _predict_chunk(self, images: list[ImageInput], conf: float, iou: float, max_det: int,
                       view_min_prob: float, sources: list[str], frames: list[int]) -> list[FrameResult]:
        arrays = [to_rgb_array(im) for im in images]
        lbs = [letterbox(a, self.imgsz) for a in arrays]
        x = np.stack([lb[0] for lb in lbs]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        boxes, scores, logits = self._forward(np.ascontiguousarray(x))
        dets = (select_detections(boxes, scores, (self.imgsz, self.imgsz), conf, iou, max_det)
                if boxes is not None and scores is not None else [None] * len(arrays))
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
            view, view_name, view_probs = None, None, {}
            if probs is not None:
                p = probs[k]
                view_probs = {self._view_label(j): float(v) for j, v in enumerate(p)}
                j = int(p.argmax())
                if p[j] >= view_min_prob:
                    view, view_name = j, self._view_label(j)
            out.append(FrameResult(detections, view, view_name, view_probs, hw, sources[k],
                                   frames[k]))
        return out

    def _view_label(self, j: int) -> str:
        return self.cls_names[j] if j < len(self.cls_names) else str(j)


class Predictor(BasePredictor):
    """PyTorch predictor around a `MultiTaskModel` (fp32, eval mode, on ``device``)."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str], cls_names: Sequence[str],
                 imgsz: int, device: str | torch.device = "cpu", max_batch: int = 16) -> None:
        super().__init__(names, cls_names, tuple(model.tasks), imgsz, max_batch)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @torch.no_grad()
    def _forward(self, images: np.ndarray) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        m = self.model
        out = m(torch.from_numpy(images).to(self.device))
        boxes = scores = None
        if "detect" in out:
            boxes, scores = decode_predictions(out["detect"], m.strides, m.reg_max, m.num_classes)
            boxes, scores = boxes.cpu(), scores.cpu()
        logits = out["classify"].float().cpu() if "classify" in out else None
        return boxes, scores, logits


def load_model(weights: str | Path, device: str | torch.device = "cpu", imgsz: int | None = None,
               use_ema: bool = True, max_batch: int = 16) -> BasePredictor:
    """Load a checkpoint (``.pt``, safe load) or an exported ``.onnx`` graph as a predictor.

    ``device``: "cpu", "cuda", "cuda:1", "auto". ``imgsz``: letterbox size (a multiple of 32;
    default: the size the checkpoint was trained at, or the ONNX graph's). EMA weights are used
    when the checkpoint has them (``use_ema``).
    """
    if Path(weights).suffix.lower() == ".onnx":
        from medmtl.inference.export import OnnxPredictor

        return OnnxPredictor.from_file(weights, device=device, imgsz=imgsz, max_batch=max_batch)
    dev = select_device(str(device)) if not isinstance(device, torch.device) else device
    model, cfg, ck = model_from_checkpoint(weights, dev, use_ema=use_ema)
    names = list(ck.get("names") or [str(i) for i in range(cfg.model.num_classes)])
    cls_names = list(ck.get("cls_names") or [str(i) for i in range(cfg.model.num_views)])
    return Predictor(model, names, cls_names, int(imgsz or cfg.imgsz), dev, max_batch)


# --- medmtl predict ---------------------------------------------------------------------------------
class _Tally:
    """Running counts over frames (a clip or the whole run) for summary.json."""

    def __init__(self, cls_names: Sequence[str]) -> None:
        self.cls_names = list(cls_names)
        self.frames = self.with_view = self.uncertain = 0
        self.votes: dict[str, int] = {}
        self.prob_sum = np.zeros(len(self.cls_names))
        self.jets: dict[str, dict[str, Any]] = {}

    def add(self, r: FrameResult) -> None:
        self.frames += 1
        if r.view_probs:
            self.with_view += 1
            self.prob_sum += np.array([r.view_probs.get(n, 0.0) for n in self.cls_names])
            if r.view_name is None:
                self.uncertain += 1
            else:
                self.votes[r.view_name] = self.votes.get(r.view_name, 0) + 1
        best: dict[str, float] = {}
        for d in r.detections:
            best[d.name] = max(best.get(d.name, 0.0), d.score)
            j = self.jets.setdefault(d.name, {"frames": 0, "detections": 0, "max_score": 0.0})
            j["detections"] += 1
        for name, s in best.items():
            self.jets[name]["frames"] += 1
            self.jets[name]["max_score"] = round(max(self.jets[name]["max_score"], s), 5)

    def to_dict(self) -> dict[str, Any]:
        view = None
        if self.with_view:
            mean = {n: round(float(p) / self.with_view, 5) for n, p in zip(self.cls_names, self.prob_sum, strict=True)}
            top = max(self.votes, key=lambda n: (self.votes[n], mean.get(n, 0.0))) if self.votes else None
            view = {"name": top, "votes": self.votes.get(top, 0) if top else 0,
                    "mean_prob": mean.get(top) if top else None, "vote_counts": dict(self.votes),
                    "mean_probs": mean, "uncertain_frames": self.uncertain}
        return {"frames": self.frames, "view": view, "jets": dict(sorted(self.jets.items()))}


def predict_command(weights: str | Path, source: str | Path, out: str | Path = "runs/predict",
                    conf: float = 0.25, iou: float = 0.6, max_det: int = 100,
                    imgsz: int | None = None, device: str = "auto", save_media: bool = True,
                    view_min_prob: float = 0.0) -> dict[str, Any]:
    """Detect jets and classify the view on images, a folder, a glob, videos or DICOM files.

    WEIGHTS: a checkpoint (.pt) or an exported graph (.onnx). Writes to OUT: one annotated image
    per image (boxes with class and score, the view and its probability in a corner) or an
    annotated mp4 per video/DICOM clip (--no-save-media: none); predictions.jsonl, one line per
    frame (source, frame, image size, boxes in original pixels with class and score, view
    probabilities, view); summary.json (frames, view by majority vote with vote counts and mean
    probability, jets per class: frames and max score, per clip and overall; thresholds; skipped
    files). Unreadable files are reported and skipped. A view whose probability is below
    VIEW_MIN_PROB is reported as uncertain (view null)."""
    import json
    from itertools import islice

    from medmtl.inference.draw import MediaWriter, annotate
    from medmtl.inference.sources import (
        Problem,
        describe_error,
        open_media,
        resolve_sources,
        warn_problem,
    )

    predictor = load_model(weights, device=device, imgsz=imgsz)
    files = resolve_sources(source)
    if not files:
        raise FileNotFoundError(f"no image, video or DICOM file in {source}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    total = _Tally(predictor.cls_names)
    clips: list[dict[str, Any]] = []
    problems: list[Problem] = []
    used: set[str] = set()
    n_images = 0
    with open(out / "predictions.jsonl", "w") as jf:
        for path in files:
            stem, k = path.stem, 1
            while stem in used:
                stem, k = f"{path.stem}_{k}", k + 1
            used.add(stem)
            tally, writer, done = _Tally(predictor.cls_names), None, 0
            try:
                media = open_media(path)
                ext = path.suffix.lower() if path.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png"
                target = out / (stem + (".mp4" if media.is_clip else ext))
                writer = MediaWriter(target, media.is_clip, media.fps) if save_media else None
                frames = enumerate(media.frames())
                while chunk := list(islice(frames, predictor.max_batch)):
                    idx, arrays = [c[0] for c in chunk], [c[1] for c in chunk]
                    results = predictor.predict_batch(arrays, conf, iou, max_det, view_min_prob,
                                                      [str(path)] * len(arrays), idx)
                    for a, r in zip(arrays, results, strict=True):
                        jf.write(json.dumps(r.to_dict(ndigits=2)) + "\n")
                        tally.add(r)
                        total.add(r)
                        if writer is not None:
                            writer.write(annotate(a, r))
                    done += len(arrays)
            except ImportError:
                raise
            except Exception as e:  # noqa: BLE001 -- report the file, go on with the rest
                reason = describe_error(e) + (f" (after {done} frames)" if done else "")
                problems.append(Problem(str(path), reason))
                warn_problem(problems[-1])
                if not done:
                    continue
            finally:
                if writer is not None:
                    writer.close()
            if media.is_clip:
                clips.append({"source": str(path), "fps": media.fps,
                              "output": str(writer.path) if writer else None, **tally.to_dict()})
            else:
                n_images += 1
    summary = {"weights": str(weights), "source": str(source), "out": str(out),
               "thresholds": {"conf": conf, "iou": iou, "max_det": max_det,
                              "view_min_prob": view_min_prob, "imgsz": predictor.imgsz},
               "files": len(files), "images": n_images, "clips": len(clips), **total.to_dict(),
               "per_clip": clips, "skipped": len(problems),
               "problems": [{"file": p.file, "reason": p.reason} for p in problems]}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary
