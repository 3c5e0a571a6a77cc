"""Task-aligned label assignment (TOOD, Feng et al. 2021), batched over padded ground truths.

For every ground-truth box the candidates are the anchors whose centres lie strictly inside it.
Each candidate gets the alignment metric ``t = s**alpha * u**beta`` (``s``: predicted probability
of the GT class at that anchor, ``u``: IoU of the anchor's predicted box with the GT); the ``topk``
candidates per GT become its positives. An anchor that ends up positive for several GTs keeps the
one its predicted box overlaps most. The soft class target of a positive is ``t`` rescaled per GT
so that the largest target of a GT equals the largest IoU among that GT's positives.

Everything is vectorised over (B, M, N) (images, padded GTs, anchors) and free of host syncs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Assignment(NamedTuple):
    labels: Tensor  # (B, N) int64, class of the assigned GT (0 for background; see fg_mask)
    boxes: Tensor  # (B, N, 4) float32 xyxy pixels of the assigned GT (meaningless for background)
    scores: Tensor  # (B, N, nc) float32 soft class targets, zero for background
    fg_mask: Tensor  # (B, N) bool, anchor is a positive
    gt_idx: Tensor  # (B, N) int64, index of the assigned GT in the padded M axis


def pairwise_iou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """Batched IoU of xyxy boxes: a (B, M, 4), b (B, N, 4) -> (B, M, N)."""
    lt = torch.maximum(a[:, :, None, :2], b[:, None, :, :2])
    rb = torch.minimum(a[:, :, None, 2:], b[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, :, None] + area_b[:, None, :] - inter + eps)


def points_in_boxes(points: Tensor, boxes: Tensor, eps: float = 1e-9) -> Tensor:
    """Anchor centres strictly inside boxes: points (N, 2), boxes (B, M, 4) -> bool (B, M, N)."""
    p = points[None, None]  # (1, 1, N, 2)
    lt = p - boxes[:, :, None, :2]
    rb = boxes[:, :, None, 2:] - p
    return torch.cat((lt, rb), -1).amin(-1) > eps


class TaskAlignedAssigner:
    def __init__(
        self, num_classes: int, topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
        eps: float = 1e-9,
    ) -> None:
        self.num_classes = num_classes
        self.topk = topk
        self.alpha = alpha
        self.beta = beta
        self.eps = eps

    @torch.no_grad()
    def __call__(
        self,
        pd_scores: Tensor,
        pd_boxes: Tensor,
        anchor_points: Tensor,
        gt_labels: Tensor,
        gt_boxes: Tensor,
        box_mask: Tensor,
    ) -> Assignment:
        """Assign targets.

        Args:
            pd_scores: (B, N, nc) predicted class probabilities (after sigmoid).
            pd_boxes: (B, N, 4) predicted xyxy boxes in input pixels.
            anchor_points: (N, 2) anchor centres in input pixels.
            gt_labels: (B, M) int GT classes (padded).
            gt_boxes: (B, M, 4) xyxy GT boxes in input pixels (padded).
            box_mask: (B, M) bool, True for real GTs.
        """
        b, n, nc = pd_scores.shape
        m = gt_boxes.shape[1]
        device = pd_scores.device
        pd_scores = pd_scores.float()
        pd_boxes = pd_boxes.float()
        gt_boxes = gt_boxes.float()
        if m == 0:  # static shape: no GT slot in the whole batch
            return Assignment(
                torch.zeros(b, n, dtype=torch.long, device=device),
                torch.zeros(b, n, 4, device=device),
                torch.zeros(b, n, nc, device=device),
                torch.zeros(b, n, dtype=torch.bool, device=device),
                torch.zeros(b, n, dtype=torch.long, device=device),
            )
        labels = gt_labels.long().clamp(0, nc - 1)
        box_mask = box_mask.bool()

        # candidates: anchor centres inside a real GT
        cand = points_in_boxes(anchor_points.float(), gt_boxes) & box_mask[:, :, None]  # (B, M, N)
        overlaps = pairwise_iou(gt_boxes, pd_boxes) * cand  # (B, M, N)
        cls_prob = pd_scores.permute(0, 2, 1).gather(1, labels[:, :, None].expand(-1, -1, n))
        align = cls_prob.pow(self.alpha) * overlaps.pow(self.beta) * cand

        # top-k candidates per GT (non-candidates have metric 0 and are removed by `cand`)
        k = min(self.topk, n)
        top_idx = align.topk(k, dim=-1).indices  # (B, M, k)
        in_topk = torch.zeros_like(cand).scatter_(-1, top_idx, True)
        mask_pos = in_topk & cand  # (B, M, N)

        # an anchor positive for several GTs keeps the GT with the highest IoU
        fg = mask_pos.any(1)  # (B, N)
        gt_idx = overlaps.masked_fill(~mask_pos, -1.0).argmax(1)  # (B, N)
        mask_pos = F.one_hot(gt_idx, m).permute(0, 2, 1).bool() & fg[:, None, :]

        t_labels = labels.gather(1, gt_idx)  # (B, N)
        t_boxes = gt_boxes.gather(1, gt_idx[..., None].expand(-1, -1, 4))  # (B, N, 4)

        # soft targets: per GT, rescale t so that its max equals the max IoU of its positives
        align = align * mask_pos
        max_align = align.amax(-1, keepdim=True)  # (B, M, 1)
        max_iou = (overlaps * mask_pos).amax(-1, keepdim=True)
        # (a clamp, not "+ eps": alignment metrics are tiny early in training, beta = 6)
        norm = (align * max_iou / max_align.clamp(min=1e-30)).amax(1)  # (B, N)
        t_scores = F.one_hot(t_labels, nc).float() * (norm * fg)[..., None]
        return Assignment(t_labels, t_boxes, t_scores, fg, gt_idx)
