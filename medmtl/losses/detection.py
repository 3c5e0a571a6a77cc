"""Detection loss: task-aligned assignment + BCE (soft targets) + CIoU + DFL.

Normalisation (independent of batch size): every term is computed per image and divided by that
image's sum of soft class targets (clamped to >= 1), as in GFL/TOOD-style detectors but per image
instead of per batch; the returned scalar is the mean over the images whose ``det_mask`` is True
of ``box * ciou + dfl * dfl + cls * bce`` (gains from ``LossConfig``). Images without detection
labels are weighted by zero instead of being indexed out, so the loss never syncs with the host
and, when no image has detection labels, it is an exact zero whose backward gives zero gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import complete_box_iou_loss

from medmtl.config import LossConfig
from medmtl.distributed import LOCAL, Comm
from medmtl.losses.assigner import TaskAlignedAssigner
from medmtl.models.anchors import (
    box_to_dist,
    dfl_decode,
    dist_to_box,
    flatten_predictions,
    make_anchors,
)


def dfl_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Distribution focal loss (Li et al. 2020, GFL).

    logits (..., reg_max) over integer bins, target (...) continuous in [0, reg_max - 1) ->
    (...): cross entropy on the two bins bracketing the target, weighted linearly by proximity.
    """
    # NaN targets (from NaN predictions on background rows) give a NaN loss that the trainer's
    # non-finite guard counts, not an out-of-range index
    left = target.nan_to_num(0.0).floor().long().clamp(0, logits.shape[-1] - 2)
    right = left + 1
    w_left = right.to(target.dtype) - target
    w_right = 1.0 - w_left
    logp = logits.float().log_softmax(-1)
    lp_left = logp.gather(-1, left[..., None]).squeeze(-1)
    lp_right = logp.gather(-1, right[..., None]).squeeze(-1)
    return -(lp_left * w_left + lp_right * w_right)


class DetectionLoss:
    def __init__(
        self, num_classes: int, reg_max: int, strides: Sequence[int], cfg: LossConfig | None = None
    ) -> None:
        self.nc = num_classes
        self.reg_max = reg_max
        self.strides = list(strides)
        self.cfg = cfg if cfg is not None else LossConfig()
        # the anchors the last call assigned (B, N) bool, detached: where localisation
        # distillation reads the student's boxes (medmtl/losses/distill.py)
        self.last_fg: Tensor | None = None
        self.assigner = TaskAlignedAssigner(
            num_classes, self.cfg.assigner_topk, self.cfg.assigner_alpha, self.cfg.assigner_beta
        )

    def __call__(self, preds: list[Tensor], batch: dict, comm: Comm = LOCAL
                 ) -> tuple[Tensor, dict[str, Tensor]]:
        """preds: per-level head outputs (B, 4*reg_max + nc, H, W); batch: the collated dict.

        Returns (scalar loss, {"box", "dfl", "cls"}: detached scalar tensors, gains applied, that
        sum to the loss). Under data parallelism (`comm`) the mean runs over the labelled images of
        the *global* batch, so the average of the ranks' losses is the global batch's loss; every
        rank must then call it (a rank without labelled images returns a graph-connected zero).
        """
        with torch.autocast(device_type=preds[0].device.type, enabled=False):
            return self._loss([p.float() for p in preds], batch, comm)

    def _loss(self, preds: list[Tensor], batch: dict, comm: Comm = LOCAL
              ) -> tuple[Tensor, dict[str, Tensor]]:
        device = preds[0].device
        r = self.reg_max
        box_dist, cls_logits = flatten_predictions(preds, r, self.nc)  # (B,N,4R), (B,N,nc)
        b, n, _ = box_dist.shape
        points, stride = make_anchors(preds, self.strides)  # (N, 2), (N, 1) pixels
        dist = dfl_decode(box_dist, r)  # (B, N, 4) stride units
        pred_boxes = dist_to_box(dist * stride, points)

        det_mask = batch["det_mask"].to(device=device, dtype=torch.bool)
        gt_boxes = batch["boxes"].to(device=device, dtype=torch.float32)
        gt_labels = batch["box_classes"].to(device=device, dtype=torch.long)
        box_mask = batch["box_mask"].to(device=device, dtype=torch.bool) & det_mask[:, None]

        a = self.assigner(
            cls_logits.detach().sigmoid(), pred_boxes.detach(), points, gt_labels, gt_boxes,
            box_mask,
        )
        self.last_fg = a.fg_mask.detach() & det_mask[:, None]
        tss = a.scores.sum((1, 2)).clamp(min=1.0)  # (B,) per-image normaliser
        weight = a.scores.sum(-1) * a.fg_mask  # (B, N) target score of positives

        # classification: BCE against soft targets, all anchors
        cls = F.binary_cross_entropy_with_logits(cls_logits, a.scores, reduction="none")
        cls = cls.sum((1, 2)) / tss

        # box: CIoU on positives. Computed on every anchor (no boolean indexing -> no host sync);
        # background rows get their own (detached) prediction as target and weight 0, and
        # predicted sides are kept > 0 so that CIoU's w/h ratios stay finite.
        safe_pred = dist_to_box(dist.clamp(min=1e-4) * stride, points)
        fg = a.fg_mask[..., None]
        target = torch.where(fg, a.boxes, safe_pred.detach())
        ciou = complete_box_iou_loss(safe_pred.reshape(-1, 4), target.reshape(-1, 4)).view(b, n)
        box = (ciou * weight).sum(1) / tss

        # DFL on positives, target distances in stride units
        t_dist = box_to_dist(target / stride, points / stride, r - 1 - 0.01)
        dfl = dfl_loss(box_dist.reshape(b, n, 4, r), t_dist).mean(-1)
        dfl = (dfl * weight).sum(1) / tss

        # mean over images with detection labels (exact zero, graph-connected, when none)
        labelled = comm.sum(det_mask.sum().float()).clamp(min=1) / comm.world_size
        img_w = det_mask.float() / labelled
        parts = {
            "box": (box * img_w).sum() * self.cfg.box,
            "dfl": (dfl * img_w).sum() * self.cfg.dfl,
            "cls": (cls * img_w).sum() * self.cfg.cls,
        }
        total = parts["box"] + parts["dfl"] + parts["cls"]
        return total, {k: v.detach() for k, v in parts.items()}
