"""Model sizes (`ModelConfig.size`) and the backbone a config asks for."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ModelConfig
from .backbone import Backbone, create_backbone


@dataclass(frozen=True)
class SizeSpec:
    backbone: str  # timm model name
    width: float | None  # narrow CS3-Darknet width/depth multipliers (None: timm's own config)
    depth: float | None
    neck_widths: tuple[int, int, int]  # PAN output channels at strides 8, 16, 32 (head reads these)
    neck_depth: int  # bottlenecks per neck CSP block
    cls_hidden: int  # ClassifyHead 1x1 conv width


SIZES: dict[str, SizeSpec] = {
    "n": SizeSpec("cs3darknet_s", 0.25, 0.34, (64, 96, 192), 1, 192),
    "s": SizeSpec("cs3darknet_s", None, None, (128, 256, 512), 1, 512),
    "m": SizeSpec("cs3darknet_m", None, None, (192, 384, 768), 2, 768),
}


def config_backbone(cfg: ModelConfig) -> Backbone:
    """A fresh backbone: `cfg.backbone` (any timm model) if set, else the size's CSP-Darknet."""
    spec = SIZES[cfg.size]
    if cfg.backbone is not None:
        return create_backbone(cfg.backbone, cfg.pretrained, weights_file=cfg.backbone_weights)
    return create_backbone(spec.backbone, cfg.pretrained, spec.width, spec.depth,
                           weights_file=cfg.backbone_weights)
