"""Knowledge distillation from a frozen teacher: one scalar, the `distill` task of the balancer.

Terms (each >= 0 and 0 when the student's outputs equal the teacher's):

* view: T^2 KL(softmax(t / T) || softmax(s / T)) on the view logits, mean over the images
  (Hinton, Vinyals & Dean 2015; T = `distill_temperature`); every image counts, labelled or not.
* class scores: the Bernoulli KL divergence of the student's class sigmoids from the teacher's,
  summed over anchors and classes and divided per image by the teacher's score mass (the sum over
  anchors of its highest class probability, at least 1: about the number of objects it sees),
  mean over the images.
* boxes: localisation distillation (Zheng et al., "Localization Distillation for Dense Object
  Detection", CVPR 2022): T^2 KL of the teacher's DFL distributions of the four sides from the
  student's at temperature T = `distill_box_temperature`, averaged over the sides, at the anchors
  the student's task-aligned assigner made positive (`fg`, those of images with box labels),
  divided per image by the number of positives (at least 1), mean over the images.
* features (gain `distill_feature`, off at 0): mean squared error between the student's and the
  teacher's PAN neck outputs, averaged over the levels (feature imitation, FitNets, Romero et al.
  2015, applied to the neck as in detection distillation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from medmtl.config import LossConfig
from medmtl.models.anchors import flatten_predictions

_EPS = 1e-6


def softmax_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """T^2 KL(softmax(teacher/T) || softmax(student/T)) over the last dim -> (...)."""
    t = temperature
    log_p = F.log_softmax(teacher.float() / t, -1)
    log_q = F.log_softmax(student.float() / t, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1) * t * t


def bernoulli_kl(student_logits: Tensor, teacher_prob: Tensor) -> Tensor:
    """KL(Bernoulli(p_teacher) || Bernoulli(sigmoid(student))), elementwise."""
    p = teacher_prob.float().clamp(_EPS, 1 - _EPS)
    bce = F.binary_cross_entropy_with_logits(student_logits.float(), p, reduction="none")
    entropy = -(p * p.log() + (1 - p) * (1 - p).log())
    return (bce - entropy).clamp_min(0)


class DistillLoss:
    def __init__(self, num_classes: int, reg_max: int, cfg: LossConfig | None = None) -> None:
        self.nc, self.reg_max = num_classes, reg_max
        self.cfg = cfg if cfg is not None else LossConfig()
        self.parts: dict[str, Tensor] = {}  # the last call's terms, detached

    def __call__(self, student: Mapping[str, Any], teacher: Mapping[str, Any],
                 fg: Tensor | None = None) -> Tensor:
        """`student` / `teacher`: model outputs (`detect`, `classify`, and `neck`: the neck
        levels, with feature imitation). `fg` (B, N) bool: the student's assigned anchors."""
        parts: dict[str, Tensor] = {}
        if "classify" in student and "classify" in teacher:
            parts["view"] = softmax_kl(student["classify"], teacher["classify"],
                                       self.cfg.distill_temperature).mean()
        if "detect" in student and "detect" in teacher:
            parts.update(self._detect(student["detect"], teacher["detect"], fg))
        if self.cfg.distill_feature > 0 and student.get("neck") and teacher.get("neck"):
            parts["feature"] = self.cfg.distill_feature * self._features(student["neck"],
                                                                         teacher["neck"])
        if not parts:
            raise ValueError("distillation: the teacher and the student share no output")
        self.parts = {k: v.detach() for k, v in parts.items()}
        return torch.stack(list(parts.values())).sum()

    def _detect(self, s_preds: Sequence[Tensor], t_preds: Sequence[Tensor], fg: Tensor | None,
                ) -> dict[str, Tensor]:
        r = self.reg_max
        s_box, s_cls = flatten_predictions([p.float() for p in s_preds], r, self.nc)
        t_box, t_cls = flatten_predictions([p.float() for p in t_preds], r, self.nc)
        t_prob = t_cls.sigmoid()
        mass = t_prob.amax(-1).sum(-1).clamp_min(1.0)  # (B,)
        cls = (bernoulli_kl(s_cls, t_prob).sum((1, 2)) / mass).mean()
        b, n, _ = s_box.shape
        if fg is None:
            fg = torch.zeros(b, n, dtype=torch.bool, device=s_box.device)
        kl = softmax_kl(s_box.reshape(b, n, 4, r), t_box.reshape(b, n, 4, r),
                        self.cfg.distill_box_temperature).mean(-1)  # (B, N)
        w = fg.float()
        box = ((kl * w).sum(1) / w.sum(1).clamp_min(1.0)).mean()
        return {"cls": cls, "box": box}

    @staticmethod
    def _features(s_feats: Sequence[Tensor], t_feats: Sequence[Tensor]) -> Tensor:
        if len(s_feats) != len(t_feats) or any(a.shape != b.shape for a, b in
                                                zip(s_feats, t_feats, strict=True)):
            raise ValueError("distillation: feature imitation needs the teacher's neck of the "
                             "student's shape (the same --size)")
        return torch.stack([F.mse_loss(a.float(), b.float()) for a, b in
                            zip(s_feats, t_feats, strict=True)]).mean()


__all__ = ["DistillLoss", "bernoulli_kl", "softmax_kl"]
