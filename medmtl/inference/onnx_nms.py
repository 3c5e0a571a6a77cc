"""NMS inside the exported graph (``medmtl export --nms``): the ONNX NonMaxSuppression operator
after the box decoding, so that a deployer outside Python gets final boxes.

The graph takes two more inputs, ``conf`` and ``iou`` (float32, shape (1,)), and replaces
``boxes`` / ``scores`` by one output ``detections``: float32 (K, 7) rows ``[batch_index, x1, y1,
x2, y2, score, class]``, boxes in letterboxed input pixels, sorted by image then decreasing score.
The rules are those of `medmtl.evaluation.postprocess.select_detections` (what ``medmtl predict``
does): boxes clipped to the input, each anchor scored by its best class only, candidates with a
score ``> conf``, class-aware NMS at IoU ``iou`` (NonMaxSuppression per class, on scores that are
zero outside each anchor's best class), at most ``max_det`` per image (fixed at export). One
difference: ``select_detections`` keeps only the 3000 best candidates before NMS and the graph
keeps all, which changes the result only when more than 3000 anchors of one image score above
``conf``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import nms

DETECTIONS = "detections"


class _NonMaxSuppression(torch.autograd.Function):
    """(B, N, 4) boxes, (B, C, N) scores -> (K, 3) int64 ``[batch, class, box]``: eager torchvision
    NMS when traced, the ONNX NonMaxSuppression operator in the graph."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_out: int, iou: Tensor,  # type: ignore[override]
                conf: Tensor) -> Tensor:
        rows = []
        for b in range(boxes.shape[0]):
            for c in range(scores.shape[1]):
                cand = (scores[b, c] > conf).nonzero().flatten()
                keep = cand[nms(boxes[b, cand], scores[b, c, cand], float(iou))][:max_out]
                rows.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, c), keep], 1))
        return torch.cat(rows) if rows else torch.zeros((0, 3), dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_out, iou, conf):  # type: ignore[no-untyped-def]
        m = g.op("Constant", value_t=torch.tensor([max_out], dtype=torch.int64))
        return g.op("NonMaxSuppression", boxes, scores, m, iou, conf)


class NMSHead(nn.Module):
    """Decoded ``boxes`` (B, N, 4), ``scores`` (B, N, nc) + the input -> ``detections`` (K, 7)."""

    def __init__(self, max_det: int) -> None:
        super().__init__()
        self.max_det = int(max_det)

    def forward(self, images: Tensor, boxes: Tensor, scores: Tensor, conf: Tensor,
                iou: Tensor) -> Tensor:
        shape = torch._shape_as_tensor(images)  # traced: dynamic H, W stay dynamic
        w, h = shape[3].float(), shape[2].float()
        lim = torch.stack([w, h, w, h])
        boxes = torch.minimum(boxes.clamp(min=0), lim)
        best, cls = scores.max(-1)  # (B, N): each anchor competes with its best class only
        masked = torch.zeros_like(scores).scatter(-1, cls.unsqueeze(-1), best.unsqueeze(-1))
        sel = _NonMaxSuppression.apply(boxes, masked.transpose(1, 2).contiguous(), self.max_det,
                                       iou, conf)
        bi, ci, ai = sel[:, 0], sel[:, 1], sel[:, 2]
        score = masked[bi, ai, ci]
        det = torch.cat([bi.unsqueeze(1).float(), boxes[bi, ai], score.unsqueeze(1),
                         ci.unsqueeze(1).float()], 1)
        order = torch.argsort(bi.float() * 2.0 - score)  # by image, then decreasing score
        det, bs = det[order], bi[order]
        pos = torch.ones_like(bs).cumsum(0) - 1
        rank = pos - (bs.unsqueeze(0) < bs.unsqueeze(1)).sum(1)  # position within its image
        return det[rank < self.max_det]
