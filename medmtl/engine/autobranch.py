"""``--arch auto``: a short probe picks where the two tasks' backbones should branch.

1. **Probe.** The `shared` model trains ``auto_probe_steps`` optimiser steps (the run's balancer,
   optimiser and warm-up schedule, batches with both tasks only). At every step
   `gradient_interference` measures the cosine between the detect and classify gradients on each
   backbone stage's parameters (``grad_cos/backbone.stage<g>``; NaN steps skipped); the profile is
   the mean per stage (`StageProfile`).
2. **Second signal** (reported, not used by the rule): at ``SIMILARITY_PROBES`` evenly spaced
   steps, the linear CKA (Kornblith et al., ICML 2019) between the two tasks' per-image gradients
   with respect to each stage's output features (`feature_similarity`): how alike the changes of
   the representation that the two tasks ask for are, image by image (1: the same up to scale and
   rotation, 0: unrelated). It adapts the representation-similarity signal of Vandenhende et al.
   (BMVC 2020, arXiv 2019) -- who compare the features of separately trained single-task networks
   -- to one shared network, where the features are the same for both tasks and only what the
   tasks ask of them differs.
3. **Rule** (`choose_split`): the conflict starts at the shallowest stage g whose mean cosine is
   below ``auto_threshold`` (default 0: the tasks pull that stage's weights in opposing
   directions on average). Stages before g are shared and g onwards duplicated: ``split<g-1>``
   (`split<k>` shares the stem and k stages), clamped to split1 when the stem or stage 1
   conflicts. No stage below the threshold: stay ``shared``.
4. **Continue.** The chosen model is built and loaded from the probe's weights
   (`transfer_shared`: trunk stages to the trunk, each later stage to both task branches, neck and
   heads as they are); the run then trains its full ``--epochs`` (the probe's steps are extra,
   recorded in ``<run>/auto_branch.json`` with the profile, the threshold and the choice).

Cost: ``auto_probe_steps`` shared-model steps, each with two extra per-task backward passes for
the cosines, plus two backward passes to the stage features at each similarity probe.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from medmtl.engine.evaluate import move_targets, prepare_images
from medmtl.engine.loop import micro_step
from medmtl.evaluation.interference import gradient_interference
from medmtl.fileio import atomic_write_text

AUTO = "auto"
RECORD = "auto_branch.json"
SIMILARITY_PROBES = 8
_STAGE = re.compile(r"backbone\.stage(\d+)$")


class StageProfile:
    """Mean gradient cosine per shared stage over the steps measured. ``acc`` has the training
    loop's format (``sum/grad_cos/<stage>``, ``n/grad_cos/<stage>``): the probe hands it to
    `loop.micro_step`, which measures with `gradient_interference` before the balancer's
    backward; `add` measures the same way on given losses."""

    def __init__(self) -> None:
        self.acc: dict[str, Any] = {}

    def add(self, losses: Mapping[str, Tensor], shared: Sequence[Any],
            stages: list[tuple[str, list[Any]]]) -> None:
        for k, v in gradient_interference(losses, shared, stages).items():
            if isinstance(v, float) and math.isfinite(v):
                self.acc[f"sum/{k}"] = self.acc.get(f"sum/{k}", 0.0) + v
                self.acc[f"n/{k}"] = self.acc.get(f"n/{k}", 0) + 1

    def means(self) -> dict[str, float]:
        pre = "sum/grad_cos/"
        return {k[len(pre):]: v / self.acc[f"n/grad_cos/{k[len(pre):]}"]
                for k, v in self.acc.items() if k.startswith(pre)}


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA of two (n, p), (n, q) matrices (rows: samples), in [0, 1]; NaN when a side is
    constant."""
    x = x.detach().flatten(1).double()
    y = y.detach().flatten(1).double()
    x, y = x - x.mean(0), y - y.mean(0)
    k, m = x @ x.T, y @ y.T
    den = math.sqrt(float((k * k).sum()) * float((m * m).sum()))
    return float((k * m).sum()) / den if den > 0 else math.nan


def feature_similarity(losses: Mapping[str, Tensor], feats: Mapping[str, Tensor]) -> dict[str, float]:
    """Per stage: linear CKA between the two tasks' gradients with respect to the stage's output
    ``feats[name]`` (B, ...), one row per image."""
    a, b = list(losses)[:2]
    names = list(feats)
    ga = torch.autograd.grad(losses[a], [feats[n] for n in names], retain_graph=True,
                             allow_unused=True)
    gb = torch.autograd.grad(losses[b], [feats[n] for n in names], retain_graph=True,
                             allow_unused=True)
    return {n: (math.nan if x is None or y is None else linear_cka(x, y))
            for n, x, y in zip(names, ga, gb, strict=True)}


def choose_split(cosines: Mapping[str, float], num_stages: int, threshold: float
                 ) -> tuple[str, int | None, str]:
    """(arch, conflict stage or None, reason) from the mean cosine per ``backbone.stage<g>``."""
    per_stage = sorted((int(m.group(1)), v) for k, v in cosines.items()
                       if (m := _STAGE.match(k)) and math.isfinite(v))
    conflict = next((g for g, v in per_stage if v < threshold), None)
    if conflict is None:
        return "shared", None, f"no stage has a mean gradient cosine below {threshold:g}"
    k = min(max(1, conflict - 1), num_stages - 2)
    why = (f"stage {conflict} is the shallowest with a mean gradient cosine below {threshold:g} "
           f"({dict(per_stage)[conflict]:.3f}): stages 0..{k} shared, the rest per task")
    if conflict - 1 < 1:
        why += " (clamped: split1 is the earliest branching point)"
    return f"split{k}", conflict, why


def transfer_shared(state: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
    """A `shared` model's state dict -> `split<k>`'s: trunk stages > k go to both task branches."""
    out: dict[str, Tensor] = {}
    pat = re.compile(r"trunk\.stages\.(\d+)\.(.*)")
    for key, v in state.items():
        m = pat.match(key)
        if m is None or int(m.group(1)) <= k:
            out[key] = v
            continue
        j = int(m.group(1)) - k - 1
        out[f"det_body.stages.{j}.{m.group(2)}"] = v
        out[f"cls_body.stages.{j}.{m.group(2)}"] = v.clone()
    return out


def _both_tasks(batch: dict[str, Any]) -> bool:
    return bool(batch["det_mask"].any()) and bool(batch["view_mask"].any())


def _similarity_step(t: Any, batch: dict[str, Any]) -> dict[str, float]:
    model = t.model
    saved = [(b, b.clone()) for b in model.buffers()]
    outs: dict[str, Tensor] = {}
    hooks = [stage.register_forward_hook(
        lambda m, i, o, g=g: outs.__setitem__(f"backbone.stage{g}", o))
        for g, stage in zip(model.trunk.global_indices(), model.trunk.stages, strict=True)]
    try:
        out = model(prepare_images(batch["images"], t.device, False))
        model.take_shared_features()  # (GradNorm's fast path leaves them; not used here)
        losses = t.criterion(out, move_targets(batch, t.device),
                             {"detect": True, "classify": True}, t.comm)
        sim = feature_similarity(losses, outs)
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for b, s in saved:
                b.copy_(s)
    model.zero_grad(set_to_none=True)
    return sim


def probe(t: Any, steps: int) -> dict[str, Any]:
    """Train the trainer ``t`` (a `shared` model) ``steps`` optimiser steps; return the profile."""
    if not t.cfg.diag_per_stage:
        raise ValueError("the probe's config must set diag_per_stage")
    t.model.train()
    prof = StageProfile()
    sims: dict[str, list[float]] = {}
    every = max(1, steps // SIMILARITY_PROBES)
    done, epoch, t0 = 0, 0, time.perf_counter()
    while done < steps:
        seen = False
        for batch in t.data.train_loader(epoch, 0):
            if not _both_tasks(batch):
                continue
            seen = True
            if done % every == 0:
                for k, v in _similarity_step(t, batch).items():
                    if math.isfinite(v):
                        sims.setdefault(k, []).append(v)
            present = {"detect": True, "classify": True}
            losses, _ = micro_step(t, batch, present, 0, 1, prof.acc)  # cosines every step
            t._optimizer_step(1, list(losses.values()))
            done += 1
            if done >= steps:
                break
        if not seen:
            raise ValueError("--arch auto: no training batch has labels of both tasks")
        epoch += 1
    return {"grad_cos": prof.means(), "feature_cka": {k: sum(v) / len(v) for k, v in sims.items()},
            "steps": done, "seconds": round(time.perf_counter() - t0, 2)}


def run_auto(cfg: Any, trainer_cls: Any
             ) -> tuple[Any, dict[str, Tensor], dict[str, Any]]:
    """Probe (a `shared` run of ``trainer_cls`` in ``<out>/auto_probe``, removed afterwards),
    choose, and return the run's config with the chosen arch, the state dict to start from, and
    the record (also written to ``<out>/auto_branch.json``)."""
    run_dir = Path(cfg.out)
    if len(cfg.model.tasks) != 2:
        raise ValueError("--arch auto needs both tasks (detect and classify)")
    pcfg = cfg.model_copy(deep=True)
    pcfg.model.arch, pcfg.out, pcfg.diag_per_stage = "shared", str(run_dir / "auto_probe"), True
    if Path(pcfg.out).exists():
        shutil.rmtree(pcfg.out)  # a probe a killed run left: start it again
    t = trainer_cls(pcfg, progress=False)
    try:
        if t.comm.active:
            raise ValueError("--arch auto runs its probe in one process; train without --devices")
        found = probe(t, cfg.auto_probe_steps)
        num_stages = t.model.trunk.num_stages
        state = {k: v.detach().cpu().clone() for k, v in t.model.state_dict().items()}
    finally:
        t.close()
    shutil.rmtree(pcfg.out, ignore_errors=True)
    arch, conflict, why = choose_split(found["grad_cos"], num_stages, cfg.auto_threshold)
    record = {"rule": "split at the shallowest stage whose mean gradient cosine is below the "
                      "threshold; none: shared", "threshold": cfg.auto_threshold,
              "choice": arch, "conflict_stage": conflict, "reason": why,
              "probe_steps": found["steps"], "probe_seconds": found["seconds"],
              "probe_counts_in_epochs": False, "balancer": cfg.balancer.name,
              "grad_cos": found["grad_cos"], "feature_cka": found["feature_cka"],
              "feature_cka_note": "linear CKA of the two tasks' per-image gradients w.r.t. each "
                                  "stage's output (second signal; not used by the rule)"}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / RECORD, json.dumps(record, indent=2))
    out = cfg.model_copy(deep=True)
    out.model.arch = arch
    if arch != "shared":
        state = transfer_shared(state, int(arch[len("split"):]))
    print(f"auto: {arch} ({why}; {found['steps']} probe steps; {run_dir / RECORD})",
          file=sys.stderr)
    return out, state, record


def auto_branch_record(run_dir: Path) -> dict[str, Any]:
    """metrics.json's `auto_branch` block (the choice; the evidence stays in RECORD), or {}."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return {}
    rec = json.loads(path.read_text())
    return {"auto_branch": {k: rec.get(k) for k in ("choice", "conflict_stage", "threshold",
                                                    "probe_steps")}}

