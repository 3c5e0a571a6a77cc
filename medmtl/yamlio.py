"""The one YAML reader of medmtl: `load_yaml` is `yaml.safe_load` with limits, used for every YAML
the tool reads (dataset YAMLs, `train --config`, a run's config.yaml, the report's and the
comparison's reads of it).

Limits: the file's size, the nesting depth, and the number of values once aliases are expanded.
An alias bomb (``a: &a [x, x, ...]``, ``b: &b [*a, *a, ...]``, ...) is a few hundred bytes on disk
and builds in no time (PyYAML shares the aliased objects), but every walk of the result (config
merging, pydantic validation, hashing) visits its billions of leaves: the walk here stops at
`MAX_YAML_NODES` and the file is refused in one line naming it. A self-referencing alias
(``a: &a [*a]``) is refused the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from medmtl.errors import InputError, clip_text

MAX_YAML_BYTES = 1 << 20  # a dataset YAML or a config is a few lines: 1 MiB is far beyond
MAX_YAML_NODES = 100_000  # values after alias expansion
MAX_YAML_DEPTH = 50


def load_yaml(path: str | Path, what: str = "YAML file",
              error: Callable[[str], Exception] = InputError, max_bytes: int = MAX_YAML_BYTES,
              max_nodes: int = MAX_YAML_NODES, max_depth: int = MAX_YAML_DEPTH) -> Any:
    """`yaml.safe_load` of `path` within the limits above. Every failure (unreadable, a folder,
    not UTF-8, bad syntax, too big, too deep, too many values) raises ``error(message)``, one line
    that starts with the path and names `what` the file was meant to be (``"dataset YAML"``,
    ``"--config YAML"``)."""
    path = Path(path)
    try:
        is_dir, size = path.is_dir(), path.stat().st_size
    except (OSError, ValueError) as e:  # missing, a name the OS refuses (too long, a NUL byte)
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise error(f"{path}: cannot read the {what} ({reason})") from None
    if is_dir:
        raise error(f"{path}: is a folder; the {what} must be a file")
    if size > max_bytes:
        raise error(f"{path}: {size} bytes, more than the {max_bytes} a {what} may have")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise error(f"{path}: nested too deeply to read (more than {max_depth} levels)") \
            from None
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror or type(e).__name__})") \
            from None
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as e:
        first = str(e).strip().splitlines()
        raise error(f"{path}: not a valid YAML file: {clip_text(' '.join(first[:4]), 300)}") \
            from None
    stack: list[tuple[Any, int]] = [(raw, 0)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > max_nodes:
            raise error(f"{path}: more than {max_nodes} values once YAML aliases are expanded "
                        "(an alias bomb?)")
        if depth > max_depth:
            raise error(f"{path}: nested more than {max_depth} levels deep")
        if isinstance(node, dict):
            stack += [(v, depth + 1) for kv in node.items() for v in kv]
        elif isinstance(node, list):
            stack += [(v, depth + 1) for v in node]
    return raw


def load_yaml_mapping(path: str | Path, what: str = "YAML file",
                      error: Callable[[str], Exception] = InputError) -> dict[str, Any]:
    """`load_yaml` whose top level must be a mapping (an empty file is ``{}``)."""
    raw = load_yaml(path, what, error)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{path}: the {what} must hold a mapping (key: value lines) at the top "
                    f"level, got {type(raw).__name__}")
    return raw


__all__ = ["MAX_YAML_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "load_yaml", "load_yaml_mapping"]
