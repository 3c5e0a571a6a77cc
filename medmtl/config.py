"""Every hyper-parameter in one validated object (YOLOX style): sizes and methods are variants of it.

`TrainConfig` is what `medmtl train` resolves and writes to `<run>/config.yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

TASKS = ("detect", "classify")


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arch: str = "shared"  # shared | dual | detach | split<k> (e.g. split2); single-task: "single"
    tasks: tuple[str, ...] = TASKS
    size: Literal["n", "s", "m"] = "n"
    backbone: str | None = None  # any timm model name; None -> the size's default CSP-Darknet
    pretrained: bool = False
    num_classes: int = 4  # detection classes (names)
    num_views: int = 3  # image-level classes (cls_names)
    reg_max: int = 16
    # where the view head reads from: "backbone" (last stage, stride 32) or a neck output
    # "neck8" | "neck16" | "neck32" ("neck8" reproduces the earlier public attempt)
    view_source: str = "backbone"
    view_dropout: float = 0.0

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [t for t in v if t not in TASKS]
        if bad or not v:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {v}")
        return tuple(t for t in TASKS if t in v)

    @field_validator("view_source")
    @classmethod
    def _view_source(cls, v: str) -> str:
        if v not in ("backbone", "neck8", "neck16", "neck32"):
            raise ValueError(f"view_source must be backbone|neck8|neck16|neck32, got {v!r}")
        return v


class LossConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    box: float = 7.5  # CIoU term gain inside the detection loss
    dfl: float = 1.5
    cls: float = 0.5  # BCE term gain inside the detection loss
    label_smoothing: float = 0.0  # view cross-entropy
    view_class_weights: list[float] | None = None
    assigner_topk: int = 10
    assigner_alpha: float = 0.5
    assigner_beta: float = 6.0


class BalancerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "fixed"  # see medmtl.balancing.BALANCERS
    weights: dict[str, float] = Field(default_factory=lambda: {"detect": 1.0, "classify": 1.0})
    alpha: float = 1.5  # GradNorm asymmetry
    lr: float = 0.025  # learning rate of balancers that learn weights with their own optimiser
    temperature: float = 2.0  # DWA
    cagrad_c: float = 0.4
    famo_gamma: float = 0.01  # FAMO weight decay of the logits


class AugmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scale: float = 0.25  # random scale in [1 - scale, 1 + scale]
    translate: float = 0.1  # fraction of imgsz
    hsv_h: float = 0.0  # hue shifts change Doppler colour semantics; off by default
    hsv_s: float = 0.4
    hsv_v: float = 0.3
    brightness: float = 0.2
    contrast: float = 0.2
    fliplr: float = 0.0  # OFF: swaps the sides of the heart (mitral <-> tricuspid)
    mosaic: float = 0.0


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = ""
    out: str = "runs/exp"
    method: str | None = None  # preset name that filled model/balancer, for the record
    epochs: int = 30
    imgsz: int = 320
    batch: int = 16
    accumulate: int = 1
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 2e-3
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.05  # cosine floor as a fraction of lr
    ema: bool = True
    ema_decay: float = 0.999
    amp: bool = True  # only acts on CUDA: bf16 where supported, else fp16 + GradScaler
    clip_grad: float = 10.0
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    workers: int = 2
    cache: bool = True  # keep decoded uint8 images in memory
    sync_bn: bool = False  # data parallel: BatchNorm statistics of the global batch
    compile: bool = False  # torch.compile the training forward (eager if compilation fails)
    val_every: int = 1
    patience: int = 0  # early stopping on the selection metric; 0 = off
    strict: bool = False  # every data warning becomes an error
    diag_steps: int = 2  # gradient-interference measurement steps per epoch (shared models)
    diag_per_stage: bool = False
    conf_thres: float = 0.001  # evaluation NMS settings
    iou_thres: float = 0.6
    max_det: int = 100
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    balancer: BalancerConfig = Field(default_factory=BalancerConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        return cls.model_validate(yaml.safe_load(Path(path).read_text()))


# --- method presets ---------------------------------------------------------------------------
# A preset only sets model.arch / model.view_source / balancer.*; everything else is shared so that
# methods are compared on the same data, budget and evaluation.
PRESETS: dict[str, dict[str, Any]] = {
    "original": {"model": {"arch": "shared", "view_source": "neck8"},
                 "balancer": {"name": "fixed", "weights": {"detect": 1.0, "classify": 0.1}}},
    "fixed": {"model": {"arch": "shared"}, "balancer": {"name": "fixed"}},
    "gradnorm": {"model": {"arch": "shared"}, "balancer": {"name": "gradnorm"}},
    "uncertainty": {"model": {"arch": "shared"}, "balancer": {"name": "uncertainty"}},
    "dwa": {"model": {"arch": "shared"}, "balancer": {"name": "dwa"}},
    "pcgrad": {"model": {"arch": "shared"}, "balancer": {"name": "pcgrad"}},
    "cagrad": {"model": {"arch": "shared"}, "balancer": {"name": "cagrad"}},
    "famo": {"model": {"arch": "shared"}, "balancer": {"name": "famo"}},
    "dual": {"model": {"arch": "dual"}, "balancer": {"name": "fixed"}},
    "split2": {"model": {"arch": "split2"}, "balancer": {"name": "fixed"}},
    "detach": {"model": {"arch": "detach"}, "balancer": {"name": "fixed"}},
    "detect": {"model": {"arch": "single", "tasks": ["detect"]}, "balancer": {"name": "fixed"}},
    "classify": {"model": {"arch": "single", "tasks": ["classify"]}, "balancer": {"name": "fixed"}},
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(method: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- preset(method) <- overrides (nested dicts), validated."""
    data: dict[str, Any] = TrainConfig().model_dump()
    if method is not None:
        if method not in PRESETS:
            raise KeyError(f"unknown method {method!r}; known: {', '.join(PRESETS)}")
        data = _merge(data, PRESETS[method])
        data["method"] = method
    if overrides:
        data = _merge(data, overrides)
    return TrainConfig.model_validate(data)
