"""Assigner, detection loss (BCE + CIoU + DFL), view loss, and a tiny overfit run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou, complete_box_iou_loss

from medmtl.config import LossConfig
from medmtl.evaluation.postprocess import postprocess
from medmtl.losses import DetectionLoss, TaskAlignedAssigner, ViewLoss, dfl_loss, pairwise_iou
from medmtl.models.anchors import dfl_decode, dist_to_box, flatten_predictions, make_anchors


def _assign(points, pd_boxes, gt_boxes, gt_labels, box_mask=None, nc=4, topk=10, scores=None):
    n, m = points.shape[0], gt_boxes.shape[0]
    pd_scores = scores if scores is not None else torch.full((1, n, nc), 0.5)
    box_mask = torch.ones(1, m, dtype=torch.bool) if box_mask is None else box_mask
    return TaskAlignedAssigner(nc, topk=topk)(
        pd_scores, pd_boxes[None], points, gt_labels[None], gt_boxes[None], box_mask
    )


# --- assigner -------------------------------------------------------------------------------


def test_anchor_inside_one_gt_gets_it() -> None:
    points = torch.tensor([[5.0, 5.0], [30.0, 30.0]])
    pd = torch.tensor([[0.0, 0.0, 10.0, 10.0], [25.0, 25.0, 35.0, 35.0]])
    gt = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
    a = _assign(points, pd, gt, torch.tensor([2]))
    assert a.fg_mask.tolist() == [[True, False]]
    assert a.labels[0, 0].item() == 2
    torch.testing.assert_close(a.boxes[0, 0], gt[0])
    # single positive: its soft target is normalised to the GT's max IoU (0.25 here)
    torch.testing.assert_close(a.scores[0, 0], torch.tensor([0.0, 0.0, 0.25, 0.0]))
    assert a.scores[0, 1].abs().sum() == 0


@pytest.mark.parametrize(("pred", "expected"), [([0.0, 0.0, 18.0, 18.0], 0), ([6.0, 6.0, 38.0, 38.0], 1)])
def test_anchor_in_two_gts_keeps_highest_iou(pred: list[float], expected: int) -> None:
    points = torch.tensor([[10.0, 10.0]])
    gt = torch.tensor([[0.0, 0.0, 20.0, 20.0], [5.0, 5.0, 40.0, 40.0]])
    a = _assign(points, torch.tensor([pred]), gt, torch.tensor([1, 3]))
    assert a.fg_mask.item()
    assert a.gt_idx.item() == expected
    assert a.labels.item() == [1, 3][expected]
    torch.testing.assert_close(a.boxes[0, 0], gt[expected])


def test_topk_respected_and_soft_target_normalised() -> None:
    g = torch.Generator().manual_seed(0)
    feat = torch.zeros(1, 1, 8, 8)
    points, _ = make_anchors([feat], [8])  # 64 anchors, all inside the GT below
    gt = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    wh = torch.rand(64, 2, generator=g) * 40 + 4
    pd = torch.cat((points - wh / 2, points + wh / 2), -1)
    scores = torch.rand(1, 64, 4, generator=g)
    a = _assign(points, pd, gt, torch.tensor([1]), topk=5, scores=scores)
    assert int(a.fg_mask.sum()) == 5
    iou = box_iou(gt, pd)[0]
    metric = scores[0, :, 1].pow(0.5) * iou.pow(6.0)
    expected = set(metric.topk(5).indices.tolist())
    assert set(a.fg_mask[0].nonzero().flatten().tolist()) == expected
    # max soft target of the GT = max IoU among its positives; order follows the metric
    pos = a.fg_mask[0]
    torch.testing.assert_close(a.scores[0, pos, 1].max(), iou[pos].max())
    torch.testing.assert_close(a.scores[0, pos, 1], metric[pos] * iou[pos].max() / metric[pos].max())


def test_no_gt_all_background() -> None:
    points = torch.tensor([[5.0, 5.0], [30.0, 30.0]])
    pd = torch.tensor([[0.0, 0.0, 10.0, 10.0], [25.0, 25.0, 35.0, 35.0]])
    a = _assign(points, pd, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert not a.fg_mask.any() and a.scores.abs().sum() == 0
    # GT slots present but all padding
    gt = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    a = _assign(points, pd, gt, torch.tensor([1]), box_mask=torch.tensor([[False]]))
    assert not a.fg_mask.any() and a.scores.abs().sum() == 0


def test_padded_gts_ignored() -> None:
    points = torch.tensor([[5.0, 5.0], [30.0, 30.0]])
    pd = torch.tensor([[0.0, 0.0, 10.0, 10.0], [25.0, 25.0, 35.0, 35.0]])
    gt = torch.tensor([[0.0, 0.0, 20.0, 20.0], [20.0, 20.0, 40.0, 40.0]])
    a = _assign(points, pd, gt, torch.tensor([1, 2]), box_mask=torch.tensor([[True, False]]))
    assert a.fg_mask.tolist() == [[True, False]]


def test_pairwise_iou_matches_torchvision() -> None:
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(2, 7, 2, generator=g) * 50
    boxes = torch.cat((xy, xy + torch.rand(2, 7, 2, generator=g) * 30 + 1), -1)
    out = pairwise_iou(boxes[:, :3], boxes)
    for i in range(2):
        torch.testing.assert_close(out[i], box_iou(boxes[i, :3], boxes[i]))


# --- DFL ------------------------------------------------------------------------------------


def test_dfl_hand_computed() -> None:
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0])
    lse = math.log(sum(math.exp(v) for v in (0.0, 1.0, 2.0, 3.0)))
    expected = -(0.75 * (1.0 - lse) + 0.25 * (2.0 - lse))
    assert dfl_loss(logits, torch.tensor(1.25)).item() == pytest.approx(expected, rel=1e-6)


def test_dfl_minimal_on_right_bins() -> None:
    target = torch.tensor(2.3)
    best = torch.log(torch.tensor([1e-12, 1e-12, 0.7, 0.3, 1e-12]))
    entropy = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    assert dfl_loss(best, target).item() == pytest.approx(entropy, rel=1e-4)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        other = best + torch.randn(5, generator=g)
        # the minimum up to float32 rounding, relative to the loss (DFL >= 0; one draw here is
        # only 7e-7 above it)
        assert dfl_loss(other, target) >= dfl_loss(best, target) * (1 - 1e-5)
    # the DFL-decoded expectation of the optimum is the target
    assert dfl_decode(best.repeat(4), 5)[0].item() == pytest.approx(2.3, abs=1e-4)


# --- detection loss ---------------------------------------------------------------------------


def _single_level_case(seed: int = 0) -> tuple[list[Tensor], dict]:
    """16x16 input, one stride-8 level (anchors (4,4), (12,4), (4,12), (12,12)), reg_max 4, nc 3;
    the GT contains only the anchor (4, 4)."""
    g = torch.Generator().manual_seed(seed)
    preds = [torch.randn(1, 4 * 4 + 3, 2, 2, generator=g)]
    batch = {
        "boxes": torch.tensor([[[1.0, 1.0, 7.0, 9.0]]]),
        "box_classes": torch.tensor([[2]]),
        "box_mask": torch.tensor([[True]]),
        "det_mask": torch.tensor([True]),
    }
    return preds, batch


def test_detection_terms_match_hand_computation() -> None:
    cfg = LossConfig()
    preds, batch = _single_level_case()
    total, parts = DetectionLoss(3, 4, [8], cfg)(preds, batch)
    box_dist, cls_logits = flatten_predictions(preds, 4, 3)
    points, stride = make_anchors(preds, [8])
    pred = dist_to_box(dfl_decode(box_dist, 4) * stride, points)[0, 0]
    gt = batch["boxes"][0, 0]
    iou = box_iou(pred[None], gt[None])[0, 0]  # single positive -> target score = IoU, tss = 1
    ciou = complete_box_iou_loss(pred, gt)
    torch.testing.assert_close(parts["box"], cfg.box * ciou * iou)
    t_dist = torch.tensor([3.0, 3.0, 3.0, 5.0]) / 8  # (l, t, r, b) of the GT from (4, 4)
    dfl = dfl_loss(box_dist[0, 0].view(4, 4), t_dist).mean()
    torch.testing.assert_close(parts["dfl"], cfg.dfl * dfl * iou)
    target = torch.zeros(4, 3)
    target[0, 2] = iou
    bce = F.binary_cross_entropy_with_logits(cls_logits[0], target, reduction="sum")
    torch.testing.assert_close(parts["cls"], cfg.cls * bce)
    torch.testing.assert_close(total, parts["box"] + parts["dfl"] + parts["cls"])


def test_detection_loss_masked_and_batch_size_independent() -> None:
    loss_fn = DetectionLoss(3, 4, [8], LossConfig())
    preds, batch = _single_level_case()
    ref, _ = loss_fn(preds, batch)
    junk = torch.randn_like(preds[0])
    two = {k: torch.cat((v, v)) for k, v in batch.items()}
    dup, _ = loss_fn([torch.cat((preds[0], preds[0]))], two)
    torch.testing.assert_close(dup, ref)
    two["det_mask"] = torch.tensor([True, False])  # second image: no detection labels
    masked, _ = loss_fn([torch.cat((preds[0], junk))], two)
    torch.testing.assert_close(masked, ref)


def test_detection_loss_zero_when_no_det_labels() -> None:
    preds, batch = _single_level_case()
    preds = [p.requires_grad_() for p in preds]
    batch["det_mask"] = torch.tensor([False])
    total, parts = DetectionLoss(3, 4, [8], LossConfig())(preds, batch)
    assert total.item() == 0.0 and all(v.item() == 0.0 for v in parts.values())
    assert not any(v.requires_grad for v in parts.values())
    total.backward()
    assert preds[0].grad is not None and preds[0].grad.abs().sum() == 0


def test_detection_loss_under_autocast() -> None:
    preds, batch = _single_level_case()
    ref, _ = DetectionLoss(3, 4, [8], LossConfig())(preds, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = DetectionLoss(3, 4, [8], LossConfig())([preds[0].bfloat16()], batch)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05)


# --- view loss --------------------------------------------------------------------------------


def test_view_loss_mask_smoothing_weights() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=g)
    view = torch.tensor([0, -1, 2, 1, -1, 2])
    mask = view >= 0
    plain = ViewLoss(3, LossConfig())(logits, view, mask)
    torch.testing.assert_close(plain, F.cross_entropy(logits[mask], view[mask]))
    cfg = LossConfig(label_smoothing=0.1, view_class_weights=[1.0, 2.0, 0.5])
    out = ViewLoss(3, cfg)(logits, view, mask)
    ref = F.cross_entropy(logits[mask], view[mask], weight=torch.tensor([1.0, 2.0, 0.5]),
                          label_smoothing=0.1)
    torch.testing.assert_close(out, ref)
    # the trainer's sync-free path (presence known on the host) is the same weighted mean
    for c, r in ((LossConfig(), F.cross_entropy(logits[mask], view[mask])), (cfg, ref)):
        torch.testing.assert_close(ViewLoss(3, c)(logits, view, mask, present=True), r)
    assert ViewLoss(3, cfg)(logits, view, torch.zeros(6, dtype=torch.bool)) is None
    with pytest.raises(ValueError):
        ViewLoss(4, cfg)


# --- overfit ----------------------------------------------------------------------------------


class _TinyDet(nn.Module):
    def __init__(self, nc: int, reg_max: int, c: int = 16) -> None:
        super().__init__()

        def conv(ci: int, co: int, s: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(ci, co, 3, s, 1), nn.BatchNorm2d(co), nn.SiLU())

        self.p8 = nn.Sequential(conv(3, 16, 2), conv(16, c, 2), conv(c, c, 2), conv(c, c, 1))
        self.p16 = nn.Sequential(conv(c, c, 2), conv(c, c, 1))
        self.p32 = nn.Sequential(conv(c, c, 2), conv(c, c, 1))
        self.heads = nn.ModuleList(nn.Conv2d(c, 4 * reg_max + nc, 1) for _ in range(3))
        for h in self.heads:
            nn.init.zeros_(h.bias)
            nn.init.constant_(h.bias[4 * reg_max:], -4.0)

    def forward(self, x: Tensor) -> list[Tensor]:
        f8 = self.p8(x)
        f16 = self.p16(f8)
        f32 = self.p32(f16)
        return [h(f) for h, f in zip(self.heads, (f8, f16, f32), strict=True)]


def test_overfit_tiny_head(one_thread: None) -> None:
    torch.manual_seed(0)
    nc, reg_max, strides = 4, 8, [8, 16, 32]
    boxes = torch.tensor([[[8.0, 8.0, 40.0, 32.0], [36.0, 36.0, 60.0, 60.0]],
                          [[16.0, 20.0, 48.0, 56.0], [0.0, 0.0, 0.0, 0.0]]])
    classes = torch.tensor([[1, 3], [0, 0]])
    mask = torch.tensor([[True, True], [True, False]])
    images = torch.rand(2, 3, 64, 64) * 0.3
    colours = torch.tensor([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.2, 1.0], [1.0, 1.0, 0.2]])
    for i in range(2):
        for (x1, y1, x2, y2), c, ok in zip(boxes[i].int().tolist(), classes[i], mask[i], strict=True):
            if ok:
                images[i, :, y1:y2, x1:x2] = colours[c][:, None, None]
    batch = {"boxes": boxes, "box_classes": classes, "box_mask": mask,
             "det_mask": torch.tensor([True, True])}
    model = _TinyDet(nc, reg_max)
    loss_fn = DetectionLoss(nc, reg_max, strides, LossConfig())
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(150):
        loss, _ = loss_fn(model(images), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], (losses[0], losses[-1])
    model.eval()
    with torch.no_grad():
        dets = postprocess(model(images), strides, reg_max, nc, conf=0.1, iou=0.6)
    for i in range(2):
        for gt, c, ok in zip(boxes[i], classes[i], mask[i], strict=True):
            if not ok:
                continue
            d = dets[i]
            assert len(d), "no detections"
            ious = box_iou(gt[None], d[:, :4])[0]
            near = ious > 0.5
            assert near.any(), f"GT {gt.tolist()} not found: {d.tolist()}"
            top = d[near][d[near, 4].argmax()]  # best-scoring detection on this GT
            assert int(top[5]) == int(c)
            assert box_iou(gt[None], top[None, :4]).item() > 0.7
