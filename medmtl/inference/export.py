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

Detections are exported *before* NMS: NMS (best class per anchor above ``conf``, class-aware,
``max_det``) is left to the runtime or to `OnnxPredictor` (`select_detections`), so the graph uses
only portable operators and the thresholds stay run-time choices. A single-task model exports only
its outputs. Class names, view names, imgsz and tasks are stored in the model's metadata
(``medmtl`` key, JSON).

``half``: fp16 weights and compute (input and outputs stay float32), exported on a CUDA device
only -- ONNX Runtime's CPU provider lacks fp16 kernels for many operators and gains nothing from
them; on a machine without CUDA the export fails with a clear message.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medmtl.evaluation.postprocess import decode_predictions
from medmtl.inference.base import BasePredictor
from medmtl.models.checkpoint import model_from_checkpoint

DET_OUTPUTS = ("boxes", "scores")
VIEW_OUTPUT = "view_logits"


class ExportWrapper(nn.Module):
    """MultiTaskModel -> (boxes, scores[, view_logits]) tensors: the exported graph."""

    def __init__(self, model: nn.Module, half: bool = False) -> None:
        super().__init__()
        self.model = model.eval()
        self.half = half
        self.tasks = tuple(model.tasks)
        self.output_names: list[str] = []
        if "detect" in self.tasks:
            self.output_names += list(DET_OUTPUTS)
        if "classify" in self.tasks:
            self.output_names.append(VIEW_OUTPUT)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        out = m(images.half() if self.half else images)
        res: list[Tensor] = []
        if "detect" in out:
            boxes, scores = decode_predictions(out["detect"], m.strides, m.reg_max, m.num_classes)
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


def _torch_export(wrapper: ExportWrapper, x: Tensor, path: Path, opset: int, dynamic: bool) -> None:
    names = wrapper.output_names
    axes: dict[str, dict[int, str]] | None = None
    if dynamic:
        axes = {"images": {0: "batch", 2: "height", 3: "width"}}
        for n in names:
            axes[n] = {0: "batch"} if n == VIEW_OUTPUT else {0: "batch", 1: "anchors"}
    kw: dict[str, Any] = dict(input_names=["images"], output_names=names, opset_version=opset,
                              dynamic_axes=axes, do_constant_folding=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and legacy-exporter deprecation warnings
        try:  # the TorchScript-based exporter: robust for this graph, no onnxscript needed
            torch.onnx.export(wrapper, (x,), str(path), dynamo=False, **kw)
        except TypeError:  # torch < 2.5: no `dynamo` argument, the legacy exporter is the default
            torch.onnx.export(wrapper, (x,), str(path), **kw)


def _add_metadata(path: Path, meta: dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "medmtl", json.dumps(meta)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def export_onnx(model: nn.Module, path: str | Path, imgsz: int, names: list[str],
                cls_names: list[str], dynamic: bool = False, half: bool = False,
                opset: int = 17, verify: bool = True) -> ExportReport:
    """Export ``model`` (a MultiTaskModel) to ``path``; check the graph with onnx.checker, then
    run ONNX Runtime and PyTorch on the same random input and report the max abs differences."""
    if imgsz % 32:
        raise ValueError(f"imgsz must be a multiple of 32, got {imgsz}")
    if half and not torch.cuda.is_available():
        raise RuntimeError("--half exports fp16 weights on a CUDA device, and none is available "
                           "here; export fp32 (fp16 brings nothing on ONNX Runtime's CPU provider)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if half else "cpu")
    model = model.to(device).eval()
    if half:
        model = model.half()
    wrapper = ExportWrapper(model, half=half).eval()
    x = torch.rand(2 if dynamic else 1, 3, imgsz, imgsz, device=device)
    _torch_export(wrapper, x[:1], path, opset, dynamic)
    meta = {"names": list(names), "cls_names": list(cls_names), "imgsz": imgsz,
            "tasks": list(wrapper.tasks), "outputs": wrapper.output_names, "dynamic": dynamic,
            "half": half, "arch": getattr(model, "arch", None), "size": getattr(model, "size", None),
            "nms": "not in graph"}
    _add_metadata(path, meta)
    report = ExportReport(path, wrapper.output_names)
    if verify:
        _verify(wrapper, path, x, half, report)
    return report


def _verify(wrapper: ExportWrapper, path: Path, x: Tensor, half: bool, report: ExportReport) -> None:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if half:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            report.check = "skipped: fp16 graph and no CUDAExecutionProvider (onnxruntime-gpu)"
            return
        providers = ["CUDAExecutionProvider"]
    sess = ort.InferenceSession(str(path), providers=providers)
    with torch.no_grad():
        ref = [t.float().cpu().numpy() for t in wrapper(x)]
    got = sess.run(wrapper.output_names, {"images": x.float().cpu().numpy()})
    for name, a, b in zip(wrapper.output_names, got, ref, strict=True):
        if a.shape != b.shape:
            raise RuntimeError(f"ONNX output {name} has shape {a.shape}, PyTorch {b.shape}")
        report.max_abs_diff[name] = float(np.abs(a - b).max()) if a.size else 0.0
    report.check = f"onnxruntime {ort.__version__} ({providers[0]}), batch {x.shape[0]}"


def export_command(weights: str | Path, format: str = "onnx", out: str | Path | None = None,
                   dynamic: bool = False, half: bool = False, opset: int = 17,
                   imgsz: int | None = None) -> Path:
    """Export a checkpoint to ONNX: input ``images`` float32 (B, 3, S, S) in [0, 1]; outputs
    ``boxes`` (B, N, 4) xyxy in input pixels and ``scores`` (B, N, nc), both BEFORE NMS, and
    ``view_logits`` (B, num_views). --dynamic: dynamic batch, height and width (multiples of 32);
    --half: fp16 weights, needs CUDA. Checks the graph and compares ONNX Runtime with PyTorch.
    Default output: the weights path with the suffix .onnx."""
    if format.lower() != "onnx":
        raise ValueError(f"unsupported export format {format!r} (supported: onnx)")
    model, cfg, ck = model_from_checkpoint(weights, "cpu")
    size = int(imgsz or cfg.imgsz)
    names = list(ck.get("names") or [str(i) for i in range(cfg.model.num_classes)])
    cls_names = list(ck.get("cls_names") or [str(i) for i in range(cfg.model.num_views)])
    path = Path(out) if out is not None else Path(weights).with_suffix(".onnx")
    rep = export_onnx(model, path, size, names, cls_names, dynamic, half, opset)
    diffs = ", ".join(f"{k} {v:.2e}" for k, v in rep.max_abs_diff.items())
    print(f"exported {path} (opset {opset}, imgsz {size}, outputs {', '.join(rep.outputs)}"
          f"{', dynamic' if dynamic else ''}{', fp16' if half else ''}); onnx.checker ok; "
          f"{rep.check}" + (f"; max |onnx - torch|: {diffs}" if diffs else ""))
    return path


class OnnxPredictor(BasePredictor):
    """`Predictor` API (`predict`, `predict_batch`) on an exported graph with ONNX Runtime."""

    def __init__(self, session: Any, names: list[str], cls_names: list[str], tasks: list[str],
                 imgsz: int, max_batch: int = 16) -> None:
        super().__init__(names, cls_names, tasks, imgsz, max_batch)
        self.session = session
        self.outputs = [o.name for o in session.get_outputs()]
        batch_dim = session.get_inputs()[0].shape[0]
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) else None

    @classmethod
    def from_file(cls, path: str | Path, device: str | Any = "auto", imgsz: int | None = None,
                  max_batch: int = 16, threads: int | None = None) -> OnnxPredictor:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if str(device).startswith(("cuda", "auto")) and \
                "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        sess = ort.InferenceSession(str(path), opts, providers=providers)
        meta = json.loads(sess.get_modelmeta().custom_metadata_map.get("medmtl", "{}"))
        shape = sess.get_inputs()[0].shape
        size = imgsz or meta.get("imgsz") or (shape[2] if isinstance(shape[2], int) else None)
        if size is None:
            raise ValueError(f"{path}: no imgsz in the graph's metadata; pass imgsz")
        outs = [o.name for o in sess.get_outputs()]
        tasks = meta.get("tasks") or ((["detect"] if "boxes" in outs else [])
                                      + (["classify"] if VIEW_OUTPUT in outs else []))
        pred = cls(sess, meta.get("names", []), meta.get("cls_names", []), tasks, int(size),
                   max_batch)
        pred.weights = str(path)
        return pred

    def _forward(self, images: np.ndarray) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        if self.fixed_batch is not None and self.fixed_batch != images.shape[0]:
            if self.fixed_batch != 1:
                raise ValueError(f"graph has a fixed batch of {self.fixed_batch}; export --dynamic")
            runs = [self.session.run(self.outputs, {"images": images[i:i + 1]})
                    for i in range(images.shape[0])]
            res = [np.concatenate(parts) for parts in zip(*runs, strict=True)]
        else:
            res = self.session.run(self.outputs, {"images": images})
        got = dict(zip(self.outputs, (torch.from_numpy(np.asarray(r)) for r in res), strict=True))
        return got.get("boxes"), got.get("scores"), got.get(VIEW_OUTPUT)
