"""Multi-task architectures (LibMTL style: an architecture knows nothing of loss weighting).

One `MultiTaskModel` class; an arch only decides which backbone stages the two task branches share:

| arch       | trunk (shared)        | detect branch                 | classify branch                    |
|------------|-----------------------|-------------------------------|------------------------------------|
| `single`   | -                     | backbone + neck + DetectHead  | backbone + ClassifyHead            |
| `shared`   | whole backbone        | neck + DetectHead             | ClassifyHead on `view_source`      |
| `detach`   | whole backbone        | neck + DetectHead             | ClassifyHead on detached features  |
| `dual`     | -                     | backbone + neck + DetectHead  | backbone' + ClassifyHead           |
| `split<k>` | stem + k stages       | later stages + neck + head    | copy of later stages + ClassifyHead|

Parameter bookkeeping follows one rule: `task_reach(t)` is the set of parameters task t's loss can
reach; `shared_parameters()` is what both reach (so `detach` shares nothing); `task_parameters(t)`
is the rest of `task_reach(t)`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..config import ModelConfig
from ..registry import Registry
from .backbone import OUT_STRIDES, Backbone, create_backbone
from .heads import ClassifyHead, DetectHead
from .layers import last_conv
from .neck import PANNeck


@dataclass(frozen=True)
class SizeSpec:
    backbone: str  # timm model name
    width: float | None  # narrow CS3-Darknet width/depth multipliers (None: timm's own config)
    depth: float | None
    neck_widths: tuple[int, int, int]  # PAN output channels at strides 8, 16, 32 (head reads these)
    neck_depth: int  # bottlenecks per neck CSP block
    cls_hidden: int  # ClassifyHead 1x1 conv width


SIZES: dict[str, SizeSpec] = {
    "n": SizeSpec("cs3darknet_s", 0.25, 0.34, (64, 96, 192), 1, 192),
    "s": SizeSpec("cs3darknet_s", None, None, (128, 256, 512), 1, 512),
    "m": SizeSpec("cs3darknet_m", None, None, (192, 384, 768), 2, 768),
}

_VIEW_LEVEL = {"neck8": 0, "neck16": 1, "neck32": 2}


def _unique(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _params(*modules: nn.Module | None) -> list[nn.Parameter]:
    return _unique(p for m in modules if m is not None for p in m.parameters())


class MultiTaskModel(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        arch: str,
        trunk: Backbone | None,
        det_body: Backbone | None,
        cls_body: Backbone | None,
        detach_view: bool = False,
    ) -> None:
        super().__init__()
        spec = SIZES[cfg.size]
        self.arch, self.tasks = arch, tuple(cfg.tasks)
        self.strides = list(OUT_STRIDES)
        self.num_classes, self.num_views, self.reg_max = cfg.num_classes, cfg.num_views, cfg.reg_max
        self.view_source, self.detach_view, self.size = cfg.view_source, detach_view, cfg.size
        self.trunk, self.det_body, self.cls_body = trunk, det_body, cls_body
        # with expose_shared, a training forward leaves the trunk's output features (as the task
        # branches consumed them) in `shared_features`, for balancers that back-propagate the
        # branches and the trunk separately; the consumer takes them (`take_shared_features`).
        # An attribute, not an output: wrappers such as DDP may replace output tensors.
        self.expose_shared = False
        self.shared_features: list[Tensor] | None = None
        ref = next(b for b in (trunk, det_body, cls_body) if b is not None)
        self.out_indices = list(ref.out_indices)
        self.backbone_name = ref.name
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

    def take_shared_features(self) -> list[Tensor] | None:
        feats, self.shared_features = self.shared_features, None
        return feats

    def shared_boundary_valid(self) -> bool:
        """True when the shared parameters are exactly the trunk's and the task branches consume
        the trunk only through its output features and its last output (shared, split<k>), so
        that those tensors separate the shared graph from the task-specific ones."""
        return (self.trunk is not None and len(self.tasks) == 2 and self.view_level is None
                and not self.detach_view)

    # --- parameter groups ------------------------------------------------------------------------
    def task_reach(self, task: str) -> list[nn.Parameter]:
        """Parameters that `task`'s loss can send a gradient to."""
        if task not in self.tasks:
            raise KeyError(f"task {task!r} not in {self.tasks}")
        if task == "detect":
            return _params(self.trunk, self.det_body, self.neck, self.detect_head)
        if self.detach_view:
            return _params(self.classify_head)
        neck_part: list[nn.Parameter] = []
        if self.view_level is not None and self.neck is not None:
            neck_part = self.neck.level_parameters(self.view_level)
        return _unique(
            [*_params(self.trunk, self.cls_body), *neck_part, *_params(self.classify_head)]
        )

    def shared_parameters(self) -> list[nn.Parameter]:
        if len(self.tasks) < 2:
            return []
        cls_ids = {id(p) for p in self.task_reach("classify")}
        return [p for p in self.task_reach("detect") if id(p) in cls_ids]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        shared = {id(p) for p in self.shared_parameters()}
        return [p for p in self.task_reach(task) if id(p) not in shared]

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
        stages = self.trunk.stage_parameters()
        if self.view_level is not None and self.neck is not None:
            stages.append((f"neck.{self.view_source}", self.neck.level_parameters(self.view_level)))
        return stages


# --- archs -----------------------------------------------------------------------------------------
ARCHS: Registry[MultiTaskModel] = Registry("arch")


def _backbone(cfg: ModelConfig) -> Backbone:
    spec = SIZES[cfg.size]
    if cfg.backbone is not None:
        return create_backbone(cfg.backbone, cfg.pretrained)
    return create_backbone(spec.backbone, cfg.pretrained, spec.width, spec.depth)


def _need_tasks(cfg: ModelConfig, arch: str, n: int) -> None:
    if len(cfg.tasks) != n:
        hint = "use arch 'single' for one task" if n == 2 else "use a multi-task arch for two tasks"
        raise ValueError(f"arch {arch!r} takes {n} task(s), got {list(cfg.tasks)}; {hint}")


def _backbone_view(cfg: ModelConfig, arch: str) -> None:
    if cfg.view_source != "backbone":
        raise ValueError(
            f"arch {arch!r} reads the view from its own backbone; view_source must be "
            f"'backbone', got {cfg.view_source!r}"
        )


@ARCHS.register("single")
def single(cfg: ModelConfig) -> MultiTaskModel:
    _need_tasks(cfg, "single", 1)
    _backbone_view(cfg, "single")
    bb = _backbone(cfg)
    det, cls = (bb, None) if cfg.tasks == ("detect",) else (None, bb)
    return MultiTaskModel(cfg, "single", None, det, cls)


@ARCHS.register("shared")
def shared(cfg: ModelConfig) -> MultiTaskModel:
    _need_tasks(cfg, "shared", 2)
    return MultiTaskModel(cfg, "shared", _backbone(cfg), None, None)


@ARCHS.register("detach")
def detach(cfg: ModelConfig) -> MultiTaskModel:
    _need_tasks(cfg, "detach", 2)
    return MultiTaskModel(cfg, "detach", _backbone(cfg), None, None, detach_view=True)


@ARCHS.register("dual")
def dual(cfg: ModelConfig) -> MultiTaskModel:
    _need_tasks(cfg, "dual", 2)
    _backbone_view(cfg, "dual")
    return MultiTaskModel(cfg, "dual", None, _backbone(cfg), _backbone(cfg))


@ARCHS.register("split")
def split(cfg: ModelConfig, k: int = 2) -> MultiTaskModel:
    """`split<k>`: the stem and the next k backbone stages shared, the rest duplicated per task."""
    _need_tasks(cfg, f"split{k}", 2)
    _backbone_view(cfg, f"split{k}")
    bb = _backbone(cfg)
    # the stem (stage 0) is always shared; k counts the stages after it (split2 on CSP-Darknet
    # shares stem + stride-4 + stride-8 stages and duplicates the stride-16/32 stages per task)
    if bb.sequential and not 1 <= k <= bb.num_stages - 2:
        raise ValueError(f"split{k}: k must be in 1..{bb.num_stages - 2} for backbone {bb.name!r} "
                         f"(the stem plus k of its stages {', '.join(bb.stage_names[1:])} are "
                         "shared; at least one stage must stay per task)")
    trunk, tail = bb.split(k + 1)
    return MultiTaskModel(cfg, f"split{k}", trunk, tail, copy.deepcopy(tail))


def build_model(cfg: ModelConfig) -> MultiTaskModel:
    """`cfg.arch` is a registered arch name, or `split<k>` (e.g. `split2`)."""
    m = re.fullmatch(r"split(\d+)", cfg.arch)
    if m:
        return ARCHS.create("split", cfg, k=int(m.group(1)))
    return ARCHS.create(cfg.arch, cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_info(model: nn.Module, imgsz: int = 320) -> dict[str, float]:
    """Parameters and GFLOPs for one (1, 3, imgsz, imgsz) image in eval mode. GFLOPs are
    `FlopCounterMode` FLOPs / 1e9, which count a multiply-add as 2 FLOPs (so GFLOPs = 2 x GMACs)."""
    p = next(model.parameters())
    x = torch.zeros(1, 3, imgsz, imgsz, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return {"params": count_parameters(model), "gflops": counter.get_total_flops() / 1e9}
