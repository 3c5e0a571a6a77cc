"""Configuration drift of finished runs: `compare` (and `tune`, through it) skips a run folder that
holds a metrics.json, so a folder trained with another configuration than the one now planned
(a re-tuned `<method>@tuned`, an edited override, another data YAML) would be reported as if it
were the planned run. `config_drift` lists the differences; `compare` keeps the run, warns once
per run naming them, and records them in compare.json (`config_drift`): delete the folder to
retrain it.

Only settings present in both configurations are compared (a run written by an older medmtl
lacks the newer fields, whose defaults leave training unchanged), and a few that do not change
what is trained are left out: where the run lives, how its data are loaded, and the
single-task references of Δm selection (filled in after planning)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console

from medmtl.errors import MedmtlError
from medmtl.yamlio import load_yaml

IGNORED = {"out", "workers", "cache", "device", "select_refs", "verify_images", "strict"}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _same(a: Any, b: Any) -> bool:
    numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
    if numbers:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def config_drift(run_dir: Path, cfg: Any) -> list[str]:
    """``["balancer.alpha: 2.146 in the run, 1.635 planned", ...]`` for a finished run whose
    config.yaml differs from the planned configuration `cfg` (a `TrainConfig`); [] when they agree
    or the run has no readable config.yaml."""
    try:
        saved = load_yaml(run_dir / "config.yaml", "config.yaml")
    except MedmtlError:  # missing, unreadable, or beyond the reader's limits
        return []
    if not isinstance(saved, dict):
        return []
    have, want = _flat(saved), _flat(cfg.model_dump(mode="json"))
    out = []
    for key in sorted(have.keys() & want.keys()):
        if key.split(".")[0] in IGNORED or _same(have[key], want[key]):
            continue
        out.append(f"{key}: {_short(have[key])} in the run, {_short(want[key])} planned")
    return out


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)[:60]


def warn_drift(plan: list[Any], console: Console) -> dict[str, list[str]]:
    """One warning per finished run of `plan` whose configuration drifted; returns them by name."""
    drift = {r.name: r.drift for r in plan if r.drift}
    for name, diffs in drift.items():
        console.print(f"warning: {name} finished with another configuration than planned "
                      f"({'; '.join(diffs[:4])}{'; ...' if len(diffs) > 4 else ''}): kept and "
                      "reported as it is; delete its folder to retrain it", soft_wrap=True,
                      markup=False, highlight=False)
    if drift:
        console.print(f"{len(drift)} finished run(s) with another configuration", markup=False)
    return drift
