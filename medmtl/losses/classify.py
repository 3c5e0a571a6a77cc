"""View (image-level) classification loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from medmtl.config import LossConfig
from medmtl.distributed import LOCAL, Comm


class ViewLoss:
    """Cross-entropy over the rows of ``view_mask``, with optional label smoothing and class weights
    (``LossConfig.label_smoothing``, ``LossConfig.view_class_weights``); PyTorch's weighted mean
    (sum of w[y] * loss / sum of w[y]). Returns None when no row has a view label.

    Under data parallelism (`comm` active) the mean's denominator is that of the *global* batch
    (divided by the world size), so the ranks' average is the global batch's loss; every rank must
    call it, and a rank without view labels gets a graph-connected zero instead of None."""

    def __init__(self, num_views: int, cfg: LossConfig | None = None) -> None:
        cfg = cfg if cfg is not None else LossConfig()
        self.num_views = num_views
        self.label_smoothing = float(cfg.label_smoothing)
        w = cfg.view_class_weights
        if w is not None and len(w) != num_views:
            raise ValueError(f"view_class_weights has {len(w)} entries, expected {num_views}")
        self.weight = torch.tensor(w, dtype=torch.float32) if w is not None else None
        self._weight_on: dict[torch.device, Tensor] = {}  # per-device copy, made once

    def __call__(self, logits: Tensor, view: Tensor, view_mask: Tensor, comm: Comm = LOCAL,
                 present: bool = False) -> Tensor | None:
        """`present=True`: the caller knows (on the host) that the batch has view labels; the
        loss is then computed without boolean indexing, i.e. without a device-to-host sync."""
        mask = view_mask.to(device=logits.device, dtype=torch.bool)
        if comm.active or present:
            return self._global_mean(logits, view, mask, comm)
        if not bool(mask.any()):  # the one host sync: None must be decided on the host
            return None
        weight = self._weight(logits.device)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return F.cross_entropy(
                logits[mask].float(), view.to(logits.device)[mask].long(), weight=weight,
                label_smoothing=self.label_smoothing,
            )

    def _weight(self, device: torch.device) -> Tensor | None:
        if self.weight is None:
            return None
        weight = self._weight_on.get(device)
        if weight is None:
            weight = self._weight_on.setdefault(device, self.weight.to(device))
        return weight

    def _global_mean(self, logits: Tensor, view: Tensor, mask: Tensor, comm: Comm) -> Tensor:
        """PyTorch's weighted mean with the global batch's denominator (no boolean indexing)."""
        weight = self._weight(logits.device)
        target = torch.where(mask, view.to(logits.device).long(), 0)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            per = F.cross_entropy(logits.float(), target, weight=weight,
                                  label_smoothing=self.label_smoothing, reduction="none")
        w_row = mask.float() if weight is None else weight[target] * mask
        denom = comm.sum(w_row.sum()).clamp(min=1e-12) / comm.world_size
        return (per * mask).sum() / denom
