"""Loss balancers: one file per method, registered in BALANCERS (see docs/ARCHITECTURE.md).

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

from collections.abc import Sequence

from medmtl.balancing import cagrad, dwa, famo, fixed, gradnorm, pcgrad, uncertainty
from medmtl.balancing.base import BALANCERS, Balancer
from medmtl.config import BalancerConfig

__all__ = ["BALANCERS", "Balancer", "create_balancer", "cagrad", "dwa", "famo", "fixed",
           "gradnorm", "pcgrad", "uncertainty"]


def create_balancer(tasks: Sequence[str], cfg: BalancerConfig | None = None) -> Balancer:
    """The balancer `cfg.name` for these tasks (default config: `fixed` with unit weights)."""
    cfg = cfg if cfg is not None else BalancerConfig()
    return BALANCERS.create(cfg.name, tasks, cfg)
