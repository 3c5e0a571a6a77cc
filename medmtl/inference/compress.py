"""Compressed ONNX graphs for deployment, made from the float graph `export_onnx` wrote.

- `int8_graph`: ONNX Runtime static quantisation (`onnxruntime.quantization.quantize_static`, QDQ
  format, per-channel symmetric int8 weights, uint8 activations, MinMax calibration) calibrated on
  ``n`` letterboxed training images (a seeded sample of the training split).
- `half_graph`: fp16 weights and compute with ONNX Runtime's float16 converter
  (`onnxruntime.transformers.float16`), float32 input and outputs.

Both leave the nodes outside the network in float32, and INT8 leaves the shape arithmetic
(`shape_nodes`: TF "same" padding's pad widths) in float too: the box decoding (DFL softmax, anchor
arithmetic) and, with ``--nms``, the NMS head. Quantising the decoded pixel coordinates to 8 bits
would cost up to a pixel per 256 of range for nothing; only the network's own layers are
compressed. The graph's ``medmtl`` metadata gains a ``compression`` block.

The quantiser logs on Python's root logger, one WARNING per node it leaves alone (and
``logging.warning`` would give the root logger a stderr handler for the rest of the process);
`quiet_quantiser` catches its records and warnings and turns them into at most one summary line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.data.transforms import letterbox
from medmtl.inference.results import to_rgb_array


def wrapper_nodes(proto: Any) -> list[str]:
    """Names of the graph's nodes that are not part of the network (``/model/...``): the
    decoding and NMS that `ExportWrapper` adds, left in float32."""
    return [n.name for n in proto.graph.node if not n.name.startswith("/model/")]


def shape_nodes(proto: Any) -> list[str]:
    """Names of the nodes that compute on tensor shapes (everything downstream of a ``Shape`` or
    ``Size`` whose other inputs are constants): TF "same" padding (EfficientNet-Lite) works out
    its pad widths this way. Quantising that arithmetic changes the pad widths and so the maps'
    sizes (ONNX Runtime then fails in the neck's concat: "Non concat axis dimensions must
    match"); it is integer bookkeeping, not network compute, and stays float."""
    const = {i.name for i in proto.graph.initializer}
    const |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    derived: set[str] = set()
    out: list[str] = []
    for n in proto.graph.node:  # ONNX graphs are topologically sorted
        ins = [i for i in n.input if i and i not in const]
        if n.op_type in ("Shape", "Size") or (ins and all(i in derived for i in ins)):
            derived.update(n.output)
            out.append(n.name)
    return out


def _set_meta(proto: Any, extra: dict[str, Any]) -> None:
    meta: dict[str, Any] = {}
    for e in list(proto.metadata_props):
        if e.key == "medmtl":
            meta = json.loads(e.value)
            proto.metadata_props.remove(e)
    meta.update(extra)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "medmtl", json.dumps(meta)


def graph_meta(path: str | Path) -> dict[str, Any]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for e in proto.metadata_props:
        if e.key == "medmtl":
            return dict(json.loads(e.value))
    return {}


def calibration_images(data: str | Path, n: int, seed: int = 0) -> list[Path]:
    """A seeded sample of ``n`` images of the training split of ``data`` (all when fewer)."""
    from medmtl.data import load_data_yaml, scan_split
    from medmtl.data.dataset_yaml import DataError

    spec = load_data_yaml(data)
    records = scan_split(spec, "train", decode=False).records
    if not records:
        raise DataError(f"{data}: the training split has no images to calibrate on")
    paths = sorted(Path(r.path) for r in records)
    pick = np.random.default_rng(seed).permutation(len(paths))[:n]
    return [paths[i] for i in sorted(pick)]


def letterboxed_batches(paths: Sequence[Path], imgsz: int) -> Iterator[np.ndarray]:
    """Each image as the graph's input: float32 (1, 3, S, S) in [0, 1], letterboxed like
    `BasePredictor` does at inference."""
    for p in paths:
        lb = letterbox(to_rgb_array(p), imgsz)[0]
        yield np.ascontiguousarray(lb.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)


# the quantiser's advice to run its own shape pre-processing first: medmtl's graphs have static
# shapes and need none, so the advice is dropped, not summarised
_ADVICE = ("pre-processing before quantization", "run pre-processing")


@contextlib.contextmanager
def quiet_quantiser(notes: list[str]) -> Iterator[None]:
    """Run ONNX Runtime's quantiser quietly: its `logging` records (WARNING and up) and Python
    warnings are caught and ORT's C++ logger shows errors only; ``notes`` then gets one summary
    line of what was caught (its advice to pre-process aside), or nothing. ``MEDMTL_DEBUG=1``
    (``--debug``) lets everything through."""
    if os.environ.get("MEDMTL_DEBUG", "") not in ("", "0"):
        yield
        return
    import onnxruntime as ort

    caught: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            caught.append(record.getMessage())

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers, root.level = [_Keep(logging.WARNING)], logging.WARNING
    ort.set_default_logger_severity(3)
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            yield
        caught += [str(w.message) for w in warned]
    finally:
        root.handlers, root.level = saved
        ort.set_default_logger_severity(2)  # ONNX Runtime's default: warnings
    kinds = Counter(re.sub(r"'[^']*'", "'...'", m.strip().splitlines()[0] if m.strip() else m)
                    for m in caught if not any(a in m for a in _ADVICE))
    if kinds:
        shown = "; ".join(f'"{k[:90]}" ({n}x)' for k, n in kinds.most_common(2))
        more = f"; {len(kinds) - 2} other kind(s)" if len(kinds) > 2 else ""
        notes.append(f"int8: ONNX Runtime's quantiser warned {kinds.total()} time(s): {shown}"
                     f"{more} (--debug shows each)")


def int8_graph(src: str | Path, dst: str | Path, images: Sequence[Path], imgsz: int,
               extra_inputs: dict[str, np.ndarray] | None = None,
               notes: list[str] | None = None) -> Path:
    """Static INT8 quantisation of the float graph ``src`` into ``dst``, calibrated on
    ``images``. ``extra_inputs``: fixed values of the graph's other inputs (``conf``, ``iou``).
    ``notes`` receives the one-line summary of the quantiser's warnings, if any
    (`quiet_quantiser`)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = letterboxed_batches(images, imgsz)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            return None if x is None else {"images": x, **(extra_inputs or {})}

    if not images:
        raise ValueError("INT8 calibration needs at least one image")
    proto = onnx.load(str(src))
    dst = Path(dst)
    with quiet_quantiser(notes if notes is not None else []):
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=wrapper_nodes(proto) + shape_nodes(proto))
    out = onnx.load(str(dst))
    _set_meta(out, {"compression": {"kind": "int8", "method": "onnxruntime quantize_static",
                                    "format": "QDQ", "weights": "int8 per-channel",
                                    "activations": "uint8", "calibration": "MinMax",
                                    "calib_images": len(images)}})
    onnx.save(out, str(dst))
    return dst


def half_graph(src: str | Path, dst: str | Path) -> Path:
    """fp16 copy of the float graph ``src`` (network only; input and outputs stay float32)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.load(str(src))
    half = convert_float_to_float16(proto, keep_io_types=True, node_block_list=wrapper_nodes(proto))
    _set_meta(half, {"half": True, "compression": {
        "kind": "fp16", "method": "onnxruntime.transformers.float16 (decoding kept float32)"}})
    onnx.save(half, str(dst))
    return Path(dst)
