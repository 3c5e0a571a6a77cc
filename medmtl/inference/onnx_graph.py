"""Opening an ``.onnx`` file given as ``--weights`` (`val`, `predict`, re-timing): one check for
every command, so a file that is not a medmtl graph is one line naming it, never an ONNX Runtime
or a lookup traceback.

`open_graph` refuses a missing file or a folder, bytes ONNX Runtime cannot load (random bytes,
a truncated file: ``InvalidProtobuf``), a graph whose inputs and outputs are not the ones `medmtl
export` writes (input ``images`` (B, 3, S, S), plus ``conf`` and ``iou`` with NMS inside; outputs
``boxes`` and ``scores``, or ``detections``, and/or ``view_logits``), and medmtl metadata that is
not the JSON object `medmtl export` stores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medmtl.errors import InputError, clip_text

IMAGES = "images"
NMS_INPUTS = ("conf", "iou")
OUTPUTS = ("boxes", "scores", "detections", "view_logits")
_FIX = "give a graph written by `medmtl export` (or a checkpoint, .pt)"


def _refuse(path: Path, why: str) -> InputError:
    return InputError(f"{clip_text(path, 200)}: {why}; {_FIX}")


def open_graph(path: str | Path, options: Any = None, providers: list[str] | None = None,
               ) -> tuple[Any, dict[str, Any]]:
    """(ONNX Runtime session, the graph's medmtl metadata or {}) of a medmtl graph; `InputError`
    naming the file for anything else (`FileNotFoundError` for a missing file)."""
    import onnxruntime as ort

    p = Path(path)
    if p.is_dir():
        raise _refuse(p, "is a folder, not an .onnx file")
    if not p.is_file():
        raise FileNotFoundError(f"ONNX graph not found: {p}")
    try:
        sess = ort.InferenceSession(str(p), options, providers=providers or
                                    ["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 -- ORT's own types (InvalidProtobuf, Fail, ...)
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        reason = lines[-1].split("failed:")[-1].strip() if lines else type(e).__name__
        raise _refuse(p, f"not a readable ONNX graph ({type(e).__name__}: "
                      f"{clip_text(reason, 160)})") from None
    check_signature(sess, p)
    meta = graph_metadata(sess, p)
    _check_class_counts(sess, meta, p)
    return sess, meta


def _check_class_counts(sess: Any, meta: dict[str, Any], path: Path) -> None:
    """The class dimension of ``scores`` / ``view_logits`` matches the metadata's names."""
    shapes = {o.name: list(o.shape or []) for o in sess.get_outputs()}
    for out, key in (("scores", "names"), ("view_logits", "cls_names")):
        dim = shapes.get(out, [None])[-1] if shapes.get(out) else None
        if out in shapes and meta.get(key) and isinstance(dim, int) and dim != len(meta[key]):
            raise _refuse(path, f"output {out!r} has {dim} classes but its metadata names "
                          f"{len(meta[key])} ({key})")


def check_signature(sess: Any, path: Path) -> None:
    """The graph's inputs and outputs are those of a medmtl export."""
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    io = f"inputs {', '.join(inputs) or 'none'}; outputs {', '.join(outputs) or 'none'}"
    if IMAGES not in inputs:
        raise _refuse(path, f"not a medmtl graph: no input {IMAGES!r} ({clip_text(io, 160)})")
    shape = list(inputs[IMAGES].shape or [])
    if len(shape) != 4 or isinstance(shape[1], int) and shape[1] != 3:
        raise _refuse(path, f"not a medmtl graph: input {IMAGES!r} has shape "
                      f"{clip_text(shape, 60)}, not (batch, 3, size, size)")
    extra = [n for n in inputs if n not in (IMAGES, *NMS_INPUTS)]
    unknown = [n for n in outputs if n not in OUTPUTS]
    if extra or unknown or not outputs:
        raise _refuse(path, f"not a medmtl graph ({clip_text(io, 160)})")
    has_det = {"boxes", "scores"} <= set(outputs) or "detections" in outputs
    if not has_det and "view_logits" not in outputs or \
            ("boxes" in outputs) != ("scores" in outputs):
        raise _refuse(path, f"not a medmtl graph: outputs {', '.join(outputs)} are neither "
                      "boxes + scores, detections nor view_logits")
    if "detections" in outputs and not all(n in inputs for n in NMS_INPUTS):
        raise _refuse(path, "not a medmtl graph: output 'detections' without inputs conf, iou")


def graph_metadata(sess: Any, path: Path) -> dict[str, Any]:
    """The ``medmtl`` metadata entry (JSON) of the graph; {} when it has none."""
    text = sess.get_modelmeta().custom_metadata_map.get("medmtl")
    if text is None:
        return {}
    try:
        meta = json.loads(text)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise _refuse(path, "its 'medmtl' metadata is not the JSON object medmtl export writes")
    for key in ("names", "cls_names", "tasks"):
        v = meta.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise _refuse(path, f"its 'medmtl' metadata has a bad {key!r} (a list of names "
                          "expected)")
    if not set(meta.get("tasks", [])) <= {"detect", "classify"}:
        raise _refuse(path, f"its 'medmtl' metadata names unknown tasks "
                      f"{clip_text(meta.get('tasks'), 60)}")
    size = meta.get("imgsz")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool)
                             or not 32 <= size <= 8192):
        raise _refuse(path, f"its 'medmtl' metadata has a bad imgsz {clip_text(size, 40)}")
    return meta


__all__ = ["check_signature", "graph_metadata", "open_graph"]
