"""Reading checkpoints: the safe `load_checkpoint`, `model_from_checkpoint` (the model a checkpoint
was trained with) and `checkpoint_dict` (a model packed in the checkpoint format).

A checkpoint is a plain dict of tensors and primitive values, so `torch.load(weights_only=True)`
reads it and a checkpoint from a stranger cannot run code. Writing them (atomically) is the
training engine's part: `medmtl.engine.checkpoint.save_checkpoint`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from .mtl import build_model


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle refusing a non-tensor object, truncated file, ...
        raise ValueError(
            f"{path}: not a loadable medmtl checkpoint (only tensors and plain values are "
            f"accepted; weights_only=True): {e}"
        ) from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not a medmtl checkpoint (missing 'model' or 'config')")
    return ckpt


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                          use_ema: bool = True) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained with (EMA weights when present)."""
    ck = load_checkpoint(path)
    cfg = TrainConfig.model_validate(ck["config"])
    model = build_model(cfg.model)
    state = ck["ema"]["module"] if use_ema and ck.get("ema") else ck["model"]
    model.load_state_dict(state)
    return model.to(device).eval(), cfg, ck


def checkpoint_dict(model: nn.Module, cfg: Any, names: Sequence[str],
                    cls_names: Sequence[str], epoch: int = 0) -> dict[str, Any]:
    """A model packed in the project's checkpoint format (what the trainer's ``_state`` writes,
    without optimiser state): ``load_model`` and ``model_from_checkpoint`` read it.
    ``cfg``: the `TrainConfig` the model was built from."""
    return {"model": model.state_dict(), "ema": None, "config": cfg.model_dump(mode="json"),
            "names": list(names), "cls_names": list(cls_names), "epoch": epoch,
            "step_in_epoch": 0, "best_fitness": None, "best_epoch": epoch, "history": [],
            "train_seconds": 0.0}
