"""Decoding hand-built head outputs, NMS, and traceability of decode_predictions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medmtl.evaluation.postprocess import decode_predictions, postprocess

STRIDES = [8, 16, 32]
REG_MAX = 16
NC = 4
S = 64  # input size -> grids 8x8, 4x4, 2x2


def _empty_preds(b: int = 1) -> list[Tensor]:
    """Head outputs whose class logits are all very low (nothing above any sane conf)."""
    preds = []
    for s in STRIDES:
        p = torch.zeros(b, 4 * REG_MAX + NC, S // s, S // s)
        p[:, 4 * REG_MAX:] = -20.0
        preds.append(p)
    return preds


def _put(preds: list[Tensor], level: int, gx: int, gy: int, bins: tuple[int, int, int, int],
         cls: int, logit: float, img: int = 0) -> None:
    """Make the anchor (gx, gy) of `level` predict distances `bins` (stride units) exactly and
    class `cls` with the given logit."""
    p = preds[level]
    dist = torch.full((4, REG_MAX), -1e4)
    for side, k in enumerate(bins):
        dist[side, k] = 0.0
    p[img, : 4 * REG_MAX, gy, gx] = dist.flatten()
    p[img, 4 * REG_MAX + cls, gy, gx] = logit


def test_decode_and_nms_hand_built() -> None:
    preds = _empty_preds()
    # level 0 (stride 8): anchor (3, 2) -> centre (28, 20); (l,t,r,b) = (2,1,3,2)*8 -> [12,12,52,36]
    _put(preds, 0, 3, 2, (2, 1, 3, 2), cls=2, logit=5.0)
    # duplicate of the same box from the neighbour anchor (4, 2), centre (36, 20), lower score
    _put(preds, 0, 4, 2, (3, 1, 2, 2), cls=2, logit=2.0)
    # level 1 (stride 16): anchor (1, 1) -> centre (24, 24); (1,1,1,1)*16 -> [8, 8, 40, 40]
    _put(preds, 1, 1, 1, (1, 1, 1, 1), cls=0, logit=3.0)

    boxes, scores = decode_predictions(preds, STRIDES, REG_MAX, NC)
    assert boxes.shape == (1, 64 + 16 + 4, 4) and scores.shape == (1, 84, NC)
    # exact: one-hot bins (exp(-1e4) is 0), integer distances, power-of-two strides
    assert torch.equal(boxes[0, 2 * 8 + 3], torch.tensor([12.0, 12.0, 52.0, 36.0]))
    assert torch.equal(boxes[0, 64 + 1 * 4 + 1], torch.tensor([8.0, 8.0, 40.0, 40.0]))

    (det,) = postprocess(preds, STRIDES, REG_MAX, NC, conf=0.001, iou=0.6)
    expected = torch.tensor([
        [12.0, 12.0, 52.0, 36.0, torch.sigmoid(torch.tensor(5.0)).item(), 2.0],
        [8.0, 8.0, 40.0, 40.0, torch.sigmoid(torch.tensor(3.0)).item(), 0.0],
    ])
    torch.testing.assert_close(det, expected, rtol=0, atol=1e-6)


def test_nms_is_class_aware_and_multi_label() -> None:
    preds = _empty_preds()
    _put(preds, 0, 3, 2, (2, 1, 3, 2), cls=2, logit=5.0)
    _put(preds, 0, 4, 2, (3, 1, 2, 2), cls=1, logit=2.0)  # same box, other class: kept
    (det,) = postprocess(preds, STRIDES, REG_MAX, NC)
    assert det[:, 5].tolist() == [2.0, 1.0]
    # multi_label: one anchor high in two classes -> two detections of the same box
    preds = _empty_preds()
    _put(preds, 0, 3, 2, (2, 1, 3, 2), cls=2, logit=5.0)
    preds[0][0, 4 * REG_MAX + 3, 2, 3] = 4.0
    (single,) = postprocess(preds, STRIDES, REG_MAX, NC, multi_label=False)
    (multi,) = postprocess(preds, STRIDES, REG_MAX, NC, multi_label=True)
    assert single[:, 5].tolist() == [2.0]
    assert multi[:, 5].tolist() == [2.0, 3.0]
    assert torch.equal(multi[0, :4], multi[1, :4])


def test_conf_max_det_batch_and_clipping() -> None:
    preds = _empty_preds(b=2)
    for gx in range(8):  # 8 adjacent 8x8 boxes on row 0 of image 1 (IoU 0), rising scores
        _put(preds, 0, gx, 0, (0, 0, 0, 0), cls=1, logit=float(gx) - 4.0, img=1)
        for side in range(4):  # equal mass on bins 0 and 1 -> 0.5 stride = 4 px per side
            preds[0][1, side * REG_MAX + 1, 0, gx] = 0.0
    # a box sticking out of the image is clipped
    _put(preds, 2, 1, 1, (3, 3, 3, 3), cls=0, logit=6.0, img=0)  # centre (48, 48) +- 96
    out = out_ref = postprocess(preds, STRIDES, REG_MAX, NC, conf=0.3, max_det=3)
    assert len(out) == 2
    torch.testing.assert_close(out[0][:, :4], torch.tensor([[0.0, 0.0, 64.0, 64.0]]))
    assert out[1].shape == (3, 6)
    torch.testing.assert_close(out[1][:, :4], torch.tensor(
        [[56.0, 0.0, 64.0, 8.0], [48.0, 0.0, 56.0, 8.0], [40.0, 0.0, 48.0, 8.0]]))
    assert out[1][:, 4].tolist() == sorted(out[1][:, 4].tolist(), reverse=True)
    assert (out[1][:, 4] > 0.3).all()
    out = postprocess(preds, STRIDES, REG_MAX, NC, conf=0.999)
    assert out[1].shape == (0, 6) and out[0].shape == (0, 6)
    # num_classes inferred from the channels when omitted
    inferred = postprocess(preds, STRIDES, REG_MAX, conf=0.3, max_det=3)
    assert all(torch.equal(a, b) for a, b in zip(inferred, out_ref, strict=True))


def test_decode_predictions_traceable() -> None:
    class Decode(nn.Module):
        def forward(self, a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
            return decode_predictions([a, b, c], STRIDES, REG_MAX, NC)

    g = torch.Generator().manual_seed(0)
    inputs = tuple(torch.randn(1, 4 * REG_MAX + NC, S // s, S // s, generator=g) for s in STRIDES)
    exported = torch.export.export(Decode(), inputs).module()  # what the ONNX exporter builds on
    other = tuple(torch.randn_like(x) * 3 for x in inputs)
    for got, ref in zip(exported(*other), decode_predictions(list(other), STRIDES, REG_MAX, NC),
                        strict=True):
        torch.testing.assert_close(got, ref)
