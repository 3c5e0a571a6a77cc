"""View (image-level) classification loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from medmtl.config import LossConfig


class ViewLoss:
    """Cross-entropy over the rows of ``view_mask``, with optional label smoothing and class weights
    (``LossConfig.label_smoothing``, ``LossConfig.view_class_weights``); PyTorch's weighted mean
    (sum of w[y] * loss / sum of w[y]). Returns None when no row has a view label."""

    def __init__(self, num_views: int, cfg: LossConfig | None = None) -> None:
        cfg = cfg if cfg is not None else LossConfig()
        self.num_views = num_views
        self.label_smoothing = float(cfg.label_smoothing)
        w = cfg.view_class_weights
        if w is not None and len(w) != num_views:
            raise ValueError(f"view_class_weights has {len(w)} entries, expected {num_views}")
        self.weight = torch.tensor(w, dtype=torch.float32) if w is not None else None
        self._weight_on: dict[torch.device, Tensor] = {}  # per-device copy, made once

    def __call__(self, logits: Tensor, view: Tensor, view_mask: Tensor) -> Tensor | None:
        mask = view_mask.to(device=logits.device, dtype=torch.bool)
        if not bool(mask.any()):  # the one host sync: None must be decided on the host
            return None
        weight = None
        if self.weight is not None:
            weight = self._weight_on.get(logits.device)
            if weight is None:
                weight = self._weight_on.setdefault(logits.device, self.weight.to(logits.device))
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return F.cross_entropy(
                logits[mask].float(), view.to(logits.device)[mask].long(), weight=weight,
                label_smoothing=self.label_smoothing,
            )
