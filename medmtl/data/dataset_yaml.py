"""Dataset YAML (Ultralytics style: ``path``, ``train``, ``val``, ``test``, ``names``) + ``cls_names``.

Relative entries resolve against ``path``, itself relative to the YAML's folder. A split entry is
an images folder (searched recursively) or a ``.txt`` file listing image paths, one per line,
relative to ``path`` (absolute lines stay absolute).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

IMG_EXTS = frozenset({".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
SPLIT_ALIASES = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}


class DataError(ValueError):
    """A data set that cannot be used as asked; the message names the file (and line)."""

    def __init__(self, message: str, problems: list[Any] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


@dataclass
class DatasetSpec:
    root: Path
    splits: dict[str, Path]
    names: list[str]
    cls_names: list[str]
    yaml_path: Path
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def _names(value: Any, key: str, yaml_path: Path) -> list[str]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        try:
            ids = sorted(int(k) for k in value)
        except (TypeError, ValueError) as e:
            raise DataError(f"{yaml_path}: '{key}' dict keys must be integers, got {list(value)}") from e
        if ids != list(range(len(ids))):
            raise DataError(f"{yaml_path}: '{key}' ids must be 0..{len(ids) - 1}, got {ids}")
        by_id = {int(k): str(v) for k, v in value.items()}
        return [by_id[i] for i in ids]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    raise DataError(f"{yaml_path}: '{key}' must be a list or an {{id: name}} dict, got {value!r}")


def load_data_yaml(path: str | Path) -> DatasetSpec:
    """Parse and check a dataset YAML; raise `DataError` naming the YAML on any problem."""
    yaml_path = Path(path).expanduser().resolve()
    if not yaml_path.is_file():
        raise DataError(f"{yaml_path}: dataset YAML not found")
    try:
        raw = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(f"{yaml_path}: not a valid YAML file: {e}") from e
    if not isinstance(raw, dict):
        raise DataError(f"{yaml_path}: expected a mapping at the top level, got {type(raw).__name__}")

    root = Path(str(raw.get("path") or "."))
    if not root.is_absolute():
        root = yaml_path.parent / root
    root = root.resolve()
    if not root.is_dir():
        raise DataError(f"{yaml_path}: 'path' {raw.get('path')!r} -> {root} is not a folder")

    splits: dict[str, Path] = {}
    for name, aliases in SPLIT_ALIASES.items():
        keys = [k for k in aliases if raw.get(k)]
        if len(keys) > 1:
            raise DataError(f"{yaml_path}: both {keys} given; use one key for the {name} split")
        if not keys:
            if name in ("train", "val"):
                raise DataError(f"{yaml_path}: missing key '{name}' (the {name} split)")
            continue
        value = raw[keys[0]]
        if not isinstance(value, str | Path):
            raise DataError(f"{yaml_path}: '{keys[0]}' must be one path (folder or .txt), got {value!r}")
        p = Path(str(value)).expanduser()
        p = (p if p.is_absolute() else root / p).resolve()
        if not p.exists():
            raise DataError(f"{yaml_path}: '{keys[0]}: {value}' -> {p} does not exist")
        if p.is_file() and p.suffix.lower() != ".txt":
            raise DataError(f"{yaml_path}: '{keys[0]}: {value}' must be a folder or a .txt list")
        splits[name] = p

    if "names" not in raw:
        raise DataError(f"{yaml_path}: missing key 'names' (detection class names)")
    names = _names(raw.get("names"), "names", yaml_path)
    if not names:
        raise DataError(f"{yaml_path}: 'names' is empty")
    if "cls_names" not in raw:
        raise DataError(f"{yaml_path}: missing key 'cls_names' (view class names, one-hot order)")
    cls_names = _names(raw.get("cls_names"), "cls_names", yaml_path)
    return DatasetSpec(root=root, splits=splits, names=names, cls_names=cls_names,
                       yaml_path=yaml_path, raw=raw)


def split_source(spec: DatasetSpec, split: str) -> Path:
    key = "val" if split == "valid" else split
    if key not in spec.splits:
        raise DataError(f"{spec.yaml_path}: no split {split!r}; known: {', '.join(spec.splits)}")
    return spec.splits[key]


def list_split_images(spec: DatasetSpec, split: str) -> list[Path]:
    """Image paths of a split, sorted (the order that defines ``image_id``), duplicates removed.

    A listed path that does not exist raises `DataError` naming the list file and line.
    """
    src = split_source(spec, split)
    if src.is_dir():
        files = [p for p in src.rglob("*") if p.suffix.lower() in IMG_EXTS and p.is_file()]
        return sorted(set(files))
    out: set[Path] = set()
    missing: list[str] = []
    for i, line in enumerate(src.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry).expanduser()
        p = p if p.is_absolute() else spec.root / p
        if not p.is_file():
            missing.append(f"{src}:{i}: listed image {entry!r} -> {p} does not exist")
            continue
        out.add(p.resolve())
    if missing:
        more = f"\n... and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise DataError("\n".join(missing[:20]) + more)
    return sorted(out)


def label_path_for(image: Path) -> Path:
    """``.../images/x.jpg`` -> ``.../labels/x.txt`` (last ``images`` component); same folder if none."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")
