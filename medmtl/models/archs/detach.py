"""`detach`: the layout of `shared`, but the view head reads detached features, so the view loss
never reaches the backbone (a probe of what the detection features already hold)."""

from __future__ import annotations

from ...config import ModelConfig
from ..base import ARCHS
from ..branched import BranchedModel, need_tasks
from ..sizes import config_backbone


@ARCHS.register("detach")
def detach(cfg: ModelConfig) -> BranchedModel:
    need_tasks(cfg, "detach", 2)
    return BranchedModel(cfg, "detach", config_backbone(cfg), None, None, detach_view=True)
