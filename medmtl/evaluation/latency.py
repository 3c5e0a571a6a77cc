"""Efficiency figures measured on the model itself: parameters, GFLOPs, ms per image, size.

The report's efficiency columns and benchmarks/latency.py use these same functions.
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
               device: str = "cpu") -> dict[str, Any]:
    from medmtl.models import model_info

    info = model_info(model, imgsz)
    lat = measure_latency(model, imgsz, batch=1, device=device)
    return {"params": int(info["params"]), "gflops": float(info["gflops"]),
            "ms_per_image": round(lat["ms_per_image"], 3),
            "images_per_s": round(lat["images_per_s"], 2), "latency_device": device,
            "latency_threads": torch.get_num_threads(), "imgsz": imgsz,
            "weights_mb": round(state_dict_mb(model), 3)}
