"""Task heads.

`DetectHead`: anchor-free, decoupled (FCOS / YOLOX style): per level a box branch (two 3x3 convs ->
1x1 conv to 4 * reg_max DFL logits, Li et al. 2020 "Generalized Focal Loss") and a class branch
(two 3x3 convs -> 1x1 conv to nc logits). Output per level: cat(box, cls) of shape
(B, 4 * reg_max + nc, H, W), the layout `anchors.flatten_predictions` reads.

`ClassifyHead`: 1x1 conv -> global average pool -> dropout -> linear to `num_views` logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers import ConvBNAct


def class_prior_bias(
    num_classes: int, stride: int, objects: float = 5.0, ref_size: int = 640
) -> float:
    """Logit of the initial class probability: about `objects` objects per `ref_size`^2 image spread
    over the level's cells and the classes, capped at the focal-loss prior 0.01 (Lin et al. 2017)."""
    cells = (ref_size / stride) ** 2
    p = min(0.01, objects / (max(1, num_classes) * cells))
    return math.log(p / (1.0 - p))


class DetectHead(nn.Module):
    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        reg_max: int = 16,
        strides: Sequence[int] = (8, 16, 32),
    ) -> None:
        super().__init__()
        self.nc, self.reg_max, self.strides = num_classes, reg_max, list(strides)
        c_box = max(16, 4 * reg_max, in_channels[0] // 4)
        c_cls = max(in_channels[0], min(num_classes, 100))
        self.box = nn.ModuleList(
            nn.Sequential(
                ConvBNAct(c, c_box, 3), ConvBNAct(c_box, c_box, 3), nn.Conv2d(c_box, 4 * reg_max, 1)
            )
            for c in in_channels
        )
        self.cls = nn.ModuleList(
            nn.Sequential(
                ConvBNAct(c, c_cls, 3), ConvBNAct(c_cls, c_cls, 3), nn.Conv2d(c_cls, num_classes, 1)
            )
            for c in in_channels
        )
        self.init_bias()

    def init_bias(self) -> None:
        for box, cls, s in zip(self.box, self.cls, self.strides, strict=True):
            nn.init.constant_(box[-1].bias, 1.0)
            nn.init.constant_(cls[-1].bias, class_prior_bias(self.nc, s))

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        return [
            torch.cat((box(x), cls(x)), 1)
            for x, box, cls in zip(feats, self.box, self.cls, strict=True)
        ]


class ClassifyHead(nn.Module):
    def __init__(
        self, in_channels: int, num_views: int, hidden: int = 256, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, hidden, 1)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, num_views)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.drop(self.conv(x).mean(dim=(2, 3))))
