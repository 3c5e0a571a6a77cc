"""Deployment commands: val, predict, export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from medmtl.cli.app import Opt, app, console, print_metrics
from medmtl.cli.options import WEIGHTS_HELP, imgsz_option
from medmtl.config import DATA_HELP, DEVICE_HELP

_CHECKPOINTS = "the checkpoint's"


@app.command()
def val(
    weights: Annotated[Path, Opt(help=WEIGHTS_HELP)],
    data: Annotated[Path, Opt(help=DATA_HELP)],
    split: Annotated[str, Opt(help="val | test | train")] = "val",
    out: Annotated[Path, Opt(help="Output folder")] = Path("runs/val"),
    imgsz: Annotated[int | None, imgsz_option(_CHECKPOINTS)] = None,
    batch: Annotated[int, Opt(min=1)] = 16,
    conf: Annotated[float | None, Opt(help="Score threshold before NMS \\[default: the checkpoint config's]", min=0.0, max=1.0)] = None,
    iou: Annotated[float | None, Opt(help="NMS IoU \\[default: the checkpoint config's]", min=0.0, max=1.0)] = None,
    device: Annotated[str, Opt(help=DEVICE_HELP)] = "auto",
    workers: Annotated[int, Opt(min=0)] = 2,
    corrections: Annotated[Path | None, Opt(help="Corrections CSV (stem,field,old,new,note) "
                                                 "applied on top of the label files")] = None,
    latency_iters: Annotated[int, Opt(min=0, help="An .onnx graph: timed end-to-end calls "
                                                  "(efficiency.latency_e2e_ort_*; 0: none)")] = 20,
) -> None:
    """Evaluate a checkpoint or an ONNX graph: metrics.json, predictions.json and
    ground_truth.json (COCO)."""
    import typer

    from medmtl.data.corrections import CorrectionError
    from medmtl.engine.validate import validate_checkpoint

    try:
        validate_checkpoint(weights, data, split, out, imgsz=imgsz, batch=batch, conf=conf,
                            iou=iou, device=device, workers=workers, corrections=corrections,
                            latency_iters=latency_iters)
    except CorrectionError as e:
        raise typer.BadParameter(str(e), param_hint="--corrections") from None
    print_metrics(out / "metrics.json")
    import json

    for line in val_lines(json.loads((out / "metrics.json").read_text())):
        console.print(line, markup=False, highlight=False)


def val_lines(m: dict) -> list[str]:
    """`medmtl val`'s lines after the summary: AP@0.5 per detection class (with its number of
    boxes; n/a for a class without any in the split) and the forward pass's mean time per image
    (metrics.json ``detection.per_class``, ``val_latency``)."""
    out = []
    per_class = (m.get("detection") or {}).get("per_class") or {}
    if per_class:
        out.append("AP@0.5 per class: " + "  ".join(
            f"{name} {'n/a' if c.get('ap50') is None else format(c['ap50'], '.3f')} "
            f"({c.get('n_gt', 0)} boxes)" for name, c in per_class.items()))
    lat = m.get("val_latency") or {}
    if lat.get("forward_ms_per_image") is not None:
        threads = f", {lat['threads']} threads" if lat.get("threads") else ""
        warm = ", first batch left out" if lat.get("warmup_batches_left_out") else ""
        out.append(f"forward pass: {lat['forward_ms_per_image']:.2f} ms/image ({lat['device']}, "
                   f"batch {lat['batch']}{threads}; mean over {lat['images_timed']} "
                   f"images{warm})")
    return out


@app.command()
def predict(
    source: Annotated[str, Opt(help="Image, folder, glob, video (mp4/avi) or DICOM file")],
    weights: Annotated[Path | None, Opt(help=WEIGHTS_HELP + " \\[default: the shipped echo "
                                             "model, weights/medmtl-echo.pt]")] = None,
    out: Annotated[Path, Opt(help="Output folder")] = Path("runs/predict"),
    conf: Annotated[float, Opt(help="Box score threshold", min=0.0, max=1.0)] = 0.25,
    iou: Annotated[float, Opt(help="NMS IoU", min=0.0, max=1.0)] = 0.6,
    max_det: Annotated[int, Opt(min=1)] = 100,
    imgsz: Annotated[int | None, imgsz_option(_CHECKPOINTS)] = None,
    device: Annotated[str, Opt(help=DEVICE_HELP)] = "auto",
    save_media: Annotated[bool, Opt("--save-media/--no-save-media",
                                    help="Write annotated images / videos")] = True,
    view_min_prob: Annotated[float | None, Opt(help="Below this view probability the view is "
                                                    "reported as uncertain \\[default: the "
                                                    "checkpoint's threshold, measured on val; "
                                                    "0 turns abstention off]",
                                               min=0.0, max=1.0)] = None,
    allow_backbone_path: Annotated[bool, Opt(help="Let the checkpoint's config name a backbone "
                                                  "folder or hub id (only for files you trust)")]
    = False,
) -> None:
    """Detect jets and name the view on images, folders, globs, videos or DICOM cines."""
    from medmtl.inference.app import predict_command

    summary = predict_command(weights, source, out, conf=conf, iou=iou, max_det=max_det,
                              imgsz=imgsz, device=device, save_media=save_media,
                              view_min_prob=view_min_prob,
                              allow_backbone_path=allow_backbone_path)
    for line in summary_lines(summary):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


SHOWN_IMAGES = 20  # per-image lines printed; the rest are in summary.json / predictions.jsonl


def summary_lines(summary: dict) -> list[str]:
    """What `medmtl predict` prints: per clip its view (with the vote share, or the tie) and its
    jets, and the codec of the annotated video; per image its own view and jets."""
    out = []
    for clip in summary.get("per_clip", []):
        parts = [clip["view"]["text"]] if clip.get("view") else []
        parts.append(clip.get("jets_text", ""))
        if clip.get("output"):
            codec = clip.get("codec")
            note = "H.264" if codec == "avc1" else \
                f"{codec}: this OpenCV build has no H.264 encoder"
            parts.append(f"wrote {clip['output']} ({note})")
        out.append(f"{clip['source']}: " + "; ".join(p for p in parts if p))
    images = summary.get("per_image", [])
    for im in images[:SHOWN_IMAGES]:
        out.append(f"{im['source']}: {im['text']}")
    if len(images) > SHOWN_IMAGES:
        out.append(f"... and {len(images) - SHOWN_IMAGES} more images (summary.json: per_image)")
    if summary.get("abstention"):
        unsure = (summary.get("view") or {}).get("uncertain_frames", 0)
        out.append(f"{summary['abstention']['text']}; {unsure} frame(s) uncertain")
    out.append(f"{summary.get('frames', 0)} frames ({summary.get('images', 0)} images, "
               f"{summary.get('clips', 0)} clips); wrote {summary.get('out')}")
    return out


@app.command()
def export(
    weights: Annotated[Path, Opt(help="Checkpoint (.pt)")],
    format: Annotated[str, Opt(help="onnx")] = "onnx",
    out: Annotated[Path | None, Opt(help="Output path \\[default: WEIGHTS with .onnx]")] = None,
    dynamic: Annotated[bool, Opt(help="Dynamic batch and image size")] = False,
    half: Annotated[bool, Opt(help="Also write <stem>.half.onnx: fp16 network, float32 I/O")]
    = False,
    int8: Annotated[bool, Opt(help="Also write <stem>.int8.onnx: ONNX Runtime static INT8 "
                                   "quantisation calibrated on training images")] = False,
    calib_data: Annotated[Path | None, Opt(help="Dataset YAML whose training split calibrates "
                                                "--int8 \\[default: the run's]")] = None,
    calib_n: Annotated[int, Opt(min=1, help="Calibration images for --int8")] = 64,
    nms: Annotated[bool, Opt(help="NMS in the graph (inputs conf, iou; output detections)")]
    = False,
    max_det: Annotated[int, Opt(min=1, help="With --nms: detections kept per image")] = 100,
    opset: Annotated[int, Opt(min=11)] = 17,
    imgsz: Annotated[int | None, imgsz_option(_CHECKPOINTS)] = None,
) -> None:
    """Export to ONNX: boxes and scores before NMS (or final detections with --nms), plus view
    logits; checked against PyTorch. --half / --int8 add compressed copies."""
    from medmtl.inference.export import export_command

    export_command(weights, format=format, out=out, dynamic=dynamic, half=half, opset=opset,
                   imgsz=imgsz, int8=int8, nms=nms, max_det=max_det, calib_data=calib_data,
                   calib_n=calib_n)
