"""`BranchedModel`: a backbone cut into a shared trunk and per-task branches (LibMTL style: an
architecture knows nothing of loss weighting). The archs `single`, `shared`, `detach`, `dual` and
`split<k>` (files in `archs/`) are this one class built with different pieces:

| arch       | trunk (shared)        | detect branch                 | classify branch                    |
|------------|-----------------------|-------------------------------|------------------------------------|
| `single`   | -                     | backbone + neck + DetectHead  | backbone + ClassifyHead            |
| `shared`   | whole backbone        | neck + DetectHead             | ClassifyHead on `view_source`      |
| `detach`   | whole backbone        | neck + DetectHead             | ClassifyHead on detached features  |
| `dual`     | -                     | backbone + neck + DetectHead  | backbone' + ClassifyHead           |
| `split<k>` | stem + k stages       | later stages + neck + head    | copy of later stages + ClassifyHead|

`task_reach(t)` follows the routing above; `shared_parameters()` is what both tasks reach (so
`detach` shares nothing) and `task_parameters(t)` the rest (the `MultiTaskNet` defaults).
The module attribute names (trunk, det_body, cls_body, neck, detect_head, classify_head) are the
checkpoint's state-dict keys: keep them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .backbone import OUT_STRIDES, Backbone
from .base import MultiTaskNet, parameters_of, unique_parameters
from .heads import ClassifyHead, DetectHead
from .layers import last_conv
from .neck import PANNeck
from .sizes import SIZES

_VIEW_LEVEL = {"neck8": 0, "neck16": 1, "neck32": 2}


class BranchedModel(MultiTaskNet):
    def __init__(
        self,
        cfg: ModelConfig,
        arch: str,
        trunk: Backbone | None,
        det_body: Backbone | None,
        cls_body: Backbone | None,
        detach_view: bool = False,
    ) -> None:
        super().__init__(cfg, arch, OUT_STRIDES)
        spec = SIZES[cfg.size]
        self.view_source, self.detach_view = cfg.view_source, detach_view
        self.trunk, self.det_body, self.cls_body = trunk, det_body, cls_body
        # with expose_shared, a training forward leaves the trunk's output features (as the task
        # branches consumed them) in `shared_features`, for balancers that back-propagate the
        # branches and the trunk separately; the consumer takes them (`take_shared_features`).
        ref = next(b for b in (trunk, det_body, cls_body) if b is not None)
        self.out_indices = list(ref.out_indices)
        self.backbone_name = ref.name
        # where the backbone's weights came from (a package, a file, timm, random): metrics.json,
        # the checkpoint header; a model rebuilt from a checkpoint gets the checkpoint's record
        self.backbone_source: dict[str, object] = dict(ref.weights_source)
        # the backbone's own input normalisation (ImageNet mean/std for the CSP-Darknets)
        self.register_buffer("mean", torch.tensor(ref.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(ref.std).view(1, 3, 1, 1), persistent=False)

        self.neck: PANNeck | None = None
        self.detect_head: DetectHead | None = None
        self.classify_head: ClassifyHead | None = None
        if "detect" in self.tasks:
            self.neck = PANNeck(ref.out_channels, spec.neck_widths, spec.neck_depth)
            self.detect_head = DetectHead(
                self.neck.out_channels, cfg.num_classes, cfg.reg_max, self.strides
            )
        self.view_level: int | None = _VIEW_LEVEL.get(cfg.view_source)
        if "classify" in self.tasks:
            if self.view_level is not None:
                if self.neck is None or cls_body is not None:
                    raise ValueError(
                        f"view_source={cfg.view_source!r} needs a neck shared with the detect "
                        f"branch (arch shared or detach), not arch {arch!r}"
                    )
                c_in = self.neck.out_channels[self.view_level]
            else:
                c_in = ref.last_channels
            self.classify_head = ClassifyHead(
                c_in, cfg.num_views, spec.cls_hidden, cfg.view_dropout
            )

        self.freeze_stages = cfg.freeze_stages
        self._freeze_early_stages()

    # --- frozen early stages (--freeze-stages) ---------------------------------------------------
    def frozen_stages(self) -> list[nn.Module]:
        """The backbone stages that --freeze-stages keeps as they were loaded."""
        out: list[nn.Module] = []
        for piece in (self.trunk, self.det_body, self.cls_body):
            if piece is None or not self.freeze_stages:
                continue
            if not piece.sequential:
                raise ValueError(f"--freeze-stages needs a backbone cut into stages; "
                                 f"{piece.name!r} is one opaque timm extractor")
            if self.freeze_stages >= piece.num_stages:
                raise ValueError(f"--freeze-stages {self.freeze_stages}: backbone {piece.name!r} "
                                 f"has {piece.num_stages} stages; at most "
                                 f"{piece.num_stages - 1} can be frozen")
            out += [s for g, s in zip(piece.global_indices(), piece.stages, strict=True)
                    if g < self.freeze_stages]
        return out

    def _freeze_early_stages(self) -> None:
        for stage in self.frozen_stages():
            stage.requires_grad_(False)
            stage.eval()

    def train(self, mode: bool = True) -> BranchedModel:
        super().train(mode)
        for stage in self.frozen_stages():  # BatchNorm statistics stay the loaded ones
            stage.eval()
        return self

    def release_trunk(self) -> None:
        """Staged training's release of the trunk: everything but the --freeze-stages stages."""
        if self.trunk is not None:
            self.trunk.requires_grad_(True)
        self._freeze_early_stages()

    # --- forward ---------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """images: float (B, 3, S, S) in [0, 1], S a multiple of 32."""
        x = (images - self.mean) / self.std
        feats: dict[int, Tensor] = {}
        h = self.trunk.run(x, feats) if self.trunk is not None else x
        out: dict[str, Tensor | list[Tensor]] = {}
        if self.expose_shared and self.training and self.shared_boundary_valid():
            # the branches consume aliases of the trunk's outputs: d(loss)/d(alias) is then the
            # gradient through the branches only, not also through later trunk stages (c4, c5
            # are computed from c3), and one backward from the aliases covers the whole trunk
            alias: dict[int, Tensor] = {}
            for t in [*feats.values(), h]:
                alias.setdefault(id(t), t.view_as(t))
            feats = {i: alias[id(t)] for i, t in feats.items()}
            h = alias[id(h)]
            self.shared_features = list(alias.values())
        levels: list[Tensor] = []
        if self.neck is not None and self.detect_head is not None:
            det_feats = dict(feats)
            if self.det_body is not None:
                self.det_body.run(h, det_feats)
            levels = self.neck([det_feats[i] for i in self.out_indices])
            out["detect"] = self.detect_head(levels)
        if self.classify_head is not None:
            if self.view_level is not None:
                v = levels[self.view_level]
            elif self.cls_body is not None:
                v = self.cls_body.run(h, {})
            else:
                v = h
            out["classify"] = self.classify_head(v.detach() if self.detach_view else v)
        return out

    def shared_boundary_valid(self) -> bool:
        """True when the shared parameters are exactly the trunk's and the task branches consume
        the trunk only through its output features and its last output (shared, split<k>), so
        that those tensors separate the shared graph from the task-specific ones."""
        return (self.trunk is not None and len(self.tasks) == 2 and self.view_level is None
                and not self.detach_view)

    # --- parameter groups ------------------------------------------------------------------------
    def task_reach(self, task: str) -> list[nn.Parameter]:
        """Parameters that `task`'s loss can send a gradient to."""
        self.check_task(task)
        if task == "detect":
            return parameters_of(self.trunk, self.det_body, self.neck, self.detect_head)
        if self.detach_view:
            return parameters_of(self.classify_head)
        neck_part: list[nn.Parameter] = []
        if self.view_level is not None and self.neck is not None:
            neck_part = self.neck.level_parameters(self.view_level)
        return unique_parameters(
            [*parameters_of(self.trunk, self.cls_body), *neck_part,
             *parameters_of(self.classify_head)]
        )

    def last_shared_parameter(self) -> nn.Parameter | None:
        if not self.shared_parameters():
            return None
        if self.view_level is not None and self.neck is not None:
            conv = last_conv(self.neck.out_block(self.view_level))
            return None if conv is None else conv.weight
        return self.trunk.last_conv_weight() if self.trunk is not None else None

    def shared_stages(self) -> list[tuple[str, list[nn.Parameter]]]:
        if not self.shared_parameters() or self.trunk is None:
            return []
        stages = [(n, ps) for n, ps in self.trunk.stage_parameters()
                  if any(p.requires_grad for p in ps)]  # not the --freeze-stages ones
        if self.view_level is not None and self.neck is not None:
            stages.append((f"neck.{self.view_source}", self.neck.level_parameters(self.view_level)))
        return stages


MultiTaskModel = BranchedModel  # the name before architectures became plug-ins


# --- helpers for builders of branched archs --------------------------------------------------------
def need_tasks(cfg: ModelConfig, arch: str, n: int) -> None:
    if len(cfg.tasks) != n:
        hint = "use arch 'single' for one task" if n == 2 else "use a multi-task arch for two tasks"
        raise ValueError(f"arch {arch!r} takes {n} task(s), got {list(cfg.tasks)}; {hint}")


def need_backbone_view(cfg: ModelConfig, arch: str) -> None:
    if cfg.view_source != "backbone":
        raise ValueError(
            f"arch {arch!r} reads the view from its own backbone; view_source must be "
            f"'backbone', got {cfg.view_source!r}"
        )
