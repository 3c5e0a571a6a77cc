"""`dual`: two independent backbones, one per task, in one model (nothing shared)."""

from __future__ import annotations

from ...config import ModelConfig
from ..base import ARCHS
from ..branched import BranchedModel, need_backbone_view, need_tasks
from ..sizes import config_backbone


@ARCHS.register("dual")
def dual(cfg: ModelConfig) -> BranchedModel:
    need_tasks(cfg, "dual", 2)
    need_backbone_view(cfg, "dual")
    return BranchedModel(cfg, "dual", None, config_backbone(cfg), config_backbone(cfg))
