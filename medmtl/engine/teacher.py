"""The frozen teacher of knowledge distillation (`--teacher RUN_DIR` or `DETECT_RUN,CLASSIFY_RUN`).

`Teacher(images, image_ids)` returns the teacher's outputs of a batch (`detect` levels,
`classify` logits, `neck` levels with feature imitation), computed under `no_grad` in eval mode
(BatchNorm running statistics, no dropout). With augmentation off (every `augment` value 0) a
training image is the same tensor at every epoch, so its outputs are cached once per image (on
the training device) and later epochs run no teacher forward; otherwise it runs batch by batch.
`NeckTap` captures a model's PAN neck outputs through a forward hook. `Distill` is the method
plug-in: the teacher, the student's neck tap and the distillation loss, a task of its own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from medmtl.config import DISTILL
from medmtl.engine.plugin_api import PLUGINS, MethodPlugin, TrainStep
from medmtl.engine.stages import check_compatible, load_source, teacher_dirs
from medmtl.errors import InputError
from medmtl.losses.distill import DistillLoss


class NeckTap:
    """The last output of `model.neck` (a forward hook)."""

    def __init__(self, model: nn.Module) -> None:
        self.last: list[Tensor] | None = None
        neck = getattr(model, "neck", None)
        if neck is None:
            raise InputError(f"feature imitation: arch {getattr(model, 'arch', '?')} has no "
                             "neck; set --distill-feature 0")
        neck.register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self.last = list(output)

    def take(self) -> list[Tensor] | None:
        out, self.last = self.last, None
        return out


def augmentation_off(aug: Any) -> bool:
    return all(float(v) == 0 for v in aug.model_dump().values())


class Teacher:
    def __init__(self, cfg: Any, names: list[str], cls_names: list[str], tasks: tuple[str, ...],
                 device: torch.device, channels_last: bool = False) -> None:
        self.models: list[tuple[nn.Module, tuple[str, ...]]] = []
        covered: set[str] = set()
        self.tap: NeckTap | None = None
        for d in teacher_dirs(cfg.teacher or ""):
            model, src_cfg, ck = load_source(d, "--teacher")
            check_compatible("--teacher", d, src_cfg, ck, cfg, names, cls_names, tasks)
            gives = tuple(t for t in model.tasks if t in tasks and t not in covered)
            if not gives:
                raise InputError(f"--teacher {d}: its tasks ({', '.join(model.tasks)}) add "
                                 "nothing to the teachers before it")
            covered |= set(gives)
            model = model.to(device).eval()
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            for p in model.parameters():
                p.requires_grad_(False)
            if "detect" in gives and cfg.loss.distill_feature > 0:
                self.tap = NeckTap(model)
            self.models.append((model, gives))
        missing = [t for t in tasks if t not in covered]
        if missing:  # e.g. a --task classify run as the only teacher of a joint student
            raise InputError(f"--teacher {cfg.teacher}: no teacher for {', '.join(missing)}: "
                             f"the teacher must have the tasks being distilled ("
                             f"{', '.join(tasks)}), and this one has "
                             f"{', '.join(sorted(covered)) or 'none of them'} only; give a dual "
                             "run, or DETECT_RUN,CLASSIFY_RUN")
        self.cache: dict[int, dict[str, Any]] | None = {} if augmentation_off(cfg.augment) \
            else None

    @torch.no_grad()
    def forward(self, images: Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for model, gives in self.models:
            o = model(images)
            out.update({t: o[t] for t in gives})
        if self.tap is not None:
            out["neck"] = self.tap.take()
        return out

    def __call__(self, images: Tensor, image_ids: list[int] | None = None) -> dict[str, Any]:
        if self.cache is None or image_ids is None:
            return self.forward(images)
        if not all(i in self.cache for i in image_ids):
            out = self.forward(images)
            for j, i in enumerate(image_ids):
                self.cache[i] = {k: [x[j] for x in v] if isinstance(v, list) else v[j]
                                 for k, v in out.items()}
            return out
        rows = [self.cache[i] for i in image_ids]
        return {k: [torch.stack([r[k][lvl] for r in rows]) for lvl in range(len(v))]
                if isinstance(v, list) else torch.stack([r[k] for r in rows])
                for k, v in rows[0].items()}


@PLUGINS.register("distill")
class Distill(MethodPlugin):
    """Knowledge distillation (`--teacher`, the `distill` preset): the frozen teacher's outputs of
    each batch and the student's, through `DistillLoss`, give the `distill` loss term."""

    name = "distill"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.teacher: Teacher | None = None
        self.tap: NeckTap | None = None
        self.loss: DistillLoss | None = None

    @classmethod
    def uses(cls, cfg: Any) -> bool:
        return bool(cfg.teacher) or super().uses(cfg)

    def extra_tasks(self) -> tuple[str, ...]:
        return (DISTILL,)

    def setup(self, step: TrainStep) -> None:
        cfg = step.cfg
        self.teacher = Teacher(cfg, step.names, step.cls_names, step.tasks, step.device,
                               step.channels_last)
        self.tap = NeckTap(step.model) if self.teacher.tap else None
        self.loss = DistillLoss(cfg.model.num_classes, cfg.model.reg_max, cfg.loss)

    def extra_losses(self, step: TrainStep, images: Tensor, batch: dict[str, Any],
                     out: dict[str, Any]) -> dict[str, Tensor]:
        assert self.teacher is not None and self.loss is not None
        with step.amp_context():
            taught = self.teacher(images, [m["image_id"] for m in batch["meta"]])
        student = out if self.tap is None else {**out, "neck": self.tap.take()}
        return {DISTILL: self.loss(student, taught, step.criterion.detect.last_fg)}

    def stage(self, epoch: int) -> str:
        return "distill"

    def sources(self) -> list[tuple[str, str]]:
        return [("teacher", d) for d in teacher_dirs(self.cfg.teacher or "")]


__all__ = ["Distill", "NeckTap", "Teacher", "augmentation_off"]
