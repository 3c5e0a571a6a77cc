"""Efficiency figures measured on the model itself: parameters, GFLOPs, ms per image, size.

The report's efficiency columns and benchmarks/latency.py use these same functions.
``ms_per_image`` is the forward pass only; the end-to-end figures beside it (decode + letterbox +
forward + NMS, ``latency_e2e_*``) come from `medmtl.inference.latency`.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn


@torch.no_grad()
def measure_latency(model: nn.Module, imgsz: int, batch: int = 1, device: str | torch.device = "cpu",
                    warmup: int = 3, iters: int = 10, threads: int | None = None) -> dict[str, float]:
    """Median wall-clock ms per forward pass (model outputs, before NMS) and images/s."""
    device = torch.device(device)
    m = copy.deepcopy(model).to(device).eval()
    x = torch.rand(batch, 3, imgsz, imgsz, device=device)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            m(x)
        times = []
        for _ in range(iters):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            m(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(old_threads)
    times.sort()
    med = times[len(times) // 2]
    return {"ms_per_batch": 1000 * med, "ms_per_image": 1000 * med / batch,
            "images_per_s": batch / med}


def state_dict_mb(model: nn.Module) -> float:
    """fp32 size of the weights a deployment would ship (parameters + buffers), in MiB."""
    n = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return n / 2**20


def efficiency(model: nn.Module, imgsz: int, weights_path: str | Path | None = None,
               device: str = "cpu", e2e: bool = True, ort: bool = False) -> dict[str, Any]:
    """The ``efficiency`` block of metrics.json. ``e2e``: also the end-to-end latency (PyTorch,
    CPU and CUDA where present); ``ort``: also through ONNX Runtime (an export, seconds: the
    trainer leaves it to the re-timing after a comparison, `medmtl report DIR --retime`)."""
    from medmtl.models import model_info

    info = model_info(model, imgsz)
    lat = measure_latency(model, imgsz, batch=1, device=device)
    out: dict[str, Any] = {
        "params": int(info["params"]), "gflops": float(info["gflops"]),
        "ms_per_image": round(lat["ms_per_image"], 3),
        "images_per_s": round(lat["images_per_s"], 2), "latency_device": device,
        "latency_threads": torch.get_num_threads(), "imgsz": imgsz,
        "weights_mb": round(state_dict_mb(model), 3)}
    if e2e:
        from medmtl.inference.latency import measure_e2e

        try:
            out.update(measure_e2e(model, imgsz, ort=ort))
        except Exception as e:  # a failed timing must not cost the run its metrics.json
            out["latency_e2e_skipped"] = f"{type(e).__name__}: {e}"[:300]
        if not ort:
            out["latency_e2e_ort_skipped"] = ("not measured at the end of training; "
                                              "`medmtl report DIR --retime` measures it")
    return out
