"""Loss balancers: one file per method, each registering itself in BALANCERS (docs/ARCHITECTURE.md).

Every module in this folder whose name does not start with `_` is imported here, so a new balancer
is one file: a `Balancer` subclass with its `name`, its `Options` (a `BalancerOptions` model) and
`@BALANCERS.register(name)`. It is then a `--balancer` value, a `--method` preset (shared backbone)
and gets a CLI flag per option.

| name          | paper                          | backward passes per two-task step       |
|---------------|--------------------------------|-----------------------------------------|
| `fixed`       | weighted sum                   | 1                                       |
| `uncertainty` | Kendall, Gal & Cipolla 2018    | 1                                       |
| `dwa`         | Liu, Johns & Davison 2019      | 1                                       |
| `gradnorm`    | Chen et al. 2018               | 1 + K partial (to the last shared W)    |
| `pcgrad`      | Yu et al. 2020                 | K                                       |
| `cagrad`      | Liu et al. 2021                | K                                       |
| `famo`        | Liu et al. 2023                | 1 (+ the trainer's optional re-forward) |
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence

from medmtl.balancing.base import (
    BALANCERS,
    Balancer,
    BalancerOptions,
    option_keys,
    parse_options,
    resolve_config,
)
from medmtl.config import BalancerConfig

__all__ = ["BALANCERS", "Balancer", "BalancerOptions", "balancer_class", "create_balancer",
           "option_keys", "parse_options", "resolve_config"]


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


_discover()


def balancer_class(name: str) -> type[Balancer]:
    """The registered class `name` (KeyError listing the known names otherwise)."""
    return BALANCERS.get(name)  # type: ignore[return-value]


def create_balancer(tasks: Sequence[str], cfg: BalancerConfig | None = None) -> Balancer:
    """The balancer `cfg.name` for these tasks (default config: `fixed` with unit weights)."""
    cfg = cfg if cfg is not None else BalancerConfig()
    return BALANCERS.create(cfg.name, tasks, cfg)
