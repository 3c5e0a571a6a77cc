"""`single`: one task, its own backbone (the single-task baselines)."""

from __future__ import annotations

from ...config import ModelConfig
from ..base import ARCHS
from ..branched import BranchedModel, need_backbone_view, need_tasks
from ..sizes import config_backbone


@ARCHS.register("single")
def single(cfg: ModelConfig) -> BranchedModel:
    need_tasks(cfg, "single", 1)
    need_backbone_view(cfg, "single")
    bb = config_backbone(cfg)
    det, cls = (bb, None) if cfg.tasks == ("detect",) else (None, bb)
    return BranchedModel(cfg, "single", None, det, cls)
