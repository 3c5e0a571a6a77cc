"""Frames with no jet: does training detection on frames labelled "none" (looked at, no jet)
lower the false positives per jet-free frame? Same synthetic clips, two label sets: the jet-free
training frames say "none" (trained as background) or have no box lines (masked out of the
detection loss, the behaviour before "none" existed). Both runs are scored on the same validation
split, whose jet-free frames say "none" (medmtl's `detection_negatives` block).

    python benchmarks/no_jet.py --imgsz 128 --epochs 15 --train 300 --seeds 0,1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from medmtl.data.synth import generate
from medmtl.engine.trainer import train
from medmtl.methods import build_config


def strip_none(root: Path) -> int:
    """Remove the "none" line of every training label file (masked, not negative); returns how
    many files changed."""
    n = 0
    for f in (root / "train" / "labels").glob("*.txt"):
        text = f.read_text(encoding="utf-8")
        if text.startswith("none\n"):
            f.write_text(text[len("none\n"):], encoding="utf-8")
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--no-jet", type=float, default=0.4, help="share of jet-free frames")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="folder to keep (default: a temporary one)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    root = Path(a.out or tempfile.mkdtemp(prefix="medmtl-nojet-"))
    generate(root / "negatives", n_train=a.train, n_val=a.val, imgsz=a.imgsz, seed=7,
             no_jet=a.no_jet)
    shutil.copytree(root / "negatives", root / "masked", dirs_exist_ok=True)
    stripped = strip_none(root / "masked")
    print(f"# {dt.date.today()} {platform.node()} torch {torch.__version__}, {a.threads} threads; "
          f"{a.train} train / {a.val} val frames at {a.imgsz} px, {stripped} jet-free training "
          f"frames; {a.epochs} epochs, fixed, size n")
    print("| jet-free training frames | seed | FP / jet-free frame @0.25 | frames with FP @0.25 "
          "| mean top score | mAP@0.5 (val) | s |")
    print("|---|---|---|---|---|---|---|")
    for seed in (int(s) for s in a.seeds.split(",")):
        for variant in ("masked", "negatives"):
            t0 = time.time()
            cfg = build_config("fixed", {
                "data": str(root / variant / "data.yaml"), "out": str(root / f"{variant}-s{seed}"),
                "epochs": a.epochs, "imgsz": a.imgsz, "batch": 16, "workers": 0, "seed": seed,
                "diag_steps": 0, "val_every": a.epochs})
            run = train(cfg, progress=False)
            m = json.loads((run / "metrics.json").read_text())
            neg = m["detection_negatives"]
            label = "labelled 'none' (trained as background)" if variant == "negatives" \
                else "no box lines (masked)"
            print(f"| {label} | {seed} | {neg['fp_per_image']['0.25']:.3f} | "
                  f"{neg['images_with_fp']['0.25']:.3f} | {neg['mean_top_score']:.3f} | "
                  f"{m['detection']['map50']:.3f} | {time.time() - t0:.0f} |", flush=True)
    if a.out is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
