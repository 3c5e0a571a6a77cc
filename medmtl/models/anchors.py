"""Anchor points and the flat prediction layout shared by the head, the loss and post-processing.

DetectHead returns one tensor per level, shape (B, 4 * reg_max + nc, H_l, W_l), levels ordered by
stride (8, 16, 32). `flatten_predictions` turns them into
  box_dist (B, N, 4 * reg_max)  -- DFL logits for distances (left, top, right, bottom) in stride units
  cls_logits (B, N, nc)
with N = sum(H_l * W_l), and `make_anchors` gives the matching anchor centres (N, 2) in input
pixels and strides (N, 1).
"""

from __future__ import annotations

import torch
from torch import Tensor


def make_anchors(feats: list[Tensor], strides: list[int], offset: float = 0.5) -> tuple[Tensor, Tensor]:
    points, stride_list = [], []
    for f, s in zip(feats, strides, strict=True):
        h, w = f.shape[-2:]
        sx = (torch.arange(w, device=f.device, dtype=torch.float32) + offset) * s
        sy = (torch.arange(h, device=f.device, dtype=torch.float32) + offset) * s
        yy, xx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((xx, yy), -1).reshape(-1, 2))
        stride_list.append(torch.full((h * w, 1), float(s), device=f.device))
    return torch.cat(points), torch.cat(stride_list)


def flatten_predictions(feats: list[Tensor], reg_max: int, nc: int) -> tuple[Tensor, Tensor]:
    b = feats[0].shape[0]
    flat = torch.cat([f.reshape(b, 4 * reg_max + nc, -1) for f in feats], dim=2).permute(0, 2, 1)
    return flat[..., : 4 * reg_max], flat[..., 4 * reg_max :]


def dfl_decode(box_dist: Tensor, reg_max: int) -> Tensor:
    """Expected distance per side (in stride units) from DFL logits: (..., 4 * reg_max) -> (..., 4)."""
    shape = box_dist.shape[:-1]
    prob = box_dist.reshape(*shape, 4, reg_max).float().softmax(-1)
    proj = torch.arange(reg_max, device=box_dist.device, dtype=prob.dtype)
    return prob @ proj


def dist_to_box(dist: Tensor, points: Tensor) -> Tensor:
    """(l, t, r, b) distances in pixels + anchor points -> xyxy boxes."""
    lt, rb = dist[..., :2], dist[..., 2:]
    return torch.cat((points - lt, points + rb), -1)


def box_to_dist(boxes: Tensor, points: Tensor, max_dist: float) -> Tensor:
    """xyxy boxes + anchor points -> (l, t, r, b) distances, clamped to [0, max_dist]."""
    lt = points - boxes[..., :2]
    rb = boxes[..., 2:] - points
    return torch.cat((lt, rb), -1).clamp_(0, max_dist)
