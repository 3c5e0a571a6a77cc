"""Deployment commands: val, predict, export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from medmtl.cli.app import Opt, app, console, print_metrics


@app.command()
def val(
    weights: Annotated[Path, Opt(help="Checkpoint (.pt) or exported graph (.onnx, also "
                                      ".half.onnx / .int8.onnx)")],
    data: Annotated[Path, Opt(help="Dataset YAML")],
    split: Annotated[str, Opt(help="val | test | train")] = "val",
    out: Annotated[Path, Opt(help="Output folder")] = Path("runs/val"),
    imgsz: Annotated[int | None, Opt(min=32, help="Letterbox size, a multiple of 32 \\[default: the checkpoint's]")] = None,
    batch: Annotated[int, Opt(min=1)] = 16,
    conf: Annotated[float | None, Opt(help="Score threshold before NMS \\[default: the checkpoint config's]", min=0.0, max=1.0)] = None,
    iou: Annotated[float | None, Opt(help="NMS IoU \\[default: the checkpoint config's]", min=0.0, max=1.0)] = None,
    device: Annotated[str, Opt()] = "auto",
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


@app.command()
def predict(
    source: Annotated[str, Opt(help="Image, folder, glob, video (mp4/avi) or DICOM file")],
    weights: Annotated[Path | None, Opt(help="Checkpoint (.pt) or exported graph (.onnx) "
                                        "\\[default: the shipped echo model, "
                                        "weights/medmtl-echo.pt]")] = None,
    out: Annotated[Path, Opt(help="Output folder")] = Path("runs/predict"),
    conf: Annotated[float, Opt(help="Box score threshold", min=0.0, max=1.0)] = 0.25,
    iou: Annotated[float, Opt(help="NMS IoU", min=0.0, max=1.0)] = 0.6,
    max_det: Annotated[int, Opt(min=1)] = 100,
    imgsz: Annotated[int | None, Opt(min=32, help="Letterbox size, a multiple of 32 \\[default: the checkpoint's]")] = None,
    device: Annotated[str, Opt()] = "auto",
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
    imgsz: Annotated[int | None, Opt(min=32, help="Letterbox size, a multiple of 32 "
                                                 "\\[default: the checkpoint's]")] = None,
) -> None:
    """Export to ONNX: boxes and scores before NMS (or final detections with --nms), plus view
    logits; checked against PyTorch. --half / --int8 add compressed copies."""
    from medmtl.inference.export import export_command

    export_command(weights, format=format, out=out, dynamic=dynamic, half=half, opset=opset,
                   imgsz=imgsz, int8=int8, nms=nms, max_det=max_det, calib_data=calib_data,
                   calib_n=calib_n)
