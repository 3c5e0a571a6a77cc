"""Device choice shared by training, validation and inference (``--device``)."""

from __future__ import annotations

import torch

from medmtl.errors import InputError, clip_text


def select_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, else Apple MPS, else the CPU; otherwise the named device (``cuda:1``)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {clip_text(name)}: not a device name; use --device auto, cpu, "
                         "cuda, cuda:1 or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine "
                         f"(torch {torch.__version__}); use --device cpu or --device auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return dev


def has_depthwise(model: torch.nn.Module) -> bool:
    """True when the model has depthwise convolutions (groups == input channels > 1)."""
    return any(isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
               for m in model.modules())


def use_channels_last(mode: str, device: torch.device, model: torch.nn.Module) -> bool:
    """--channels-last: on/off, or auto: on CUDA, and on the CPU for depthwise backbones (a step
    of EfficientNet-Lite0 at 160 px: 1000 -> 700 ms; the CSP-Darknet n: 256 -> 281 ms, slower:
    docs/benchmarks.md)."""
    if mode != "auto":
        return mode == "on"
    return device.type == "cuda" or has_depthwise(model)
