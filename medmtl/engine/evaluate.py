"""Validation: run the model over a split, score it, and (optionally) export everything.

Detections are mapped back to original-image pixels before scoring, so `predictions.json` can be
re-scored against `ground_truth.json` by anyone with pycocotools; `view_predictions.json` holds
the per-image view predictions the view metrics were computed from.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medmtl.data.groups import DEFAULT_CLIP_REGEX
from medmtl.data.transforms import unletterbox_boxes
from medmtl.data.view_labels import clip_majorities, majority_labels
from medmtl.evaluation.clip_views import clip_view_metrics
from medmtl.evaluation.coco import coco_ground_truth, coco_results, evaluate_coco, write_json
from medmtl.evaluation.metrics import (
    build_metrics_json,
    classification_metrics,
    detection_confusion,
    detection_prf,
    negative_frames,
)
from medmtl.evaluation.postprocess import postprocess


def move_targets(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = dict(batch)
    for k in ("boxes", "box_classes", "box_mask", "det_mask", "view", "view_mask"):
        out[k] = batch[k].to(device, non_blocking=True)
    if "view_trusted" in batch:  # --trusted clip labels (medmtl.data.collate always adds it)
        out["view_trusted"] = batch["view_trusted"].to(device, non_blocking=True)
    return out


def prepare_images(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = images.to(device, non_blocking=True).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def original_detections(found: torch.Tensor, meta: dict[str, Any]) -> np.ndarray:
    """(K, 6) ``[x1, y1, x2, y2, score, cls]`` of one image's detections in letterboxed pixels
    mapped back to its original pixels (the batch's ``meta``: ``letterbox``, ``orig_size``):
    the one un-letterbox step of evaluation, PyTorch and ONNX alike."""
    r = found.float().cpu()
    scale, px, py = meta["letterbox"]
    boxes = torch.as_tensor(unletterbox_boxes(r[:, :4], scale, px, py, meta["orig_size"]),
                            dtype=torch.float32)
    return torch.cat([boxes, r[:, 4:6]], 1).numpy()


@torch.no_grad()
def run_inference(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    conf: float,
    iou: float,
    max_det: int,
    det_loss: Any = None,
    view_loss: Any = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    forward_times: list[tuple[float, int]] | None = None,
) -> dict[str, Any]:
    """Returns {"detections": {image_id: (K, 6) np [x1,y1,x2,y2,score,cls] original px},
    "view_probs": {image_id: (C,) np}, "val_loss": {task: mean}}. ``forward_times``: gets
    (seconds, images) of each batch's forward pass, the device synchronised around it."""
    model.eval()
    tasks = getattr(model, "tasks", ())
    dets: dict[int, np.ndarray] = {}
    probs: dict[int, np.ndarray] = {}
    loss_sum = {t: torch.zeros((), device=device) for t in tasks}
    loss_n = dict.fromkeys(tasks, 0)
    for batch in loader:
        images = prepare_images(batch["images"], device, channels_last)
        if forward_times is not None:
            _sync(device)
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(images)
        if forward_times is not None:
            _sync(device)
            forward_times.append((time.perf_counter() - t0, int(images.shape[0])))
        meta = batch["meta"]
        if "detect" in out:
            preds = [p.float() for p in out["detect"]]
            if det_loss is not None and bool(batch["det_mask"].any()):
                t = move_targets(batch, device)
                n = int(batch["det_mask"].sum())
                loss_sum["detect"] += det_loss(preds, t)[0].detach() * n
                loss_n["detect"] += n
            results = postprocess(preds, model.strides, model.reg_max, model.num_classes,
                                  conf=conf, iou=iou, max_det=max_det)
            for m, r in zip(meta, results, strict=True):
                dets[int(m["image_id"])] = original_detections(r, m)
        if "classify" in out:
            logits = out["classify"].float()
            if view_loss is not None and bool(batch["view_mask"].any()):
                vm = batch["view_mask"]
                n = int(vm.sum())
                vl = view_loss(logits, batch["view"].to(device), vm.to(device))
                if vl is not None:
                    loss_sum["classify"] += vl.detach() * n
                    loss_n["classify"] += n
            p = logits.softmax(-1).cpu().numpy()
            for m, pi in zip(meta, p, strict=True):
                probs[int(m["image_id"])] = pi
    sums = {t: float(loss_sum[t]) for t in tasks}
    val_loss = {t: sums[t] / loss_n[t] for t in tasks if loss_n[t] > 0}
    return {"detections": dets, "view_probs": probs, "val_loss": val_loss,
            "val_loss_parts": {t: (sums[t], loss_n[t]) for t in tasks}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def forward_latency(times: list[tuple[float, int]], device: str, batch: int,
                    threads: int | None = None) -> dict[str, Any]:
    """metrics.json's ``val_latency``: mean ms per image of the evaluation's forward passes
    (network only: no data loading, letterbox, decoding or scoring), the first batch (warm-up:
    lazy initialisation, kernel selection) left out when there are more. ``threads``: the
    runtime's intra-op threads where known."""
    kept = times[1:] if len(times) > 1 else times
    n = sum(k for _, k in kept)
    ms = 1000 * sum(t for t, _ in kept) / n if n else None
    return {"forward_ms_per_image": None if ms is None else round(ms, 3), "device": device,
            "batch": int(batch), "threads": threads, "images_timed": n,
            "warmup_batches_left_out": len(times) - len(kept)}


def merge_inference(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One `run_inference` result from those of disjoint shards (data-parallel validation)."""
    dets: dict[int, np.ndarray] = {}
    probs: dict[int, np.ndarray] = {}
    sums: dict[str, list[float]] = {}
    for p in parts:
        dets.update(p["detections"])
        probs.update(p["view_probs"])
        for t, (s, n) in p.get("val_loss_parts", {}).items():
            acc = sums.setdefault(t, [0.0, 0])
            acc[0] += s
            acc[1] += n
    return {"detections": dict(sorted(dets.items())), "view_probs": dict(sorted(probs.items())),
            "val_loss": {t: s / n for t, (s, n) in sums.items() if n > 0},
            "val_loss_parts": {t: (s, n) for t, (s, n) in sums.items()}}


def score(
    inference: dict[str, Any],
    records: Sequence[Any],
    names: Sequence[str],
    cls_names: Sequence[str],
    tasks: Sequence[str],
    split: str = "val",
    out_dir: str | Path | None = None,
    plots: bool = False,
    clip_regex: str = DEFAULT_CLIP_REGEX,
) -> dict[str, Any]:
    """metrics.json content from inference outputs; with out_dir also the COCO exports (+ plots).
    The classification block also scores the views against clip-majority labels and per clip
    (`medmtl.evaluation.clip_views`; clips from `clip_regex` on the file names)."""
    det_block = cls_block = None
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if "detect" in tasks:
        ids = [int(r.image_id) for r in records]
        det_list = [inference["detections"].get(i, np.zeros((0, 6), np.float32)) for i in ids]
        gt = coco_ground_truth(records, list(names))
        results = coco_results(ids, det_list)
        coco = evaluate_coco(gt, results, list(names))
        prf = detection_prf(records, det_list, len(names))
        det_block = {"coco": coco, "prf": prf}
        negatives = negative_frames(records, det_list)
        if negatives is not None:  # frames labelled "none": false positives per jet-free frame
            extra["detection_negatives"] = negatives
        if out is not None:
            write_json(out / "ground_truth.json", gt)
            write_json(out / "predictions.json", results)
            write_json(out / "pr_curves.json", {"recall": _tolist(prf.get("recall_grid")),
                                                "per_class": {n: _tolist(c) for n, c in
                                                              prf.get("pr_curves", {}).items()}})
            if plots:
                _detection_plots(out, prf, records, det_list, names)
    if "classify" in tasks:
        labelled = [r for r in records if r.view is not None]
        y_true = np.array([r.view for r in labelled], dtype=np.int64)
        y_prob = np.stack([inference["view_probs"][int(r.image_id)] for r in labelled]) if labelled \
            else np.zeros((0, len(cls_names)))
        y_pred = y_prob.argmax(1) if len(labelled) else np.zeros(0, np.int64)
        cls_block = classification_metrics(y_true, y_pred, len(cls_names), list(cls_names))
        cls_block.update(clip_view_metrics(records, inference["view_probs"], cls_names,
                                           clip_regex))
        extra["classification_images"] = len(labelled)
        if out is not None:
            write_json(out / "view_predictions.json", view_predictions(
                records, inference["view_probs"], cls_names, clip_regex))
        if out is not None and plots:
            from medmtl.evaluation.plots import plot_confusion

            plot_confusion(np.asarray(cls_block["confusion"]), list(cls_names),
                           out / "view_confusion.png", title="View confusion (rows: true)")
    metrics = build_metrics_json(split, len(records), det_block, cls_block, extra)
    if inference.get("val_loss"):
        metrics["val_loss"] = inference["val_loss"]
    return metrics


def view_predictions(records: Sequence[Any], view_probs: dict[int, np.ndarray],
                     cls_names: Sequence[str], clip_regex: str = DEFAULT_CLIP_REGEX,
                     ) -> dict[str, Any]:
    """eval/view_predictions.json: per image (with a prediction) its ``image_id``, true ``view``
    index (None: unlabelled), predicted index ``pred`` (argmax, as scored), ``probs``, its
    ``file_name``, ``clip`` and ``view_clip_majority`` (the clip-majority label within these
    records; all three only when the records have a ``path``, which names the clip)."""
    recs = [r for r in records if int(r.image_id) in view_probs]
    rows = [{"image_id": int(r.image_id), "view": r.view,
             "pred": int(np.argmax(view_probs[int(r.image_id)])),
             "probs": [round(float(x), 6) for x in view_probs[int(r.image_id)]]} for r in recs]
    if all(hasattr(r, "path") for r in recs):
        clips, _ = clip_majorities(recs, clip_regex)
        for row, r, c, m in zip(rows, recs, clips, majority_labels(recs, clip_regex),
                                strict=True):
            row.update(file_name=Path(r.path).name, clip=c, view_clip_majority=m)
    return {"labels": [str(n) for n in cls_names], "images": rows}


def _tolist(x: Any) -> Any:
    return x.tolist() if hasattr(x, "tolist") else x


def _detection_plots(out: Path, prf: dict[str, Any], records: Sequence[Any],
                     det_list: list[np.ndarray], names: Sequence[str]) -> None:
    from medmtl.evaluation.plots import plot_confusion, plot_f1_confidence, plot_pr_curves

    plot_pr_curves(prf, list(names), out / "pr_curves.png")
    plot_f1_confidence(prf, out / "f1_confidence.png")
    conf_mat = detection_confusion(records, det_list, len(names))
    plot_confusion(conf_mat, [*names, "background"], out / "detection_confusion.png",
                   title="Detection confusion @0.25 conf (rows: true)")
