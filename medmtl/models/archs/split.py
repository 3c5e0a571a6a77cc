"""`split<k>`: the stem and the next k backbone stages shared, the later stages duplicated per task
(`split2` on CSP-Darknet shares the stride-2/4/8 stages and duplicates the stride-16/32 ones).
The bare name `split` means `split2`."""

from __future__ import annotations

import copy

from ...config import ModelConfig
from ..base import ARCHS
from ..branched import BranchedModel, need_backbone_view, need_tasks
from ..sizes import config_backbone


@ARCHS.register("split", pattern=r"split(?P<k>\d+)")
def split(cfg: ModelConfig, k: int | str = 2) -> BranchedModel:
    k = int(k)
    need_tasks(cfg, f"split{k}", 2)
    need_backbone_view(cfg, f"split{k}")
    bb = config_backbone(cfg)
    # the stem (stage 0) is always shared; k counts the stages after it
    if bb.sequential and not 1 <= k <= bb.num_stages - 2:
        raise ValueError(f"split{k}: k must be in 1..{bb.num_stages - 2} for backbone {bb.name!r} "
                         f"(the stem plus k of its stages {', '.join(bb.stage_names[1:])} are "
                         "shared; at least one stage must stay per task)")
    trunk, tail = bb.split(k + 1)
    return BranchedModel(cfg, f"split{k}", trunk, tail, copy.deepcopy(tail))
