"""`medmtl val`: score a checkpoint on a split and export predictions for re-scoring.

The model comes from `medmtl.models.checkpoint.model_from_checkpoint`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from medmtl.devices import select_device
from medmtl.engine.evaluate import run_inference, score
from medmtl.engine.utils import amp_dtype
from medmtl.fileio import atomic_write_text
from medmtl.models.checkpoint import model_from_checkpoint


def validate_checkpoint(weights: str | Path, data: str | Path, split: str = "val",
                        out: str | Path = "runs/val", imgsz: int | None = None, batch: int = 16,
                        conf: float | None = None, iou: float | None = None,
                        device: str = "auto", workers: int = 2, plots: bool = True,
                        strict: bool = False,
                        corrections: str | Path | None = None) -> dict[str, Any]:
    """Score `weights` on `split` of `data` (with a corrections file applied on top of the labels
    when given) and write metrics.json and the exports to `out`."""
    from medmtl.data import MTLDataset, collate, load_data_yaml, scan_split
    from medmtl.data.corrections import load_corrections
    from medmtl.losses import DetectionLoss, ViewLoss

    dev = select_device(device)
    model, cfg, ck = model_from_checkpoint(weights, dev)
    spec = load_data_yaml(data)
    if list(spec.names) != list(ck["names"]) or list(spec.cls_names) != list(ck["cls_names"]):
        raise ValueError(f"{data}: class names {spec.names}/{spec.cls_names} differ from the "
                         f"checkpoint's {ck['names']}/{ck['cls_names']} ({weights})")
    if split not in spec.splits:
        raise ValueError(f"{data}: no split {split!r} (has {', '.join(spec.splits)})")
    corr = load_corrections(corrections, spec) if corrections is not None else None
    index = scan_split(spec, split, strict=strict, corrections=corr)
    size = imgsz or cfg.imgsz
    ds = MTLDataset(index.records, size, train=False, augment=cfg.augment, cache=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, collate_fn=collate,
                                         num_workers=workers)
    det_loss = DetectionLoss(cfg.model.num_classes, cfg.model.reg_max, list(model.strides), cfg.loss)
    view_loss = ViewLoss(cfg.model.num_views, cfg.loss)
    inf = run_inference(model, loader, dev, conf if conf is not None else cfg.conf_thres,
                        iou if iou is not None else cfg.iou_thres, cfg.max_det, det_loss, view_loss,
                        amp_dtype(dev, cfg.amp))
    out = Path(out)
    metrics = score(inf, index.records, spec.names, spec.cls_names, model.tasks, split=split,
                    out_dir=out, plots=plots, clip_regex=cfg.clip_regex)
    metrics["weights"] = str(weights)
    metrics["data_summary"] = index.summary
    metrics["data"] = {"corrections": corr.record() if corr else None,
                       "clip_regex": cfg.clip_regex}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics
