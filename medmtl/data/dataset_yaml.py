"""Dataset YAML (Ultralytics style: ``path``, ``train``, ``val``, ``test``, ``names``) + ``cls_names``.

Relative entries resolve against ``path``, itself relative to the YAML's folder. A split entry is
an images folder (searched recursively) or a ``.txt`` file listing image paths, one per line,
relative to ``path`` (absolute lines stay absolute).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmtl.data.images import IMG_EXTS, FileNote, dedupe_stems, discover, label_path_for
from medmtl.errors import MedmtlError, clip_text
from medmtl.yamlio import MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, load_yaml

SPLIT_ALIASES = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}


class DataError(MedmtlError, ValueError):
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
            raise DataError(f"{yaml_path}: '{key}' dict keys must be integers, got "
                            f"{clip_text(list(value))}") from e
        if ids != list(range(len(ids))):
            raise DataError(f"{yaml_path}: '{key}' ids must be 0..{len(ids) - 1}, got "
                            f"{clip_text(ids)}")
        bad = [v for v in value.values() if not isinstance(v, str | int | float)]
        if bad:
            raise DataError(f"{yaml_path}: '{key}' entries must be names (strings), got "
                            f"{clip_text(repr(bad[0]))}")
        by_id = {int(k): str(v) for k, v in value.items()}
        return [by_id[i] for i in ids]
    if isinstance(value, list | tuple):
        bad = [v for v in value if not isinstance(v, str | int | float) or isinstance(v, bool)]
        if bad:
            raise DataError(f"{yaml_path}: '{key}' entries must be names (strings), got "
                            f"{clip_text(repr(bad[0]))}")
        return [str(v) for v in value]
    raise DataError(f"{yaml_path}: '{key}' must be a list or an {{id: name}} dict, got "
                    f"{clip_text(repr(value))}")


def _exists(p: Path, kind: str = "any") -> bool:
    """``p.exists()`` / ``is_file()`` / ``is_dir()``, False for names the OS refuses (too long)."""
    try:
        return p.is_file() if kind == "file" else p.is_dir() if kind == "dir" else p.exists()
    except (OSError, ValueError):
        return False


def safe_load_yaml(path: Path, max_bytes: int = MAX_YAML_BYTES, max_nodes: int = MAX_YAML_NODES,
                   max_depth: int = MAX_YAML_DEPTH) -> Any:
    """`medmtl.yamlio.load_yaml` (the one guarded YAML reader: size, depth and alias-expansion
    limits) raising `DataError` naming the dataset YAML."""
    return load_yaml(path, "dataset YAML", DataError, max_bytes, max_nodes, max_depth)


def missing_yaml_hint(path: Path) -> str:
    """"dataset YAML not found" with what to type instead: the folder's YAML, a close name, or
    how to make demo data."""
    if path.is_dir():
        inside = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
        if inside:
            return f"{path} is a folder; give its dataset YAML: --data {inside[0]}"
        return f"{path} is a folder with no .yaml in it; --data takes a dataset YAML file"
    msg = f"{path}: dataset YAML not found"
    siblings = [p.name for p in path.parent.glob("*.y*ml")] if path.parent.is_dir() else []
    close = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.5)
    if close:
        return f"{msg}; did you mean --data {path.parent / close[0]}?"
    return (f"{msg}; check the path, or make demo data with `medmtl synth --out data/synth` and "
            "use --data data/synth/data.yaml")


def load_data_yaml(path: str | Path) -> DatasetSpec:
    """Parse and check a dataset YAML; raise `DataError` naming the YAML on any problem."""
    yaml_path = Path(path).expanduser().resolve()
    if not _exists(yaml_path, "file"):
        raise DataError(missing_yaml_hint(Path(path).expanduser()))
    raw = safe_load_yaml(yaml_path)
    if not isinstance(raw, dict):
        raise DataError(f"{yaml_path}: expected a mapping at the top level, got "
                        f"{type(raw).__name__}")

    root = Path(str(raw.get("path") or "."))
    if not root.is_absolute():
        root = yaml_path.parent / root
    root = root.resolve()
    if not _exists(root, "dir"):
        raise DataError(f"{yaml_path}: 'path' {clip_text(repr(raw.get('path')))} is not a folder")

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
            raise DataError(f"{yaml_path}: '{keys[0]}' must be one path (folder or .txt), got "
                            f"{clip_text(repr(value))}")
        p = Path(str(value)).expanduser()
        p = (p if p.is_absolute() else root / p).resolve()
        if not _exists(p):
            raise DataError(f"{yaml_path}: '{keys[0]}: {clip_text(value)}' does not exist")
        if _exists(p, "file") and p.suffix.lower() != ".txt":
            raise DataError(f"{yaml_path}: '{keys[0]}: {clip_text(value)}' must be a folder or a "
                            ".txt list")
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

    A listed path that does not exist raises `DataError` naming the list file and line."""
    return split_images(spec, split)[0]


def split_images(spec: DatasetSpec, split: str) -> tuple[list[Path], list[FileNote]]:
    """`list_split_images` and a `FileNote` for every file met and not used (unsupported type,
    a second image for the same label file)."""
    src = split_source(spec, split)
    if src.is_dir():
        return discover(src)
    out: set[Path] = set()
    notes: list[FileNote] = []
    missing: list[str] = []
    try:
        lines = src.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{src}: cannot read the image list ({type(e).__name__})") from e
    for i, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry).expanduser()
        p = p if p.is_absolute() else spec.root / p
        if not _exists(p, "file"):
            missing.append(f"{src}:{i}: listed image {clip_text(entry)!r} does not exist")
            continue
        if p.suffix.lower() not in IMG_EXTS:
            notes.append(FileNote(str(p), "unsupported_file", f"{src}:{i}: {clip_text(entry)} is "
                                  "not an image type medmtl reads; line ignored", "warning"))
            continue
        out.add(p.resolve())
    if missing:
        more = f"\n... and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise DataError("\n".join(missing[:20]) + more)
    return dedupe_stems(sorted(out), notes)


__all__ = ["IMG_EXTS", "DataError", "DatasetSpec", "label_path_for", "list_split_images",
           "load_data_yaml", "safe_load_yaml", "split_images", "split_source"]
