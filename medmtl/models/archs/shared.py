"""`shared`: hard parameter sharing, one backbone for both tasks; the view head reads the
backbone's last stage or a neck level (`view_source`)."""

from __future__ import annotations

from ...config import ModelConfig
from ..base import ARCHS
from ..branched import BranchedModel, need_tasks
from ..sizes import config_backbone


@ARCHS.register("shared")
def shared(cfg: ModelConfig) -> BranchedModel:
    need_tasks(cfg, "shared", 2)
    return BranchedModel(cfg, "shared", config_backbone(cfg), None, None)
