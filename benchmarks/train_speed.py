"""Training throughput: images/s, ms per step and peak memory per size x architecture x balancer.

Step mode (default) times the real training step (forward, detection + view losses, the balancer's
backward(s), an AdamW step) on a fixed synthetic batch, so the numbers isolate the model and the
balancer from data loading. Also prints GradNorm's (and every balancer's) overhead over `fixed`.

Epoch mode (`--data`) runs the real trainer (data loader with its workers and augmentation, EMA,
the whole step) for `--epochs` epochs per architecture x balancer and prints measured seconds per
training epoch (median over the epochs after the first), images/s, and the seconds of one
validation pass (inference + COCO scoring).

    python benchmarks/train_speed.py --sizes n --imgsz 320 --batch 16            # CPU, step mode
    python benchmarks/train_speed.py --sizes n,s,m --imgsz 416 --batch 64 --device cuda
    python benchmarks/train_speed.py --data data.yaml --imgsz 416 --batch 64 --epochs 3 --workers 12
    python benchmarks/train_speed.py --backbone tf_efficientnet_lite0 --freeze-stages 2 \
        --archs shared --balancers fixed --imgsz 160          # a pretrained backbone's step
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import time
from typing import Any

import torch

from medmtl.balancing import create_balancer
from medmtl.balancing.base import TaskSplit
from medmtl.config import BalancerConfig, LossConfig, ModelConfig
from medmtl.devices import use_channels_last
from medmtl.engine.utils import compile_module, peak_memory_mb
from medmtl.losses import DetectionLoss, ViewLoss
from medmtl.models import build_model


def fake_batch(b: int, imgsz: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(b, 1, 2, generator=g) * imgsz * 0.6
    wh = imgsz * (0.1 + 0.25 * torch.rand(b, 1, 2, generator=g))
    return {"images": torch.rand(b, 3, imgsz, imgsz, generator=g).to(device),
            "boxes": torch.cat([xy, xy + wh], -1).to(device),
            "box_classes": torch.randint(0, 4, (b, 1), generator=g).to(device),
            "box_mask": torch.ones(b, 1, dtype=torch.bool, device=device),
            "det_mask": torch.ones(b, dtype=torch.bool, device=device),
            "view": torch.randint(0, 3, (b,), generator=g).to(device),
            "view_mask": torch.ones(b, dtype=torch.bool, device=device)}


def bench(size: str, arch: str, balancer: str, imgsz: int, batch: int, device: torch.device,
          steps: int, warmup: int, compile_: bool = False, backbone: str | None = None,
          freeze_stages: int = 0, channels_last: str = "auto") -> dict[str, float]:
    model = build_model(ModelConfig(arch=arch, size=size, backbone=backbone,
                                    freeze_stages=freeze_stages)).to(device).train()
    cl = use_channels_last(channels_last, device, model)  # as the trainer decides
    if cl:
        model = model.to(memory_format=torch.channels_last)
    net = compile_module(model) if compile_ else model  # as the trainer does
    det, view = DetectionLoss(4, 16, list(model.strides), LossConfig()), ViewLoss(3)
    bal = create_balancer(model.tasks, BalancerConfig(name=balancer))
    bal.to(device)
    bal.detailed_log = False  # as the trainer: no per-step host sync for the log
    opt = torch.optim.AdamW([*(p for p in model.parameters() if p.requires_grad),
                             *bal.parameters()], lr=1e-3,
                            fused=device.type == "cuda")
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    last = model.last_shared_parameter()
    task_params = None
    if bal.uses_split and model.shared_boundary_valid() and not compile_:  # as the trainer
        model.expose_shared = True
        task_params = {t: model.task_parameters(t) for t in model.tasks}
    b = fake_batch(batch, imgsz, device)
    if cl:
        b["images"] = b["images"].contiguous(memory_format=torch.channels_last)
    amp = torch.bfloat16 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    passes = 0
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = net(b["images"])
        feats = model.take_shared_features()
        kw = {"split": TaskSplit(list(feats), task_params)} if feats is not None else {}
        losses = {"detect": det([p.float() for p in out["detect"]], b)[0],
                  "classify": view(out["classify"].float(), b["view"], b["view_mask"])}
        log = bal.backward(losses, shared, last, **kw)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bal.after_step({k: v.detach() for k, v in losses.items()})
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
            passes += log.get("backward_passes", 1)
    times.sort()
    med = times[len(times) // 2]
    return {"ms_per_step": 1000 * med, "images_per_s": batch / med,
            "backward_passes": passes / steps, "peak_mem_mb": peak_memory_mb(device)}


def bench_epochs(data: str, size: str, arch: str, balancer: str, imgsz: int, batch: int,
                 device: str, epochs: int, workers: int, compile_: bool) -> dict[str, float]:
    """Seconds per real training epoch and per validation pass, through the trainer."""
    import tempfile

    from medmtl.engine.loop import train_one_epoch
    from medmtl.engine.trainer import Trainer
    from medmtl.methods import build_config

    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config("fixed", {
            "data": data, "out": f"{tmp}/run", "epochs": epochs, "imgsz": imgsz, "batch": batch,
            "device": device, "workers": workers, "compile": compile_,
            "model": {"arch": arch, "size": size}, "balancer": {"name": balancer}})
        from rich.console import Console

        t = Trainer(cfg, progress=False, console=Console(quiet=True))
        secs = []
        for _ in range(epochs):
            row = train_one_epoch(t)
            secs.append(float(row["seconds"]))
            t.state.epoch += 1
            t.state.step_in_epoch = 0
            t.state.epoch_acc = {}
        t0 = time.perf_counter()
        t.validate()
        val = time.perf_counter() - t0
        n = t.data.batches_per_epoch() * batch
        peak = float(row["peak_mem_mb"])
    later = sorted(secs[1:] or secs)
    med = later[len(later) // 2]
    return {"s_per_epoch": med, "first_epoch_s": secs[0], "images_per_s": n / med,
            "val_s": val, "peak_mem_mb": peak, "images": n}


def main_epochs(a: argparse.Namespace) -> None:
    print(f"# train_speed --data: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"device {a.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"imgsz {a.imgsz}, batch {a.batch}, workers {a.workers}, {a.epochs} epochs each, "
          f"compile {a.compile}\n")
    print_grid(a, lambda size, arch, bal: bench_epochs(
        a.data, size, arch, bal, a.imgsz, a.batch, a.device, a.epochs, a.workers, a.compile),
        "s_per_epoch", [("s/epoch", "s_per_epoch", ".2f"), ("first epoch s", "first_epoch_s", ".2f"),
                        ("images/s", "images_per_s", ".1f"), ("val s", "val_s", ".2f")])


def print_grid(a: argparse.Namespace, measure: Any, key: str,
               cols: list[tuple[str, str, str]]) -> None:
    """A markdown row per size x arch x balancer: `cols` (header, result key, format), then the
    overhead of `key` over the arch's `fixed` row and the peak memory."""
    print("| size | arch | balancer | " + " | ".join(c[0] for c in cols)
          + " | overhead vs fixed | peak MB |")
    print("|---" * (len(cols) + 5) + "|")
    for size in a.sizes.split(","):
        for arch in a.archs.split(","):
            base = None
            for bal in a.balancers.split(","):
                r = measure(size, arch, bal)
                if bal == "fixed":
                    base = r[key]
                over = f"{100 * (r[key] / base - 1):+.1f} %" if base else "—"
                vals = " | ".join(format(r[k], f) for _, k, f in cols)
                print(f"| {size} | {arch} | {bal} | {vals} | {over} | {r['peak_mem_mb']:.0f} |",
                      flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="n")
    ap.add_argument("--archs", default="shared,dual,split2")
    ap.add_argument("--balancers", default="fixed,gradnorm,uncertainty,dwa,pcgrad,cagrad,famo")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--data", default="", help="dataset YAML: epoch mode through the trainer")
    ap.add_argument("--epochs", type=int, default=3, help="epoch mode: epochs per configuration")
    ap.add_argument("--workers", type=int, default=2, help="epoch mode: loader workers")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--backbone", default=None, help="a timm model instead of the size's "
                    "CSP-Darknet (random weights: the speed does not depend on them)")
    ap.add_argument("--freeze-stages", type=int, default=0)
    ap.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.data:
        main_epochs(a)
        return
    device = torch.device(a.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as the trainer does
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() \
        or platform.machine()
    print(f"# train_speed: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, device {name}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, imgsz {a.imgsz}, "
          f"batch {a.batch}, median of {a.steps} steps after {a.warmup} warm-up, backbone "
          f"{a.backbone or 'of the size'}, freeze-stages {a.freeze_stages}, channels-last "
          f"{a.channels_last}\n")
    # one untimed pass first: the process's first steps pay one-off kernel/allocator set-up that
    # a per-config warm-up does not absorb (it made the first row look 2.6x slower)
    extra = {"backbone": a.backbone, "freeze_stages": a.freeze_stages,
             "channels_last": a.channels_last}
    bench(a.sizes.split(",")[0], "shared", "fixed", a.imgsz, a.batch, device, 4, a.warmup,
          a.compile, **extra)
    print_grid(a, lambda size, arch, bal: bench(size, arch, bal, a.imgsz, a.batch, device,
                                                 a.steps, a.warmup, a.compile, **extra),
               "ms_per_step", [("ms/step", "ms_per_step", ".1f"), ("images/s", "images_per_s", ".1f"),
                               ("backward passes", "backward_passes", ".0f")])


if __name__ == "__main__":
    main()
