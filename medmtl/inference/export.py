"""ONNX export of a checkpoint, its checks, and `OnnxPredictor` (ONNX Runtime, same API as
`Predictor`).

The graph (opset 17 by default):

- input ``images``: float32 (B, 3, S, S), RGB in [0, 1], letterboxed (pad value 114 / 255);
  normalisation is inside the graph.
- ``boxes``: float32 (B, N, 4) xyxy in letterboxed input pixels, N = sum over strides 8, 16, 32 of
  (S / stride)^2 anchors; not clipped to the image.
- ``scores``: float32 (B, N, nc) per-class sigmoid scores.
- ``view_logits``: float32 (B, num_views) view logits (softmax them), when the model has the
  classify task.

By default detections are exported *before* NMS: NMS (best class per anchor above ``conf``,
class-aware, ``max_det``) is left to the runtime or to `OnnxPredictor` (`select_detections`).
``nms=True`` (``--nms``) puts it in the graph (`medmtl.inference.onnx_nms`): inputs ``images``,
``conf``, ``iou``; outputs ``detections`` (K, 7) and ``view_logits``. A single-task model exports
only its outputs. Class names, view names, imgsz, tasks and the evaluation thresholds of the run
are stored in the model's metadata (``medmtl`` key, JSON), so `medmtl val` can score the graph.

Compression (`medmtl.inference.compress`), written next to the float graph: ``half``
(``<stem>.half.onnx``: fp16 network, float32 I/O) and ``int8`` (``<stem>.int8.onnx``: ONNX Runtime
static quantisation calibrated on ``calib_n`` training images).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medmtl.errors import InputError
from medmtl.evaluation.postprocess import decode_predictions
from medmtl.inference.base import BasePredictor
from medmtl.inference.onnx_graph import open_graph
from medmtl.inference.onnx_nms import DETECTIONS, NMSHead
from medmtl.models.checkpoint import model_from_checkpoint

DET_OUTPUTS = ("boxes", "scores")
VIEW_OUTPUT = "view_logits"


class ExportWrapper(nn.Module):
    """MultiTaskModel -> (boxes, scores[, view_logits]) tensors: the exported graph."""

    def __init__(self, model: nn.Module, half: bool = False, nms_max_det: int | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.half = half
        self.tasks = tuple(model.tasks)
        self.nms = NMSHead(nms_max_det) if nms_max_det and "detect" in self.tasks else None
        self.input_names = ["images"] + (["conf", "iou"] if self.nms is not None else [])
        self.output_names: list[str] = []
        if "detect" in self.tasks:
            self.output_names += [DETECTIONS] if self.nms is not None else list(DET_OUTPUTS)
        if "classify" in self.tasks:
            self.output_names.append(VIEW_OUTPUT)

    def forward(self, images: Tensor, conf: Tensor | None = None,
                iou: Tensor | None = None) -> tuple[Tensor, ...]:
        m = self.model
        out = m(images.half() if self.half else images)
        res: list[Tensor] = []
        if "detect" in out:
            boxes, scores = decode_predictions(out["detect"], m.strides, m.reg_max, m.num_classes)
            if self.nms is not None:
                assert conf is not None and iou is not None
                res.append(self.nms(images, boxes, scores, conf, iou))
            else:
                res += [boxes, scores]
        if "classify" in out:
            res.append(out["classify"].float())
        return tuple(res)


@dataclass
class ExportReport:
    path: Path
    outputs: list[str]
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # ORT vs PyTorch, per output
    check: str = ""  # what the runtime check did (or why it was skipped)


def thresholds(conf: float, iou: float) -> dict[str, np.ndarray]:
    """The ``conf`` / ``iou`` inputs of a graph exported with NMS."""
    return {"conf": np.array([conf], np.float32), "iou": np.array([iou], np.float32)}


def _torch_export(wrapper: ExportWrapper, x: Tensor, path: Path, opset: int, dynamic: bool) -> None:
    names = wrapper.output_names
    axes: dict[str, dict[int, str]] = {}
    if dynamic:
        axes = {"images": {0: "batch", 2: "height", 3: "width"}}
        for n in names:
            axes[n] = {0: "batch"} if n == VIEW_OUTPUT else {0: "batch", 1: "anchors"}
    if DETECTIONS in names:
        axes[DETECTIONS] = {0: "detections"}
    args: tuple[Tensor, ...] = (x,)
    if wrapper.nms is not None:
        args += tuple(torch.from_numpy(v) for v in thresholds(0.25, 0.6).values())
    kw: dict[str, Any] = dict(input_names=wrapper.input_names, output_names=names,
                              opset_version=opset, dynamic_axes=axes or None,
                              do_constant_folding=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and legacy-exporter deprecation warnings
        try:  # the TorchScript-based exporter: robust for this graph, no onnxscript needed
            torch.onnx.export(wrapper, args, str(path), dynamo=False, **kw)
        except TypeError:  # torch < 2.5: no `dynamo` argument, the legacy exporter is the default
            torch.onnx.export(wrapper, args, str(path), **kw)


def _add_metadata(path: Path, meta: dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "medmtl", json.dumps(meta)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def export_onnx(model: nn.Module, path: str | Path, imgsz: int, names: list[str],
                cls_names: list[str], dynamic: bool = False, half: bool = False,
                opset: int = 17, verify: bool = True, nms: bool = False, max_det: int = 100,
                extra_meta: dict[str, Any] | None = None) -> ExportReport:
    """Export ``model`` (a MultiTaskModel) to ``path``; check the graph with onnx.checker, then
    run ONNX Runtime and PyTorch on the same random input and report the max abs differences.
    ``half``: the fp16 conversion of the graph (`compress.half_graph`) is written at ``path``.
    ``nms``: NMS in the graph, at most ``max_det`` detections per image."""
    if imgsz % 32:
        raise ValueError(f"imgsz must be a multiple of 32, got {imgsz}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").float().eval()
    wrapper = ExportWrapper(model, nms_max_det=max_det if nms else None).eval()
    x = torch.rand(2 if dynamic else 1, 3, imgsz, imgsz)
    _torch_export(wrapper, x[:1], path, opset, dynamic)
    meta = {"names": list(names), "cls_names": list(cls_names), "imgsz": imgsz,
            "tasks": list(wrapper.tasks), "outputs": wrapper.output_names, "dynamic": dynamic,
            "half": False, "arch": getattr(model, "arch", None), "size": getattr(model, "size", None),
            "nms": ({"in_graph": True, "max_det": int(max_det), "inputs": ["conf", "iou"]}
                    if wrapper.nms is not None else "not in graph"), **(extra_meta or {})}
    _add_metadata(path, meta)
    if half:
        from medmtl.inference.compress import half_graph

        half_graph(path, path)
    report = ExportReport(path, wrapper.output_names)
    if verify:
        _verify(wrapper, path, x, report)
    return report


def _verify(wrapper: ExportWrapper, path: Path, x: Tensor, report: ExportReport) -> None:
    """Run ONNX Runtime (CPU) and PyTorch on ``x``; record the max abs difference per output."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds: dict[str, Any] = {"images": x.float().cpu().numpy()}
    targs: tuple[Tensor, ...] = (x,)
    if wrapper.nms is not None:
        th = thresholds(0.25, 0.6)
        feeds.update(th)
        targs += tuple(torch.from_numpy(v) for v in th.values())
    with torch.no_grad():
        ref = [t.float().cpu().numpy() for t in wrapper(*targs)]
    got = sess.run(wrapper.output_names, feeds)
    for name, a, b in zip(wrapper.output_names, got, ref, strict=True):
        if name == DETECTIONS and a.shape != b.shape:  # fp16 / NMS: another box may pass
            report.max_abs_diff[name] = float("inf")
            continue
        if a.shape != b.shape:
            raise RuntimeError(f"{path}: ONNX output {name} has shape {a.shape}, PyTorch {b.shape}")
        report.max_abs_diff[name] = float(np.abs(a - b).max()) if a.size else 0.0
    report.check = f"onnxruntime {ort.__version__} (CPUExecutionProvider), batch {x.shape[0]}"


def export_command(weights: str | Path, format: str = "onnx", out: str | Path | None = None,
                   dynamic: bool = False, half: bool = False, opset: int = 17,
                   imgsz: int | None = None, int8: bool = False, nms: bool = False,
                   max_det: int = 100, calib_data: str | Path | None = None,
                   calib_n: int = 64) -> Path:
    """Export a checkpoint to ONNX: input ``images`` float32 (B, 3, S, S) in [0, 1]; outputs
    ``boxes`` (B, N, 4) xyxy in input pixels and ``scores`` (B, N, nc), both BEFORE NMS, and
    ``view_logits`` (B, num_views); --nms: NMS in the graph (inputs ``conf``, ``iou``, output
    ``detections``). --dynamic: dynamic batch, height and width (multiples of 32). Checks the
    graph and compares ONNX Runtime with PyTorch. Default output: the weights path with the
    suffix .onnx. --half / --int8 also write ``<stem>.half.onnx`` / ``<stem>.int8.onnx`` (INT8
    calibrated on ``calib_n`` images of the training split of ``calib_data``, default the run's
    data YAML). Returns the last graph written (int8, else half, else the float graph)."""
    if format.lower() != "onnx":
        raise ValueError(f"unsupported export format {format!r} (supported: onnx)")
    model, cfg, ck = model_from_checkpoint(weights, "cpu")
    size = int(imgsz or cfg.imgsz)
    names = list(ck.get("names") or [str(i) for i in range(cfg.model.num_classes)])
    cls_names = list(ck.get("cls_names") or [str(i) for i in range(cfg.model.num_views)])
    path = Path(out) if out is not None else Path(weights).with_suffix(".onnx")
    evals = {"conf_thres": cfg.conf_thres, "iou_thres": cfg.iou_thres, "max_det": cfg.max_det,
             "clip_regex": cfg.clip_regex}
    rep = export_onnx(model, path, size, names, cls_names, dynamic, False, opset, nms=nms,
                      max_det=max_det, extra_meta=evals)
    diffs = ", ".join(f"{k} {v:.2e}" for k, v in rep.max_abs_diff.items())
    print(f"exported {path} (opset {opset}, imgsz {size}, outputs {', '.join(rep.outputs)}"
          f"{', dynamic' if dynamic else ''}{', NMS in graph' if nms else ''}); onnx.checker ok; "
          f"{rep.check}" + (f"; max |onnx - torch|: {diffs}" if diffs else ""))
    last = path
    if half or int8:
        from medmtl.inference import compress

        stem = path.with_suffix("")
        if half:
            last = compress.half_graph(path, stem.with_suffix(".half.onnx"))
            print(f"exported {last} (fp16 network, float32 input and outputs)")
        if int8:
            data = calib_data or cfg.data
            if not data:
                raise InputError(f"{weights}: no data YAML in the checkpoint's config; pass "
                                 "--calib-data for the INT8 calibration images")
            imgs = compress.calibration_images(data, calib_n)
            notes: list[str] = []
            last = compress.int8_graph(path, stem.with_suffix(".int8.onnx"), imgs, size,
                                       thresholds(0.25, 0.6) if nms else None, notes)
            print(f"exported {last} (static INT8, calibrated on {len(imgs)} training images "
                  f"of {data})")
            for line in notes:  # at most one: the quantiser's warnings, summed up
                print(line, file=sys.stderr)
    return last


class OnnxPredictor(BasePredictor):
    """`Predictor` API (`predict`, `predict_batch`) on an exported graph with ONNX Runtime."""

    def __init__(self, session: Any, names: list[str], cls_names: list[str], tasks: list[str],
                 imgsz: int, max_batch: int = 16) -> None:
        super().__init__(names, cls_names, tasks, imgsz, max_batch)
        self.session = session
        self.outputs = [o.name for o in session.get_outputs()]
        batch_dim = next(i.shape for i in session.get_inputs() if i.name == "images")[0]
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) else None
        self.nms_in_graph = DETECTIONS in self.outputs
        self.meta: dict[str, Any] = {}
        self.run_times: list[tuple[float, int]] | None = None  # a list: (seconds, images) per run

    @classmethod
    def from_file(cls, path: str | Path, device: str | Any = "auto", imgsz: int | None = None,
                  max_batch: int = 16, threads: int | None = None) -> OnnxPredictor:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # no busy-waiting of the graph's threads after a run: decoding, letterbox and NMS run in
        # this process between runs, and spinning threads starved them until the next scheduler
        # tick (on 2 cores every end-to-end call took a multiple of 4 ms: 8.0 ms, not 5.4 ms)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # errors only: an INT8 graph of a TF-padded backbone makes ONNX Runtime list every unused
        # constant it removes, one warning line each
        opts.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if str(device).startswith(("cuda", "auto")) and \
                "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        # a file that is no medmtl graph (random bytes, another model) is one line naming it
        sess, meta = open_graph(path, opts, providers)
        shape = next(i.shape for i in sess.get_inputs() if i.name == "images")
        size = imgsz or meta.get("imgsz") or (shape[2] if isinstance(shape[2], int) else None)
        if size is None:
            raise InputError(f"{path}: no imgsz in the graph's metadata; pass --imgsz")
        outs = [o.name for o in sess.get_outputs()]
        tasks = meta.get("tasks") or ((["detect"] if "boxes" in outs else [])
                                      + (["classify"] if VIEW_OUTPUT in outs else []))
        pred = cls(sess, meta.get("names", []), meta.get("cls_names", []), tasks, int(size),
                   max_batch)
        pred.weights = str(path)
        pred.meta = meta
        return pred

    def _run(self, images: np.ndarray, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The graph on ``images``, one image at a time when its batch is fixed at 1 (timed into
        ``run_times`` when that is a list)."""
        t0 = time.perf_counter()
        out = self._run_graph(images, feeds)
        if self.run_times is not None:
            self.run_times.append((time.perf_counter() - t0, int(images.shape[0])))
        return out

    def _run_graph(self, images: np.ndarray, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.fixed_batch is not None and self.fixed_batch != images.shape[0]:
            if self.fixed_batch != 1:
                raise ValueError(f"graph has a fixed batch of {self.fixed_batch}; export --dynamic")
            runs = [self.session.run(self.outputs, {"images": images[i:i + 1], **feeds})
                    for i in range(images.shape[0])]
            if self.nms_in_graph:  # detections: row 0 is the image's index in its batch (0)
                j = self.outputs.index(DETECTIONS)
                for i, r in enumerate(runs):
                    r[j] = np.asarray(r[j]).copy()
                    r[j][:, 0] = i
            return [np.concatenate(parts) for parts in zip(*runs, strict=True)]
        return list(self.session.run(self.outputs, {"images": images, **feeds}))

    def detect_views(self, x: np.ndarray, conf: float, iou: float, max_det: int
                     ) -> tuple[list[Tensor] | None, Tensor | None]:
        if not self.nms_in_graph:
            return super().detect_views(x, conf, iou, max_det)
        graph_max = int((self.meta.get("nms") or {}).get("max_det", max_det))
        if max_det > graph_max and not getattr(self, "_warned", False):
            self._warned = True
            warnings.warn(f"this graph keeps at most {graph_max} detections per image (export "
                          f"--max-det); {max_det} asked", stacklevel=2)
        got = dict(zip(self.outputs, self._run(x, thresholds(conf, iou)), strict=True))
        det = torch.from_numpy(np.asarray(got[DETECTIONS], np.float32))
        logits = torch.from_numpy(np.asarray(got[VIEW_OUTPUT])) if VIEW_OUTPUT in got else None
        self._check_finite((("detections", det), ("view logits", logits)))
        dets = [det[det[:, 0] == i, 1:][:max_det] for i in range(x.shape[0])]
        return dets, logits

    def _forward(self, images: np.ndarray) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        if self.nms_in_graph:
            raise ValueError("this graph has NMS inside (outputs 'detections'): use detect_views")
        got = dict(zip(self.outputs, (torch.from_numpy(np.asarray(r)) for r in self._run(images, {})),
                       strict=True))
        return got.get("boxes"), got.get("scores"), got.get(VIEW_OUTPUT)
