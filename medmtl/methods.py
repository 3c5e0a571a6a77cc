"""Methods: the named presets that `--method` and `compare --methods` take, and `build_config`.

A preset only sets model.arch / model.view_source / balancer.*; everything else is shared so that
methods are compared on the same data, budget and evaluation. Every registered balancer is also a
preset of its own (a shared backbone with that balancer), so a balancer plug-in needs no entry here.
"""

from __future__ import annotations

from typing import Any

from medmtl.balancing import BALANCERS, resolve_config
from medmtl.config import TrainConfig, merge_dicts

PRESETS: dict[str, dict[str, Any]] = {
    "original": {"model": {"arch": "shared", "view_source": "neck8"},
                 "balancer": {"name": "fixed", "weights": {"detect": 1.0, "classify": 0.1}}},
    "fixed": {"model": {"arch": "shared"}, "balancer": {"name": "fixed"}},
    "gradnorm": {"model": {"arch": "shared"}, "balancer": {"name": "gradnorm"}},
    "uncertainty": {"model": {"arch": "shared"}, "balancer": {"name": "uncertainty"}},
    "dwa": {"model": {"arch": "shared"}, "balancer": {"name": "dwa"}},
    "pcgrad": {"model": {"arch": "shared"}, "balancer": {"name": "pcgrad"}},
    "cagrad": {"model": {"arch": "shared"}, "balancer": {"name": "cagrad"}},
    "famo": {"model": {"arch": "shared"}, "balancer": {"name": "famo"}},
    "dual": {"model": {"arch": "dual"}, "balancer": {"name": "fixed"}},
    "split2": {"model": {"arch": "split2"}, "balancer": {"name": "fixed"}},
    "detach": {"model": {"arch": "detach"}, "balancer": {"name": "fixed"}},
    "detect": {"model": {"arch": "single", "tasks": ["detect"]}, "balancer": {"name": "fixed"}},
    "classify": {"model": {"arch": "single", "tasks": ["classify"]}, "balancer": {"name": "fixed"}},
}


def presets() -> dict[str, dict[str, Any]]:
    """The presets above, then one per registered balancer that has none (in registry order)."""
    out = dict(PRESETS)
    for name in BALANCERS.names():
        out.setdefault(name, {"model": {"arch": "shared"}, "balancer": {"name": name}})
    return out


def method_names() -> list[str]:
    return list(presets())


def build_config(method: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- preset(method) <- overrides (nested dicts), validated, with the balancer's options
    resolved (its defaults filled in, so config.yaml records every value the run used)."""
    data: dict[str, Any] = TrainConfig().model_dump()
    if method is not None:
        known = presets()
        if method not in known:
            raise KeyError(f"unknown method {method!r}; known: {', '.join(known)}")
        data = merge_dicts(data, known[method])
        data["method"] = method
    if overrides:
        data = merge_dicts(data, overrides)
    cfg = TrainConfig.model_validate(data)
    cfg.balancer = resolve_config(cfg.balancer)
    return cfg


__all__ = ["PRESETS", "build_config", "method_names", "presets"]
