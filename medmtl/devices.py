"""Device choice shared by training, validation and inference (``--device``)."""

from __future__ import annotations

import torch


def select_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, else Apple MPS, else the CPU; otherwise the named device (``cuda:1``)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return dev
