"""Runs that start from other runs: staged training (`--init-from`) and the teacher of knowledge
distillation (`--teacher`).

A *source* is a finished run directory (its `weights/best.pt` and `metrics.json`). Staged training
copies the source's detection path (backbone stages, PAN neck, DetectHead) into the new model by
the backbone's global stage index, so a `dual` run or a single-task detector can seed a `shared`
or `split<k>` model: every backbone piece of the new model (trunk, det_body, and cls_body's
duplicated stages) takes the source detector's stage of the same index; the view head starts
fresh. `stage_records` is what metrics.json's `training.stages` records of the sources, and
`copy_source_files` keeps their config, history and metrics under `<run>/stages/<name>/`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from medmtl.engine.plugin_api import PLUGINS, MethodPlugin, TrainStep
from medmtl.errors import CheckpointError
from medmtl.models.checkpoint import load_weights, model_from_checkpoint

_STAGE = re.compile(r"^(trunk|det_body|cls_body)\.stages\.(\d+)\.(.*)$")


def source_checkpoint(run_dir: str | Path, flag: str) -> Path:
    """`RUN_DIR/weights/best.pt`, or a one-line error naming the folder."""
    path = Path(run_dir) / "weights" / "best.pt"
    for need in (path, Path(run_dir) / "metrics.json"):
        if not need.is_file():
            raise CheckpointError(f"{flag} {run_dir}: no finished run there ({need} is missing)")
    return path


def load_source(run_dir: str | Path, flag: str) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The model of a finished run (EMA weights when it has them), its config and checkpoint."""
    return model_from_checkpoint(source_checkpoint(run_dir, flag), "cpu")


def check_compatible(flag: str, run_dir: str | Path, src_cfg: Any, ck: dict[str, Any],
                     cfg: Any, names: list[str], cls_names: list[str],
                     tasks: tuple[str, ...]) -> None:
    """The source must have been trained on the same image size, classes and model size."""
    diffs = []
    if src_cfg.imgsz != cfg.imgsz:
        diffs.append(f"imgsz {src_cfg.imgsz} vs {cfg.imgsz}")
    if "detect" in tasks and "detect" in src_cfg.model.tasks and list(ck.get("names") or []) \
            != list(names):
        diffs.append(f"names {ck.get('names')} vs {names}")
    if "classify" in tasks and "classify" in src_cfg.model.tasks and \
            list(ck.get("cls_names") or []) != list(cls_names):
        diffs.append(f"cls_names {ck.get('cls_names')} vs {cls_names}")
    for k in ("size", "backbone", "reg_max"):
        if getattr(src_cfg.model, k) != getattr(cfg.model, k):
            diffs.append(f"{k} {getattr(src_cfg.model, k)} vs {getattr(cfg.model, k)}")
    if diffs:
        raise CheckpointError(f"{flag} {run_dir}: the run does not fit this one ({'; '.join(diffs)})")


def _stage_key(key: str, model: nn.Module) -> tuple[str, int, str] | None:
    """(piece, global stage index, rest) of a backbone parameter key."""
    m = _STAGE.match(key)
    if m is None:
        return None
    piece = getattr(model, m.group(1))
    return m.group(1), piece.first + int(m.group(2)), m.group(3)


def detection_path_state(src: nn.Module) -> dict[str, Any]:
    """The source's detection path keyed by `backbone.<global stage>.<rest>`, `neck.*`,
    `detect_head.*`."""
    if "detect" not in getattr(src, "tasks", ()):
        raise CheckpointError(f"the source run ({getattr(src, 'arch', '?')}) has no detection "
                              "branch to start from")
    pieces = {"det_body"} if getattr(src, "det_body", None) is not None else set()
    pieces |= {"trunk"} if getattr(src, "trunk", None) is not None else set()
    out: dict[str, Any] = {}
    for k, v in src.state_dict().items():
        sk = _stage_key(k, src)
        if sk is not None:
            if sk[0] in pieces:
                out[f"backbone.{sk[1]}.{sk[2]}"] = v
        elif k.startswith(("neck.", "detect_head.")):
            out[k] = v
    return out


def init_from_run(model: nn.Module, run_dir: str | Path, src: nn.Module) -> dict[str, Any]:
    """Copy `src`'s detection path into `model` (see the module docstring). Returns counts."""
    path = source_checkpoint(run_dir, "--init-from")
    det = detection_path_state(src)
    state = dict(model.state_dict())
    copied, fresh = 0, []
    for k in state:
        sk = _stage_key(k, model)
        key = f"backbone.{sk[1]}.{sk[2]}" if sk is not None else k
        if key in det:
            state[k] = det[key]
            copied += 1
        else:
            fresh.append(k)
    if not any(k.startswith(("trunk.", "det_body.")) for k in state if k not in fresh):
        raise CheckpointError(f"--init-from {run_dir}: no backbone weights matched this "
                              f"{getattr(model, 'arch', '?')} model")
    load_weights(model, state, path)  # one-line error naming the file on a shape mismatch
    return {"copied_tensors": copied, "fresh_tensors": len(fresh)}


def source_seconds(run_dir: str | Path) -> tuple[float | None, dict[str, Any]]:
    """(training seconds of every stage of a source run, its metrics.json `training` block)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None, {}
    training = json.loads(path.read_text()).get("training") or {}
    total = training.get("seconds_total", training.get("seconds"))
    return (float(total) if isinstance(total, int | float) else None), training


def stage_records(kind: str, run_dirs: list[str]) -> list[dict[str, Any]]:
    """metrics.json's `training.stages` entries of the sources (`kind`: init-from | teacher)."""
    out = []
    for d in run_dirs:
        seconds, training = source_seconds(d)
        out.append({"stage": kind, "run": str(Path(d).resolve()), "method": training.get("method"),
                    "arch": training.get("arch"), "epochs": training.get("epochs"),
                    "seconds": seconds})
    return out


def copy_source_files(run_dir: Path, sources: list[str]) -> None:
    """The sources' config.yaml, history.csv and metrics.json under `<run>/stages/<name>/`."""
    for d in sources:
        src = Path(d)
        dest = run_dir / "stages" / src.name
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("config.yaml", "history.csv", "metrics.json"):
            if (src / name).is_file():
                shutil.copyfile(src / name, dest / name)


def prepare_init(cfg: Any, model: nn.Module, names: list[str], cls_names: list[str],
                 distributed: bool) -> dict[str, Any]:
    """`--init-from`: check the source and the freeze, copy the weights into `model`."""
    if cfg.freeze_trunk_epochs and getattr(model, "trunk", None) is None:
        raise ValueError(f"--freeze-trunk-epochs: arch {cfg.model.arch} has no shared trunk "
                         "(use shared or split<k>)")
    if cfg.freeze_trunk_epochs and distributed:
        raise ValueError("--freeze-trunk-epochs is not supported under data parallelism (DDP "
                         "fixes the trained parameters when it wraps the model)")
    src, src_cfg, ck = load_source(cfg.init_from, "--init-from")
    check_compatible("--init-from", cfg.init_from, src_cfg, ck, cfg, names, cls_names,
                     ("detect",))
    return init_from_run(model, cfg.init_from, src)


def set_trunk_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (no gradient, BatchNorm statistics kept: eval mode) or release the shared trunk."""
    trunk = model.trunk
    if not frozen and hasattr(model, "release_trunk"):  # keeps --freeze-stages frozen
        model.release_trunk()
        return
    for p in trunk.parameters():
        p.requires_grad_(not frozen)
    if frozen:
        trunk.eval()


def training_stages(cfg: Any, seconds: float, epochs: int, sources: list[tuple[str, str]],
                    before: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """metrics.json's `training.stages` and `training.seconds_total` (this run plus every
    source's own total -- ``sources``: (kind, run dir) -- and the ``before`` stages of this run,
    e.g. `--arch auto`'s probe: a method's cost includes the compute it needed); {} for a run
    without sources or earlier stages."""
    if not sources and not before:
        return {}
    stages = [rec for kind, d in sources for rec in stage_records(kind, [d])] + list(before or [])
    stages.append({"stage": "this run", "run": str(Path(cfg.out).resolve()),
                   "method": cfg.method, "arch": cfg.model.arch, "epochs": epochs,
                   "seconds": round(seconds, 2), "frozen_trunk_epochs": cfg.freeze_trunk_epochs})
    known = [s["seconds"] for s in stages if isinstance(s["seconds"], int | float)]
    return {"seconds_total": round(sum(known), 2), "stages": stages}


def teacher_dirs(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


@PLUGINS.register("staged")
class Staged(MethodPlugin):
    """Staged training (`--init-from RUN_DIR`, the `staged` preset): the model starts from the
    source run's detection path, with the shared trunk frozen for the first
    `--freeze-trunk-epochs` epochs (BatchNorm statistics kept) and trained after."""

    name = "staged"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.frozen = False

    @classmethod
    def uses(cls, cfg: Any) -> bool:
        return bool(cfg.init_from) or super().uses(cfg)

    def init_model(self, model: nn.Module, names: list[str], cls_names: list[str],
                   distributed: bool) -> str:
        info = prepare_init(self.cfg, model, names, cls_names, distributed)
        return (f"--init-from {self.cfg.init_from}: {info['copied_tensors']} tensors copied, "
                f"{info['fresh_tensors']} start fresh")

    def on_epoch_start(self, step: TrainStep, epoch: int) -> None:
        frozen = epoch < self.cfg.freeze_trunk_epochs
        if frozen or frozen != self.frozen:  # each frozen epoch: model.train() undid eval mode
            set_trunk_frozen(step.model, frozen)
        if frozen != self.frozen:
            self.frozen = frozen
            step.refresh_shared()

    def stage(self, epoch: int) -> str:
        return "frozen-trunk" if epoch < self.cfg.freeze_trunk_epochs else "joint"

    def sources(self) -> list[tuple[str, str]]:
        return [("init-from", self.cfg.init_from)]


__all__ = ["Staged", "check_compatible", "copy_source_files", "detection_path_state",
           "init_from_run", "load_source", "prepare_init", "set_trunk_frozen", "source_checkpoint",
           "stage_records", "teacher_dirs", "training_stages"]
