"""`Predictor`: the PyTorch forward pass under `BasePredictor`, built from a checkpoint with
`Predictor.from_checkpoint` (safe load, `medmtl.models.checkpoint.model_from_checkpoint`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from medmtl.devices import select_device
from medmtl.evaluation.postprocess import decode_predictions
from medmtl.inference.base import BasePredictor
from medmtl.models.checkpoint import model_from_checkpoint


class Predictor(BasePredictor):
    """PyTorch predictor around a `MultiTaskModel` (fp32, eval mode, on ``device``)."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str], cls_names: Sequence[str],
                 imgsz: int, device: str | torch.device = "cpu", max_batch: int = 16) -> None:
        super().__init__(names, cls_names, tuple(model.tasks), imgsz, max_batch)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @classmethod
    def from_checkpoint(cls, weights: str | Path, device: str | torch.device = "auto",
                        imgsz: int | None = None, use_ema: bool = True,
                        max_batch: int = 16, allow_backbone_path: bool = False) -> Predictor:
        """A checkpoint (``.pt``) as a predictor; see `medmtl.inference.load_model`."""
        dev = select_device(str(device)) if not isinstance(device, torch.device) else device
        model, cfg, ck = model_from_checkpoint(weights, dev, use_ema=use_ema,
                                               allow_backbone_path=allow_backbone_path)
        names = list(ck.get("names") or [str(i) for i in range(cfg.model.num_classes)])
        cls_names = list(ck.get("cls_names") or [str(i) for i in range(cfg.model.num_views)])
        pred = cls(model, names, cls_names, int(imgsz or cfg.imgsz), dev, max_batch)
        pred.weights = str(weights)
        rec = ck.get("view_abstention")  # measured on val when the run finished
        pred.abstention = dict(rec) if isinstance(rec, dict) else None
        return pred

    @torch.no_grad()
    def _forward(self, images: np.ndarray) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        m = self.model
        out = m(torch.from_numpy(images).to(self.device))
        boxes = scores = None
        if "detect" in out:
            boxes, scores = decode_predictions(out["detect"], m.strides, m.reg_max, m.num_classes)
            boxes, scores = boxes.cpu(), scores.cpu()
        logits = out["classify"].float().cpu() if "classify" in out else None
        return boxes, scores, logits
