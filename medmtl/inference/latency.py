"""End-to-end latency of a model as deployed: one encoded frame in, detections and view out.

One timed call is `BasePredictor.predict` on an image file, batch 1, the path `medmtl predict`
takes: read and decode the file (PIL), RGB conversion, letterbox (OpenCV), to a float32 array,
forward (PyTorch, or ONNX Runtime on a graph written by `export_onnx`), box decoding, class-aware
NMS (`select_detections`), boxes back to original pixels, view softmax. Only the forward differs
between the runtimes.

`E2ETimer` builds the predictors once and can be run several times (interleaved with other
models' timers); its timings are pooled. Reported per runtime: the median, the 90th percentile
and a noise band, half the interquartile range of the timed calls (never below the clock's
resolution). Keys, in metrics.json's ``efficiency`` block beside the forward-only ``ms_per_image``:
``latency_e2e{,_ort,_cuda}_ms``, ``..._p90_ms``, ``..._noise_ms``, ``..._n``, or
``..._skipped`` with the reason; ``latency_e2e_includes`` says what a call covers.
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from medmtl.inference.base import BasePredictor
from medmtl.inference.torch_predictor import Predictor

FRAME_WH = (430, 320)  # width, height of the regurgitation data set's frames
RUNTIME_KEYS = {"": "PyTorch CPU", "_cuda": "PyTorch CUDA", "_ort": "ONNX Runtime CPU"}
CLOCK_RES_MS = time.get_clock_info("perf_counter").resolution * 1000.0


def sample_frame(path: str | Path, size: tuple[int, int] = FRAME_WH, seed: int = 0) -> Path:
    """Write a synthetic echo frame (``size`` = width, height) as a JPEG (quality 95)."""
    from medmtl.data.synth_render import render
    from medmtl.data.synth_scene import make_clip

    rng = np.random.default_rng(seed)
    rgb, _ = render(make_clip(0, 0, rng), max(size), rng)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR).save(path, "JPEG", quality=95)
    return path


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Median, 90th percentile and noise (half the interquartile range) in ms of timed calls."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    q25, med, q75, p90 = np.percentile(ms, [25, 50, 75, 90])
    return {"ms": float(med), "p90_ms": float(p90),
            "noise_ms": max(float(q75 - q25) / 2.0, CLOCK_RES_MS), "n": int(ms.size)}


def _ort_skip_reason() -> str | None:
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not installed (pip install onnx onnxruntime)" if missing \
        else None


class E2ETimer:
    """Times ``model`` end to end on one encoded frame: PyTorch CPU always, PyTorch CUDA when
    ``cuda`` (default: when available), ONNX Runtime CPU when ``ort`` (export to a temp file;
    skipped, with the reason, when onnx/onnxruntime is missing or the export fails).

    ``image``: an image file to decode at every call (default: a synthetic 430x320 JPEG, the
    real data's frame size). Use as a context manager (the temp folder is removed on exit).
    ``predictors`` (key -> predictor, e.g. ``{"_ort": OnnxPredictor}``): time those instead of
    building them from ``model`` (``medmtl val`` on an exported graph).
    """

    def __init__(self, model: nn.Module | None, imgsz: int, names: Sequence[str] | None = None,
                 cls_names: Sequence[str] | None = None, image: str | Path | None = None,
                 threads: int | None = None, ort: bool = True, cuda: bool | None = None,
                 conf: float = 0.25, iou: float = 0.6, max_det: int = 100,
                 predictors: dict[str, BasePredictor] | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="medmtl-e2e-")
        tmp = Path(self._tmp.name)
        self.image = Path(image) if image is not None else sample_frame(tmp / "frame.jpg")
        with Image.open(self.image) as im:
            self.frame = f"{im.size[0]}x{im.size[1]} {im.format or self.image.suffix} file"
        self.imgsz, self.threads = int(imgsz), threads
        self.kw = {"conf": conf, "iou": iou, "max_det": max_det}
        self.skipped: dict[str, str] = {}
        if predictors is not None:  # given predictors (e.g. an exported graph): time those
            self.predictors = dict(predictors)
            self.tasks = next(iter(self.predictors.values())).tasks
            self.times: dict[str, list[float]] = {k: [] for k in self.predictors}
            return
        assert model is not None, "E2ETimer needs a model or predictors"
        self.tasks = tuple(getattr(model, "tasks", ("detect", "classify")))
        names = list(names or [str(i) for i in range(model.num_classes)])
        cls_names = list(cls_names or [str(i) for i in range(model.num_views)])
        cpu = copy.deepcopy(model).cpu().eval()
        self.predictors = {"": Predictor(cpu, names, cls_names, imgsz)}
        if cuda is None:
            cuda = torch.cuda.is_available()
        if cuda:
            self.predictors["_cuda"] = Predictor(copy.deepcopy(model), names, cls_names, imgsz,
                                                 "cuda")
        if ort:
            reason = _ort_skip_reason()
            if reason is None:
                try:
                    self.predictors["_ort"] = self._ort(cpu, tmp / "model.onnx", names, cls_names)
                except Exception as e:  # a graph that does not export must not stop the timing
                    reason = f"ONNX export or session failed: {type(e).__name__}: {e}"[:300]
            if reason is not None:
                self.skipped["_ort"] = reason
        self.times = {k: [] for k in self.predictors}

    def _ort(self, model: nn.Module, path: Path, names: list[str],
             cls_names: list[str]) -> BasePredictor:
        from medmtl.inference.export import OnnxPredictor, export_onnx

        export_onnx(copy.deepcopy(model), path, self.imgsz, names, cls_names, verify=False)
        return OnnxPredictor.from_file(path, "cpu", threads=self.threads or
                                       torch.get_num_threads())

    @property
    def includes(self) -> str:
        steps = [f"read + decode a {self.frame}", f"letterbox to {self.imgsz}", "to float tensor",
                 "forward"]
        if "detect" in self.tasks:
            steps += ["box decoding", f"NMS (conf {self.kw['conf']}, iou {self.kw['iou']}, "
                      f"max_det {self.kw['max_det']})", "boxes to original pixels"]
        if "classify" in self.tasks:
            steps.append("view softmax")
        return ", ".join(steps) + "; batch 1"

    @torch.no_grad()
    def run(self, iters: int = 10, warmup: int = 2) -> None:
        """``warmup`` untimed then ``iters`` timed calls per runtime, appended to the pool."""
        old = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            for key, pred in self.predictors.items():
                for _ in range(warmup):
                    pred.predict(self.image, **self.kw)
                for _ in range(iters):
                    t = time.perf_counter()
                    pred.predict(self.image, **self.kw)
                    self.times[key].append(time.perf_counter() - t)
        finally:
            torch.set_num_threads(old)

    def results(self) -> dict[str, Any]:
        """The flat ``efficiency`` keys of the timings so far (rounded to the microsecond)."""
        out: dict[str, Any] = {}
        for key, times in self.times.items():
            if not times:
                continue
            s = summarize(times)
            out.update({f"latency_e2e{key}_ms": round(s["ms"], 3),
                        f"latency_e2e{key}_p90_ms": round(s["p90_ms"], 3),
                        f"latency_e2e{key}_noise_ms": round(s["noise_ms"], 3),
                        f"latency_e2e{key}_n": s["n"]})
        out.update({f"latency_e2e{k}_skipped": v for k, v in self.skipped.items()})
        out["latency_e2e_includes"] = self.includes
        out["latency_e2e_threads"] = self.threads or torch.get_num_threads()
        out["latency_e2e_timer"] = ("time.perf_counter around each call; median, 90th percentile; "
                                    "noise = half the interquartile range of the calls")
        return out

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> E2ETimer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def measure_e2e(model: nn.Module, imgsz: int, names: Sequence[str] | None = None,
                cls_names: Sequence[str] | None = None, warmup: int = 3, iters: int = 20,
                **kw: Any) -> dict[str, Any]:
    """`E2ETimer` run once: the ``efficiency`` keys (``latency_e2e_ms``, ...). ``kw``: image,
    threads, ort, cuda, conf, iou, max_det."""
    with E2ETimer(model, imgsz, names, cls_names, **kw) as timer:
        timer.run(iters, warmup)
        return timer.results()
