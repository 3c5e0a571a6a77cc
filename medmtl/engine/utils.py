"""Small engine utilities: seeds, RNG state capture, memory, AMP, compile; `select_device`
(medmtl/devices.py) is re-exported here."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from medmtl.devices import select_device as select_device  # re-exported for the engine


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _np_state_to_plain(np.random.get_state()),
        "python": _py_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"].cpu())
    np.random.set_state(_np_state_from_plain(st["numpy"]))
    random.setstate(_py_state_from_plain(st["python"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in st["cuda"]])


def _np_state_to_plain(s: tuple) -> dict[str, Any]:
    return {"name": s[0], "keys": torch.from_numpy(np.asarray(s[1], dtype=np.int64)), "pos": int(s[2]),
            "has_gauss": int(s[3]), "cached": float(s[4])}


def _np_state_from_plain(d: dict[str, Any]) -> tuple:
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])


def _py_state_to_plain(s: tuple) -> dict[str, Any]:
    return {"version": s[0], "state": list(s[1]), "gauss": s[2]}


def _py_state_from_plain(d: dict[str, Any]) -> tuple:
    return (d["version"], tuple(d["state"]), d["gauss"])


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    except Exception:  # pragma: no cover - non-POSIX
        return float("nan")


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def compile_module(module: torch.nn.Module) -> torch.nn.Module:
    """`torch.compile(module)` with donated buffers off: the balancers and the interference
    diagnostics back-propagate with retain_graph=True, which compiled backwards with donated
    buffers refuse ("...requires create_graph=False and retain_graph=False")."""
    try:
        import torch._functorch.config as functorch_config

        functorch_config.donated_buffer = False
    except (ImportError, AttributeError):  # pragma: no cover - older/newer torch
        pass
    return torch.compile(module)


