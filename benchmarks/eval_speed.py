"""Evaluation speed: model inference images/s over a validation split, and the seconds spent in
post-processing + COCO scoring (faster-coco-eval) + P/R/F1, on a synthetic set.

    python benchmarks/eval_speed.py --images 200 --imgsz 320 --size n
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time

import torch

from medmtl.config import ModelConfig
from medmtl.data import MTLDataset, collate, load_data_yaml, scan_split
from medmtl.data.synth import generate
from medmtl.engine.evaluate import run_inference, score
from medmtl.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--size", default="n")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    device = torch.device(a.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as the trainer does
    with tempfile.TemporaryDirectory() as tmp:
        yaml_path = generate(tmp, n_train=1, n_val=a.images, imgsz=a.imgsz, seed=0)
        spec = load_data_yaml(yaml_path)
        index = scan_split(spec, "val")
        ds = MTLDataset(index.records, a.imgsz, train=False, cache=True)
        loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, collate_fn=collate)
        model = build_model(ModelConfig(size=a.size)).to(device).eval()
        t0 = time.perf_counter()
        inf = run_inference(model, loader, device, conf=0.001, iou=0.6, max_det=100)
        t1 = time.perf_counter()
        n_det = sum(len(d) for d in inf["detections"].values())
        score(inf, index.records, spec.names, spec.cls_names, model.tasks)
        t2 = time.perf_counter()
    print(f"# eval_speed: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {device}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, size {a.size}, "
          f"imgsz {a.imgsz}, random-init model at conf 0.001 (worst case: {n_det} detections)")
    print(f"inference + NMS: {a.images / (t1 - t0):.1f} images/s ({t1 - t0:.2f} s)")
    print(f"COCO mAP + P/R/F1 + view metrics: {t2 - t1:.2f} s for {a.images} images")


if __name__ == "__main__":
    main()
