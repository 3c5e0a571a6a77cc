"""Building a model by architecture name, and its size and cost.

`build_model(cfg)` looks `cfg.arch` up in `ARCHS` (`medmtl/models/base.py`); the architectures
themselves are plug-ins in `medmtl/models/archs/`, one file each, registered on import.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..config import ModelConfig
from . import archs  # noqa: F401  (imports every plug-in, which registers itself)
from .base import ARCHS, MultiTaskNet


def build_model(cfg: ModelConfig) -> MultiTaskNet:
    """The architecture `cfg.arch`: a registered name (`shared`, `dual`, ...) or one matching a
    registered pattern (`split<k>`, e.g. `split2`)."""
    model = ARCHS.create(cfg.arch, cfg)
    if not isinstance(model, MultiTaskNet):
        raise TypeError(f"arch {cfg.arch!r} built a {type(model).__name__}, not a MultiTaskNet")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_info(model: nn.Module, imgsz: int = 320) -> dict[str, float]:
    """Parameters and GFLOPs for one (1, 3, imgsz, imgsz) image in eval mode. GFLOPs are
    `FlopCounterMode` FLOPs / 1e9, which count a multiply-add as 2 FLOPs (so GFLOPs = 2 x GMACs)."""
    p = next(model.parameters())
    x = torch.zeros(1, 3, imgsz, imgsz, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return {"params": count_parameters(model), "gflops": counter.get_total_flops() / 1e9}
