"""Reusable convolution blocks for the neck and heads (written from the CSPNet / PANet papers).

- `ConvBNAct`: conv -> BatchNorm -> SiLU, "same" padding.
- `Bottleneck`: 1x1 reduce -> 3x3, optional residual add.
- `CSPBlock`: Cross Stage Partial block (Wang et al. 2019, arXiv:1911.11929): the input is
  projected into two halves; one half goes through `n` bottlenecks, the other bypasses them; the
  two are concatenated and fused by a final 1x1 conv (registered last, so `last_conv` finds it).

All blocks are shape-static (no data-dependent Python control flow) for ONNX export.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvBNAct(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act: nn.Module = nn.SiLU(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True, expansion: float = 1.0) -> None:
        super().__init__()
        hidden = max(8, int(c * expansion))
        self.cv1 = ConvBNAct(c, hidden, 1)
        self.cv2 = ConvBNAct(hidden, c, 3)
        self.add = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class CSPBlock(nn.Module):
    """CSP block: split into a processed and a bypass path, concatenate, fuse with a 1x1 conv."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        hidden = max(8, c_out // 2)
        self.main = ConvBNAct(c_in, hidden, 1)
        self.bypass = ConvBNAct(c_in, hidden, 1)
        self.blocks = nn.Sequential(*(Bottleneck(hidden, shortcut) for _ in range(max(1, n))))
        self.fuse = ConvBNAct(2 * hidden, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(torch.cat((self.blocks(self.main(x)), self.bypass(x)), dim=1))


def last_conv(module: nn.Module) -> nn.Conv2d | None:
    """The last `nn.Conv2d` registered in `module` (blocks here and timm's CSP stages register their
    output conv last, so this is the conv whose weight is closest to the module's output)."""
    found: nn.Conv2d | None = None
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            found = m
    return found
