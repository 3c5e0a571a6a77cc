"""PAN neck (Liu et al. 2018, "Path Aggregation Network", arXiv:1803.01534) with CSP blocks.

Inputs: backbone maps c3, c4, c5 (strides 8, 16, 32). Outputs p3, p4, p5 with `widths` channels.

    top-down:   t5 = reduce5(c5)                               (w4, stride 32)
                t4 = td4(cat(up(t5), c4));  r4 = reduce4(t4)   (w4 -> w3, stride 16)
                p3 = td3(cat(up(r4), c3))                      (w3, stride 8)   -> out 8
    bottom-up:  p4 = bu4(cat(down3(p3), r4))                   (w4, stride 16)  -> out 16
                p5 = bu5(cat(down4(p4), t5))                   (w5, stride 32)  -> out 32

`level_modules(i)` lists the modules that an output depends on, so a model whose view head reads a
neck level can tell which neck parameters both tasks reach; `out_block(i)` is the block producing
output `i` (its last conv is "the last shared layer" for GradNorm).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers import ConvBNAct, CSPBlock


class PANNeck(nn.Module):
    def __init__(self, in_channels: Sequence[int], widths: Sequence[int], depth: int = 1) -> None:
        super().__init__()
        c3, c4, c5 = in_channels
        w3, w4, w5 = widths
        self.out_channels = [w3, w4, w5]
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        # top-down (FPN)
        self.reduce5 = ConvBNAct(c5, w4, 1)
        self.td4 = CSPBlock(w4 + c4, w4, depth)
        self.reduce4 = ConvBNAct(w4, w3, 1)
        self.td3 = CSPBlock(w3 + c3, w3, depth)
        # bottom-up (PAN)
        self.down3 = ConvBNAct(w3, w3, 3, 2)
        self.bu4 = CSPBlock(w3 + w3, w4, depth)
        self.down4 = ConvBNAct(w4, w4, 3, 2)
        self.bu5 = CSPBlock(w4 + w4, w5, depth)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        c3, c4, c5 = feats
        t5 = self.reduce5(c5)
        r4 = self.reduce4(self.td4(torch.cat((self.up(t5), c4), 1)))
        p3 = self.td3(torch.cat((self.up(r4), c3), 1))
        p4 = self.bu4(torch.cat((self.down3(p3), r4), 1))
        p5 = self.bu5(torch.cat((self.down4(p4), t5), 1))
        return [p3, p4, p5]

    def out_block(self, level: int) -> CSPBlock:
        return (self.td3, self.bu4, self.bu5)[level]

    def level_modules(self, level: int) -> list[nn.Module]:
        """Modules whose parameters output `level` (0: stride 8, 1: 16, 2: 32) depends on."""
        top_down: list[nn.Module] = [self.reduce5, self.td4, self.reduce4, self.td3]
        return (
            top_down
            + [[], [self.down3, self.bu4], [self.down3, self.bu4, self.down4, self.bu5]][level]
        )

    def level_parameters(self, level: int) -> list[nn.Parameter]:
        return [p for m in self.level_modules(level) for p in m.parameters()]
