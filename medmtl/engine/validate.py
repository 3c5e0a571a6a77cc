"""`medmtl val`: score a checkpoint or an exported ONNX graph on a split and export predictions
for re-scoring.

A checkpoint's model comes from `medmtl.models.checkpoint.model_from_checkpoint`. An ``.onnx``
graph (float, ``.half``, ``.int8``, with or without NMS inside) runs through `OnnxPredictor` on the
same letterboxed batches and is scored by the same `engine.evaluate.score`, so the accuracy a
compressed graph loses is measured on the same split with the same COCO scorer; its end-to-end
latency is timed by the same `E2ETimer` as the trainer's (``efficiency.latency_e2e_ort_*``). The
graph's metadata gives the class names, imgsz and the run's evaluation thresholds; there is no
validation loss (the graph has no raw head outputs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmtl.devices import select_device
from medmtl.engine.evaluate import forward_latency, original_detections, run_inference, score
from medmtl.engine.utils import amp_dtype
from medmtl.errors import InputError
from medmtl.fileio import atomic_write_text
from medmtl.models.checkpoint import model_from_checkpoint


def validate_checkpoint(weights: str | Path, data: str | Path, split: str = "val",
                        out: str | Path = "runs/val", imgsz: int | None = None, batch: int = 16,
                        conf: float | None = None, iou: float | None = None,
                        device: str = "auto", workers: int = 2, plots: bool = True,
                        strict: bool = False, corrections: str | Path | None = None,
                        latency_iters: int = 20) -> dict[str, Any]:
    """Score `weights` (a checkpoint or an ``.onnx`` graph) on `split` of `data` (with a
    corrections file applied on top of the labels when given) and write metrics.json and the
    exports to `out`. ``latency_iters``: timed end-to-end calls of an ``.onnx`` graph (0: none)."""
    from medmtl.data import MTLDataset, collate, load_data_yaml, scan_split
    from medmtl.data.corrections import load_corrections
    from medmtl.data.dataset import ignore_stop_signals
    from medmtl.losses import DetectionLoss, ViewLoss

    if Path(weights).suffix.lower() == ".onnx":
        return validate_onnx(weights, data, split, out, imgsz, batch, conf, iou, workers, plots,
                             strict, corrections, latency_iters)
    dev = select_device(device)
    model, cfg, ck = model_from_checkpoint(weights, dev)
    spec = load_data_yaml(data)
    if list(spec.names) != list(ck["names"]) or list(spec.cls_names) != list(ck["cls_names"]):
        raise InputError(f"{data}: class names {spec.names}/{spec.cls_names} differ from the "
                         f"checkpoint's {ck['names']}/{ck['cls_names']} ({weights})")
    if split not in spec.splits:
        raise InputError(f"{data}: no split {split!r} (has {', '.join(spec.splits)})")
    corr = load_corrections(corrections, spec) if corrections is not None else None
    index = scan_split(spec, split, strict=strict, corrections=corr)
    size = imgsz or cfg.imgsz
    ds = MTLDataset(index.records, size, train=False, augment=cfg.augment, cache=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, collate_fn=collate,
                                         num_workers=workers, worker_init_fn=ignore_stop_signals)
    det_loss = DetectionLoss(cfg.model.num_classes, cfg.model.reg_max, list(model.strides), cfg.loss)
    # the plain cross-entropy: a checkpoint read alone does not know its training view counts
    view_loss = ViewLoss(cfg.model.num_views, cfg.loss.model_copy(update={"view_balance": "none"}))
    times: list[tuple[float, int]] = []
    inf = run_inference(model, loader, dev, conf if conf is not None else cfg.conf_thres,
                        iou if iou is not None else cfg.iou_thres, cfg.max_det, det_loss, view_loss,
                        amp_dtype(dev, cfg.amp), forward_times=times)
    out = Path(out)
    metrics = score(inf, index.records, spec.names, spec.cls_names, model.tasks, split=split,
                    out_dir=out, plots=plots, clip_regex=cfg.clip_regex)
    metrics["val_latency"] = forward_latency(times, str(dev), batch,
                                             torch.get_num_threads() if dev.type == "cpu" else None)
    metrics["weights"] = str(weights)
    metrics["data_summary"] = index.summary
    metrics["data"] = {"corrections": corr.record() if corr else None,
                       "clip_regex": cfg.clip_regex}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def _split_index(data: str | Path, split: str, strict: bool, corrections: str | Path | None,
                 names: list[str], cls_names: list[str], weights: str | Path) -> tuple[Any, Any, Any]:
    from medmtl.data import load_data_yaml, scan_split
    from medmtl.data.corrections import load_corrections

    spec = load_data_yaml(data)
    if list(spec.names) != list(names) or list(spec.cls_names) != list(cls_names):
        raise InputError(f"{data}: class names {spec.names}/{spec.cls_names} differ from the "
                         f"model's {names}/{cls_names} ({weights})")
    if split not in spec.splits:
        raise InputError(f"{data}: no split {split!r} (has {', '.join(spec.splits)})")
    corr = load_corrections(corrections, spec) if corrections is not None else None
    return spec, scan_split(spec, split, strict=strict, corrections=corr), corr


def onnx_inference(pred: Any, loader: Any, conf: float, iou: float, max_det: int) -> dict[str, Any]:
    """`run_inference`'s result for an `OnnxPredictor` (no validation loss)."""
    dets: dict[int, np.ndarray] = {}
    probs: dict[int, np.ndarray] = {}
    for b in loader:
        x = np.ascontiguousarray(b["images"].float().div(255).numpy())
        found, logits = pred.detect_views(x, conf, iou, max_det)
        p = None if logits is None else logits.float().softmax(-1).numpy()
        for k, m in enumerate(b["meta"]):
            if found is not None:
                dets[int(m["image_id"])] = original_detections(found[k], m)
            if p is not None:
                probs[int(m["image_id"])] = p[k]
    return {"detections": dets, "view_probs": probs, "val_loss": {}, "val_loss_parts": {}}


def validate_onnx(weights: str | Path, data: str | Path, split: str = "val",
                  out: str | Path = "runs/val", imgsz: int | None = None, batch: int = 16,
                  conf: float | None = None, iou: float | None = None, workers: int = 2,
                  plots: bool = True, strict: bool = False,
                  corrections: str | Path | None = None, latency_iters: int = 20) -> dict[str, Any]:
    """`validate_checkpoint` for an exported graph (ONNX Runtime, CPU)."""
    from medmtl.config import AugmentConfig, TrainConfig
    from medmtl.data import MTLDataset, collate
    from medmtl.data.dataset import ignore_stop_signals
    from medmtl.inference.export import OnnxPredictor
    from medmtl.inference.latency import E2ETimer

    pred = OnnxPredictor.from_file(weights, "cpu", imgsz=imgsz, max_batch=batch)
    meta, defaults = pred.meta, TrainConfig()
    if not meta:
        raise InputError(f"{weights}: no medmtl metadata in the graph; export it with medmtl export")
    spec, index, corr = _split_index(data, split, strict, corrections, pred.names, pred.cls_names,
                                     weights)
    ds = MTLDataset(index.records, pred.imgsz, train=False, augment=AugmentConfig(), cache=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, collate_fn=collate,
                                         num_workers=workers, worker_init_fn=ignore_stop_signals)
    conf = conf if conf is not None else meta.get("conf_thres", defaults.conf_thres)
    iou = iou if iou is not None else meta.get("iou_thres", defaults.iou_thres)
    max_det = int(meta.get("max_det", defaults.max_det))
    clip_regex = meta.get("clip_regex", defaults.clip_regex)
    pred.run_times = []  # the graph's runs: forward (and NMS when it is inside)
    inf = onnx_inference(pred, loader, conf, iou, max_det)
    times, pred.run_times = pred.run_times, None
    out = Path(out)
    metrics = score(inf, index.records, spec.names, spec.cls_names, pred.tasks, split=split,
                    out_dir=out, plots=plots, clip_regex=clip_regex)
    provider = pred.session.get_providers()[0].removesuffix("ExecutionProvider").lower()
    metrics["val_latency"] = forward_latency(times, f"onnxruntime {provider}",
                                             pred.fixed_batch or batch)
    metrics["weights"] = str(weights)
    metrics["data_summary"] = index.summary
    metrics["data"] = {"corrections": corr.record() if corr else None, "clip_regex": clip_regex}
    metrics["onnx"] = {"compression": meta.get("compression", {"kind": "fp32"}),
                       "nms_in_graph": pred.nms_in_graph, "conf": conf, "iou": iou,
                       "max_det": max_det}
    if latency_iters > 0:
        with E2ETimer(None, pred.imgsz, predictors={"_ort": pred}) as timer:
            timer.run(latency_iters, warmup=min(3, latency_iters))
            metrics.setdefault("efficiency", {}).update(timer.results())
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics
