"""Decode DetectHead outputs into boxes and scores, then class-aware NMS.

`decode_predictions` is pure tensor code (no data-dependent Python control flow) so that it can be
traced for ONNX export; `postprocess` adds the per-image filtering and NMS.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from medmtl.models.anchors import dfl_decode, dist_to_box, flatten_predictions, make_anchors

MAX_NMS_CANDIDATES = 3000  # top-scoring candidates per image that go into NMS


def decode_predictions(
    preds: list[Tensor], strides: Sequence[int], reg_max: int, num_classes: int
) -> tuple[Tensor, Tensor]:
    """Per-level head outputs -> boxes (B, N, 4) xyxy in input pixels, scores (B, N, nc) in [0, 1]."""
    preds = [p.float() for p in preds]
    box_dist, cls_logits = flatten_predictions(preds, reg_max, num_classes)
    points, stride = make_anchors(preds, list(strides))
    boxes = dist_to_box(dfl_decode(box_dist, reg_max) * stride, points)
    return boxes, cls_logits.sigmoid()


@torch.no_grad()
def postprocess(
    preds: list[Tensor],
    strides: Sequence[int],
    reg_max: int,
    num_classes: int | None = None,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 100,
    multi_label: bool = False,
    max_nms: int = MAX_NMS_CANDIDATES,
) -> list[Tensor]:
    """Detections per image: (K, 6) float32 ``[x1, y1, x2, y2, score, cls]`` in input (letterboxed)
    pixels, sorted by score, boxes clipped to the input size (level-0 grid * stride).

    ``multi_label``: an anchor may yield one detection per class above ``conf`` (better recall for
    mAP); otherwise only its best class. ``num_classes`` None: inferred from the channel count.
    """
    if num_classes is None:
        num_classes = preds[0].shape[1] - 4 * reg_max
    boxes, scores = decode_predictions(preds, strides, reg_max, num_classes)
    in_hw = (preds[0].shape[-2] * strides[0], preds[0].shape[-1] * strides[0])
    return select_detections(boxes, scores, in_hw, conf, iou, max_det, multi_label, max_nms)


@torch.no_grad()
def select_detections(
    boxes: Tensor,
    scores: Tensor,
    in_hw: tuple[int, int],
    conf: float = 0.25,
    iou: float = 0.6,
    max_det: int = 100,
    multi_label: bool = False,
    max_nms: int = MAX_NMS_CANDIDATES,
) -> list[Tensor]:
    """Decoded boxes (B, N, 4) + scores (B, N, nc) -> per image (K, 6) ``[x1, y1, x2, y2, score,
    cls]`` in input pixels: clip to ``in_hw``, candidates above ``conf``, top ``max_nms``,
    class-aware NMS, at most ``max_det`` by decreasing score. Shared by `postprocess` and the
    predictors (PyTorch or the ONNX graph's decoded outputs)."""
    boxes = boxes.float().clone()
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, in_hw[1])
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, in_hw[0])
    out: list[Tensor] = []
    for bx, sc in zip(boxes, scores.float(), strict=True):
        if multi_label:
            idx, cls = (sc > conf).nonzero(as_tuple=True)
            s = sc[idx, cls]
            bx = bx[idx]
        else:
            s, cls = sc.max(-1)
            keep = s > conf
            s, cls, bx = s[keep], cls[keep], bx[keep]
        if s.numel() > max_nms:
            top = s.topk(max_nms).indices
            s, cls, bx = s[top], cls[top], bx[top]
        keep = batched_nms(bx, s, cls, iou)[:max_det]  # sorted by decreasing score
        out.append(torch.cat((bx[keep], s[keep, None], cls[keep, None].float()), 1))
    return out
