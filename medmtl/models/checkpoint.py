"""Reading checkpoints: the safe `load_checkpoint`, `model_from_checkpoint` (the model a checkpoint
was trained with) and `checkpoint_dict` (a model packed in the checkpoint format); `seal` adds the
integrity fields that the trainer's saves carry.

A checkpoint is a plain dict of tensors and primitive values, so `torch.load(weights_only=True)`
reads it and a checkpoint from a stranger cannot run code. Writing them (atomically) is the
training engine's part: `medmtl.engine.checkpoint.save_checkpoint`.

Integrity (format 2): ``sha256`` is the SHA-256 of every value in the dict (tensors by dtype, shape
and bytes; keys in sorted order), verified on load; ``header`` names what the weights fit (arch,
size, backbone, tasks, classes, medmtl version) and is checked against the config before the state
dict is loaded. Older checkpoints without them load as "unverified". The checksum detects
corruption, not tampering (see `load_checkpoint`): safety comes from ``weights_only=True`` alone.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import UNSAFE_FIX, CheckpointError, clip_text, load_refusal
from .mtl import build_model

FORMAT = 2
HEADER_FIELDS = ("arch", "size", "backbone", "tasks", "num_classes", "num_views", "reg_max",
                 "view_source")
_HUB_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:", "file:")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("medmtl")
    except Exception:  # noqa: BLE001 -- not installed (a bare source checkout)
        return "unknown"


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            h.update(f"K{type(k).__name__}:{k}".encode())
            _feed(h, obj[k])
    elif isinstance(obj, list | tuple):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"V{type(obj).__name__}:{obj!r}".encode())


def checkpoint_digest(ck: Mapping[str, Any]) -> str:
    """SHA-256 of everything in a checkpoint but its own ``sha256`` field."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in ck.items() if k != "sha256"})
    return h.hexdigest()


def checkpoint_header(config: Mapping[str, Any], names: Sequence[str],
                      cls_names: Sequence[str]) -> dict[str, Any]:
    """What the weights fit, readable without loading them."""
    m = dict(config.get("model") or {})
    head: dict[str, Any] = {"format": FORMAT, "medmtl_version": _version()}
    head.update({k: (list(m[k]) if isinstance(m.get(k), list | tuple) else m.get(k))
                 for k in HEADER_FIELDS})
    head.update({"imgsz": config.get("imgsz"), "names": list(names),
                 "cls_names": list(cls_names)})
    return head


def backbone_source(model: nn.Module) -> dict[str, Any] | None:
    """Where the model's backbone weights came from (`medmtl.models.pretrained`), if it says
    (a data-parallel wrapper is looked through)."""
    src = getattr(getattr(model, "module", model), "backbone_source", None)
    return dict(src) if src else None


def seal(ck: dict[str, Any]) -> dict[str, Any]:
    """Add ``header`` and ``sha256`` to a checkpoint dict (in place; returned)."""
    ck["header"] = checkpoint_header(ck.get("config") or {}, ck.get("names") or [],
                                     ck.get("cls_names") or [])
    if ck.get("backbone_weights"):  # package and version, or file and sha256 (pretrained.py)
        ck["header"]["backbone_weights"] = ck["backbone_weights"]
    ck.pop("sha256", None)
    ck["sha256"] = checkpoint_digest(ck)
    return ck


def nonfinite_tensors(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a state dict holding NaN or inf."""
    return [k for k, v in state.items() if isinstance(v, torch.Tensor)
            and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def folder_hint(folder: Path) -> str:
    """What to say when a folder is given where a checkpoint file belongs."""
    for cand in ("weights/best.pt", "best.pt", "weights/last.pt", "last.pt"):
        if (folder / cand).is_file():
            return (f"{folder} is a folder, not a checkpoint; give its checkpoint file: "
                    f"--weights {folder / cand}")
    found = sorted(folder.glob("*/weights/best.pt"))[:3]
    if found:
        return (f"{folder} is a folder of runs, not a checkpoint; give one run's checkpoint, e.g. "
                f"--weights {found[0]}")
    return (f"{folder} is a folder, not a checkpoint; --weights takes a .pt file (a run's "
            "weights/best.pt)")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    verify: bool = True) -> dict[str, Any]:
    """Load safely (``weights_only=True``), verify the checksum when it has one (a warning says
    "unverified" when it has none: written before medmtl recorded checksums), and check the header
    against its config. Every failure is a `CheckpointError` naming the file; a refused load says
    what to do (re-export or retrain), never PyTorch's advice to load with ``weights_only=False``.

    The checksum detects corruption (flipped bytes, a truncated copy), not tampering: whoever can
    edit the file can recompute it or delete the ``sha256`` key (which only turns the check into
    the "unverified" warning). Safety against a hostile file comes from ``weights_only=True``:
    nothing in a checkpoint is ever unpickled as code, whatever its checksum says."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(folder_hint(path))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (a checkpoint is a .pt file, e.g. "
                                "a run's weights/best.pt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle refusing a non-tensor object, truncated file, ...
        # PyTorch's own advice (load with weights_only=False) is left out: it would run the code
        raise CheckpointError(
            f"{path}: not a loadable medmtl checkpoint ({load_refusal(e)}; tensors only, never "
            f"code): {UNSAFE_FIX}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not a medmtl checkpoint (missing 'model' or 'config')")
    if verify:
        if "sha256" in ckpt:
            got = checkpoint_digest(ckpt)
            if got != ckpt["sha256"]:
                raise CheckpointError(f"{path}: corrupted: the SHA-256 of its contents "
                                      f"({got[:16]}...) differs from the one recorded at save "
                                      f"({str(ckpt['sha256'])[:16]}...)")
        else:
            warnings.warn(f"{path}: unverified checkpoint (no checksum: written by an older "
                          "medmtl)", stacklevel=2)
        check_header(ckpt, path)
    return ckpt


def check_header(ck: Mapping[str, Any], path: str | Path) -> None:
    """The header (when present) must describe the model the config builds."""
    head = ck.get("header")
    if not isinstance(head, Mapping):
        return
    want = checkpoint_header(ck["config"], ck.get("names") or [], ck.get("cls_names") or [])
    diff = [f"{k}: header {clip_text(head.get(k))} vs config {clip_text(want[k])}"
            for k in (*HEADER_FIELDS, "names", "cls_names") if head.get(k) != want[k]]
    if diff:
        raise CheckpointError(f"{path}: header and config disagree ({'; '.join(diff)})")


def load_weights(model: nn.Module, state: Mapping[str, Any], path: str | Path) -> None:
    """`model.load_state_dict(state)` with a one-line error naming the file and what differs."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and isinstance(state[k], torch.Tensor)
              and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        arch = f"{getattr(model, 'arch', type(model).__name__)}/{getattr(model, 'size', '?')}"
        parts = [f"{len(missing)} missing", f"{len(unexpected)} unexpected",
                 f"{len(shapes)} of another shape"]
        first = (shapes or missing or unexpected)[0]
        detail = f" (e.g. {first}: {tuple(state[first].shape)} vs {tuple(own[first].shape)})" \
            if shapes else f" (e.g. {clip_text(first)})"
        raise CheckpointError(f"{path}: weights do not fit the {arch} model: "
                              f"{', '.join(parts)} tensors{detail}")
    model.load_state_dict(state)


def check_backbone(cfg: TrainConfig, path: str | Path, allow_path: bool = False) -> None:
    """A checkpoint's config names a timm model, not a folder or a hub id, unless allowed."""
    name = cfg.model.backbone
    if name is None or allow_path:
        return
    import timm

    if name.startswith(_HUB_PREFIXES) or "/" in name or "\\" in name or not timm.is_model(name):
        raise CheckpointError(f"{path}: its config asks for backbone {clip_text(name)!r}, which is "
                              "not a timm model name (a local folder or hub id would be opened); "
                              "pass --allow-backbone-path if you trust this file")


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                          use_ema: bool = True, allow_backbone_path: bool = False,
                          ) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained with (EMA weights when present). Nothing is
    downloaded or read besides the checkpoint (``pretrained`` is off: the weights are in it)."""
    ck = load_checkpoint(path)
    try:
        cfg = TrainConfig.model_validate(ck["config"])
    except Exception as e:  # noqa: BLE001 -- pydantic: name the file and the first field
        first = str(e).strip().splitlines()
        raise CheckpointError(f"{path}: invalid config inside the checkpoint: "
                              f"{clip_text(' '.join(first[:3]), 300)}") from e
    check_backbone(cfg, path, allow_backbone_path)
    model = build_model(cfg.model.model_copy(update={"pretrained": False,
                                                      "backbone_weights": None}))
    state = ck["ema"]["module"] if use_ema and ck.get("ema") else ck["model"]
    bad = nonfinite_tensors(state)
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensor(s) hold NaN/inf (first: "
                              f"{', '.join(bad[:3])}); this checkpoint cannot predict")
    load_weights(model, state, path)
    if ck.get("backbone_weights"):
        model.backbone_source = dict(ck["backbone_weights"])
    return model.to(device).eval(), cfg, ck


def release_checkpoint(src: str | Path, dst: str | Path, half: bool = True) -> dict[str, Any]:
    """A deployable copy of a run's checkpoint: the evaluated weights (EMA when present) as the
    model, no EMA or optimiser state, floating tensors stored in float16 (``half``; they load
    into the float32 model unchanged in value), config, names and the backbone's source kept,
    sealed again (header, SHA-256). Returns the new dict (also saved to ``dst``)."""
    ck = load_checkpoint(src)
    state = dict(ck["ema"]["module"] if ck.get("ema") else ck["model"])
    kept = 0  # tensors float16 cannot hold (overflow): stored in float32
    if half:
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                h = v.half()
                if bool(torch.isfinite(h).all()) or not bool(torch.isfinite(v).all()):
                    state[k] = h
                else:
                    kept += 1
    out = {k: v for k, v in ck.items() if k not in ("model", "ema", "header", "sha256",
                                                    "optimizer", "scheduler", "scaler",
                                                    "balancer", "epoch_acc", "rng")}
    out.update({"model": state, "ema": None,
                "release": {"source_epoch": ck.get("best_epoch"),
                            "storage": "float16" if half else "float32",
                            "float32_tensors": kept}})
    seal(out)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, dst)
    return out


def checkpoint_dict(model: nn.Module, cfg: Any, names: Sequence[str],
                    cls_names: Sequence[str], epoch: int = 0, *, ema: Any = None,
                    step_in_epoch: int = 0, best_fitness: float | None = None,
                    best_epoch: int | None | object = ..., history: Sequence[Any] | None = None,
                    train_seconds: float = 0.0, sealed: bool = True) -> dict[str, Any]:
    """The project's checkpoint format, its one definition: the model (and EMA) state, the
    config (a TrainConfig or its JSON dump), the class names and the run's counters, as plain
    tensors and primitives (safe to load with weights_only=True). ``load_model`` and
    ``model_from_checkpoint`` read it; the trainer's resumable ``last.pt`` adds the optimiser
    state to it (`medmtl.engine.run_state.checkpoint_dict`). ``sealed`` False leaves the header
    and digest to `save_checkpoint`, which seals what it writes."""
    config = cfg if isinstance(cfg, dict) else cfg.model_dump(mode="json")
    return (seal if sealed else dict)({"model": model.state_dict(), "ema": ema.state_dict() if ema else None,
                 "config": config, "names": list(names), "cls_names": list(cls_names),
                 "epoch": epoch, "step_in_epoch": step_in_epoch, "best_fitness": best_fitness,
                 "best_epoch": epoch if best_epoch is ... else best_epoch,
                 "history": list(history or []), "train_seconds": train_seconds,
                 "backbone_weights": backbone_source(model)})
