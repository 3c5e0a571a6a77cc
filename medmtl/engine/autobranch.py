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
   directions on average) at family-wise confidence ``auto_confidence`` (default 0.95). Each
   stage gets a one-sided t test of its mean (`stage_test`) over batch means of the per-step
   cosines, each batch at least `TAU_MULTIPLE` autocorrelation times long (consecutive steps are
   correlated: the weights move little between them); the stages' p-values are Holm-adjusted,
   so the chance that a network with no conflicting stage is split is at most 1 - confidence
   (checked by simulation in the tests, with autocorrelated zero-mean cosines). A probe too short
   for its autocorrelation has fewer than 2 batches: no evidence, no split (the reason says so).
   ``auto_confidence`` 0: the mean alone. Stages before g are shared and g onwards duplicated:
   ``split<g-1>`` (`split<k>` shares the stem and k stages), clamped to split1 when the stem or
   stage 1 conflicts. No such stage: stay ``shared``.
4. **Continue.** The chosen model is built and loaded from the probe's weights
   (`transfer_shared`: trunk stages to the trunk, each later stage to both task branches, neck and
   heads as they are); the run then trains the epochs of ``--epochs`` the probe left (or all of
   them with ``auto_probe_in_budget`` off), recorded in ``<run>/auto_branch.json`` with the
   profile, the threshold and the choice.

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

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from medmtl.engine.plugin_api import PLUGINS, MethodPlugin, TrainStep
from medmtl.evaluation.interference import gradient_interference
from medmtl.evaluation.multiple import holm
from medmtl.fileio import atomic_write_text

AUTO = "auto"
RECORD = "auto_branch.json"
SIMILARITY_PROBES = 8
BATCHES = 10  # at most this many batch means of the per-step cosines
TAU_MULTIPLE = 10  # a batch spans at least this many autocorrelation times (simulation-checked)
_STAGE = re.compile(r"backbone\.stage(\d+)$")


class StageProfile:
    """Gradient cosine per shared stage, step by step. ``acc`` has the training loop's format
    (``sum/grad_cos/<stage>``, ``n/grad_cos/<stage>``): the probe hands it to `loop.micro_step`,
    which measures with `gradient_interference` before the balancer's backward, then calls
    `end_step`; `add` measures the same way on given losses. ``series`` holds one value per
    stage and step (the mean of that step's measurements)."""

    def __init__(self) -> None:
        self.acc: dict[str, Any] = {}
        self.series: dict[str, list[float]] = {}
        self._seen: dict[str, tuple[float, int]] = {}

    def add(self, losses: Mapping[str, Tensor], shared: Sequence[Any],
            stages: list[tuple[str, list[Any]]]) -> None:
        for k, v in gradient_interference(losses, shared, stages).items():
            if isinstance(v, float) and math.isfinite(v):
                self.acc[f"sum/{k}"] = self.acc.get(f"sum/{k}", 0.0) + v
                self.acc[f"n/{k}"] = self.acc.get(f"n/{k}", 0) + 1
        self.end_step()

    def end_step(self) -> None:
        """Move what ``acc`` gained since the last call into ``series`` (one value per stage)."""
        pre = "n/grad_cos/"
        for key, n in list(self.acc.items()):
            if not key.startswith(pre):
                continue
            name = key[len(pre):]
            total, seen_total = self.acc[f"sum/grad_cos/{name}"], self._seen.get(name, (0.0, 0))
            if n > seen_total[1]:
                self.series.setdefault(name, []).append(
                    (total - seen_total[0]) / (n - seen_total[1]))
                self._seen[name] = (total, n)

    def means(self) -> dict[str, float]:
        pre = "sum/grad_cos/"
        return {k[len(pre):]: v / self.acc[f"n/grad_cos/{k[len(pre):]}"]
                for k, v in self.acc.items() if k.startswith(pre)}

    def tests(self, threshold: float, confidence: float) -> dict[str, dict[str, float]]:
        """`stage_test` of every stage; the displayed bound at the Bonferroni level
        (1 - confidence) / stages, the level each stage is held to."""
        alpha = (1.0 - confidence) / max(1, len(self.series))
        return {k: stage_test(v, threshold, alpha) for k, v in self.series.items()}


def autocorrelation_time(values: Sequence[float]) -> float:
    """Integrated autocorrelation time of a series (1 for independent steps), by Geyer's initial
    positive sequence: autocorrelations summed in adjacent pairs while a pair's sum stays
    positive. At least 1."""
    x = np.asarray(values, dtype=float)
    n = x.size
    x = x - x.mean()
    if n < 4 or not np.any(x):
        return 1.0
    f = np.fft.rfft(x, 2 * n)
    ac = np.fft.irfft(f * np.conj(f))[:n]
    ac = ac / ac[0]
    pairs = 0.0
    for k in range(n // 2 - 1):
        g = ac[2 * k + 1] + ac[2 * k + 2]
        if g <= 0:
            break
        pairs += g
    return max(1.0, 1.0 + 2.0 * pairs)


def stage_test(values: Sequence[float], threshold: float = 0.0,
               alpha: float = 0.05) -> dict[str, float]:
    """One-sided test that a stage's mean per-step cosine lies below ``threshold``, by batch
    means whose length follows the series' autocorrelation: each batch holds at least
    `TAU_MULTIPLE` autocorrelation times (`autocorrelation_time`) and there are at most `BATCHES`
    of them, so that the batch means are close to independent; the t test runs over the batch
    means (df = batches - 1). Returns ``mean``, ``p`` (1: no evidence, e.g. fewer than 2
    batches), ``upper`` (the upper confidence bound at 1 - ``alpha``; +inf without evidence),
    ``batches``, ``batch_steps`` and ``tau``."""
    x = np.asarray(values, dtype=float)
    n = x.size
    out = {"mean": float(x.mean()) if n else math.nan, "p": 1.0, "upper": math.inf,
           "batches": 0, "batch_steps": 0, "tau": math.nan}
    if n < 2:
        return out
    tau = autocorrelation_time(x)
    length = max(math.ceil(TAU_MULTIPLE * tau), math.ceil(n / BATCHES))
    b = n // length
    out.update(tau=round(tau, 3), batch_steps=length, batches=b)
    if b < 2:
        return out
    means = x[n - b * length:].reshape(b, length).mean(1)  # the latest steps, whole batches
    mean, se = float(means.mean()), float(means.std(ddof=1)) / math.sqrt(b)
    out["mean_batches"] = mean
    if se <= 1e-12 * max(1.0, abs(mean)):
        out["p"], out["upper"] = (0.0, mean) if mean < threshold else (1.0, mean)
        return out
    out["p"] = float(stats.t.cdf((mean - threshold) / se, b - 1))
    out["upper"] = mean + float(stats.t.ppf(1.0 - alpha, b - 1)) * se
    return out


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
    ``feats[name]`` (B, ...), one row per image. Stages that take no gradient (frozen by
    --freeze-stages, and everything before them) are left out."""
    a, b = list(losses)[:2]
    names = [n for n in feats if feats[n].requires_grad]
    ga = torch.autograd.grad(losses[a], [feats[n] for n in names], retain_graph=True,
                             allow_unused=True)
    gb = torch.autograd.grad(losses[b], [feats[n] for n in names], retain_graph=True,
                             allow_unused=True)
    return {n: (math.nan if x is None or y is None else linear_cka(x, y))
            for n, x, y in zip(names, ga, gb, strict=True)}


def choose_split(cosines: Mapping[str, float], num_stages: int, threshold: float,
                 tests: Mapping[str, Mapping[str, float]] | None = None,
                 confidence: float = 0.0) -> tuple[str, int | None, str]:
    """(arch, conflict stage or None, reason) from the mean cosine per ``backbone.stage<g>``, or,
    given ``tests`` (`stage_test` per stage), from their p-values Holm-adjusted over the stages:
    the family-wise chance of splitting a network whose stages do not conflict is at most
    1 - ``confidence``."""
    per_stage = sorted((int(m.group(1)), k, v) for k, v in cosines.items()
                       if (m := _STAGE.match(k)) and math.isfinite(v))
    alpha = 1.0 - confidence
    if tests is not None:
        ps = [float((tests.get(k) or {}).get("p", 1.0)) for _, k, _ in per_stage]
        adj = dict(zip([k for _, k, _ in per_stage], holm(ps) if ps else [], strict=True))
        what = (f"below {threshold:g} at family-wise confidence {confidence:.0%} over the "
                f"{len(per_stage)} stages (Holm; batch means sized to the steps' "
                "autocorrelation)")
        hit = next(((g, k, v) for g, k, v in per_stage if adj[k] < alpha), None)
    else:
        what, adj = f"below {threshold:g}", {}
        hit = next(((g, k, v) for g, k, v in per_stage if v < threshold), None)

    def detail(k: str, v: float) -> str:
        if tests is None:
            return f"mean {v:.3f}"
        t = tests.get(k) or {}
        return (f"mean {v:.3f}, Holm p {adj[k]:.3g}, {int(t.get('batches', 0))} batch(es) of "
                f"{int(t.get('batch_steps', 0))} steps")

    if hit is None:
        why = f"no stage has a mean gradient cosine {what}"
        if per_stage:
            g, k, v = min(per_stage, key=lambda e: e[2])
            why += f"; lowest: stage {g}, {detail(k, v)}"
            if tests is not None and int((tests.get(k) or {}).get("batches", 0)) < 2:
                why += (" (the probe is too short for its steps' autocorrelation to test: "
                        "raise --auto-probe-steps)")
        return "shared", None, why
    conflict, key, mean = hit
    k = min(max(1, conflict - 1), num_stages - 2)
    why = (f"stage {conflict} is the shallowest with a mean gradient cosine {what} "
           f"({detail(key, mean)}): stages 0..{k} shared, the rest per task")
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


def _similarity_step(t: TrainStep, batch: dict[str, Any]) -> dict[str, float]:
    model = t.model
    saved = [(b, b.clone()) for b in model.buffers()]
    outs: dict[str, Tensor] = {}
    hooks = [stage.register_forward_hook(
        lambda m, i, o, g=g: outs.__setitem__(f"backbone.stage{g}", o))
        for g, stage in zip(model.trunk.global_indices(), model.trunk.stages, strict=True)]
    try:
        losses, _ = t.forward_losses(batch, {"detect": True, "classify": True}, model)
        sim = feature_similarity(losses, outs)
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for b, s in saved:
                b.copy_(s)
    model.zero_grad(set_to_none=True)
    return sim


def probe(t: TrainStep, steps: int) -> dict[str, Any]:
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
        sums: dict[str, float] = {}
        counted = 0
        for batch in t.data.train_loader(epoch, 0):
            if not _both_tasks(batch):
                continue
            seen = True
            if done % every == 0:
                for k, v in _similarity_step(t, batch).items():
                    if math.isfinite(v):
                        sims.setdefault(k, []).append(v)
            # one training step, cosines measured at every step; the balancer's own updates
            # (FAMO's logits, ...) as in training
            losses = t.train_step(batch, {"detect": True, "classify": True}, prof.acc)
            prof.end_step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            counted += 1
            done += 1
            if done >= steps:
                break
        else:  # a whole epoch went by: the balancer's epoch update (DWA's weights)
            if counted:
                t.balancer.on_epoch_end({k: v / counted for k, v in sums.items()})
        if not seen:
            raise ValueError("--arch auto: no training batch has labels of both tasks")
        epoch += 1
    return {"profile": prof, "feature_cka": {k: sum(v) / len(v) for k, v in sims.items()},
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
        exact = cfg.auto_probe_steps / t.steps_per_epoch  # the probe's length in epochs
        used = round(exact) if cfg.auto_probe_in_budget else 0
        if cfg.epochs - used < 1:
            raise ValueError(
                f"--arch auto: the probe's {cfg.auto_probe_steps} steps are {exact:.1f} epochs "
                f"of the {cfg.epochs}-epoch budget ({t.steps_per_epoch} steps per epoch), which "
                "leaves none to train: lower --auto-probe-steps, raise --epochs, or make the "
                "probe extra (--no-auto-probe-in-budget)")
        found = probe(t, cfg.auto_probe_steps)
        num_stages = t.model.trunk.num_stages
        state = {k: v.detach().cpu().clone() for k, v in t.model.state_dict().items()}
    finally:
        t.close()
    shutil.rmtree(pcfg.out, ignore_errors=True)
    conf, prof = cfg.auto_confidence, found["profile"]
    cosines = prof.means()
    tests = prof.tests(cfg.auto_threshold, conf) if conf > 0 else None
    arch, conflict, why = choose_split(cosines, num_stages, cfg.auto_threshold, tests, conf)
    rule = ("split at the shallowest stage whose mean gradient cosine is below the threshold"
            + (" at the given family-wise confidence over the stages (one-sided t tests of batch "
               "means sized to the autocorrelation of the per-step cosines, Holm over the "
               "stages)" if tests is not None else "") + "; none: shared")

    def finite(v: float) -> float | None:
        return v if math.isfinite(v) else None

    record = {"rule": rule, "threshold": cfg.auto_threshold, "confidence": conf,
              "choice": arch, "conflict_stage": conflict, "reason": why,
              "probe_steps": found["steps"], "probe_seconds": found["seconds"],
              "probe_counts_in_epochs": cfg.auto_probe_in_budget, "probe_epochs": used,
              "probe_epochs_exact": round(exact, 3), "balancer": cfg.balancer.name,
              "grad_cos": cosines,
              "grad_cos_upper": None if tests is None else {
                  k: finite(v["upper"]) for k, v in tests.items()},
              "grad_cos_test": None if tests is None else {
                  k: {"p": v["p"], "batches": v["batches"], "batch_steps": v["batch_steps"],
                      "tau": finite(v["tau"])} for k, v in tests.items()},
              "feature_cka": found["feature_cka"],
              "feature_cka_note": "linear CKA of the two tasks' per-image gradients w.r.t. each "
                                  "stage's output (second signal; not used by the rule)",
              "grad_cos_steps": {k: [round(v, 6) for v in vals]
                                 for k, vals in prof.series.items()}}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / RECORD, json.dumps(record, indent=2))
    out = cfg.model_copy(deep=True)
    out.model.arch = arch
    if arch != "shared":
        state = transfer_shared(state, int(arch[len("split"):]))
    budget = (f"{used} of the {cfg.epochs} epochs" if cfg.auto_probe_in_budget else
              "extra to --epochs")
    print(f"auto: {arch} ({why}; {found['steps']} probe steps, {budget}; {run_dir / RECORD})",
          file=sys.stderr)
    return out, state, record


def _read_record(run_dir: Path) -> dict[str, Any] | None:
    """``<run_dir>/auto_branch.json``, or None for a run that is not `--arch auto`."""
    path = Path(run_dir) / RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def auto_branch_record(run_dir: Path) -> dict[str, Any]:
    """metrics.json's `auto_branch` block (the choice; the evidence stays in RECORD), or {}."""
    rec = _read_record(run_dir)
    if rec is None:
        return {}
    return {"auto_branch": {k: rec.get(k) for k in ("choice", "conflict_stage", "threshold",
                                                    "confidence", "probe_steps")}}


def probe_stages(run_dir: Path) -> list[dict[str, Any]]:
    """The probe of an `--arch auto` run as a training stage (metrics.json `training.stages`): its
    seconds count in the run's ``seconds_total``, the method's cost. [] for other runs."""
    rec = _read_record(run_dir)
    if rec is None:
        return []
    return [{"stage": "auto probe", "run": str(Path(run_dir).resolve()), "method": AUTO,
             "arch": "shared", "steps": rec.get("probe_steps"),
             "epochs": rec.get("probe_epochs", 0), "seconds": rec.get("probe_seconds")}]


def budget_epochs_used(run_dir: Path) -> int:
    """Epochs of ``--epochs`` that the run's probe took (`--auto-probe-in-budget`); 0 for other
    runs and for a probe that was extra."""
    rec = _read_record(run_dir) or {}
    return int(rec.get("probe_epochs") or 0) if rec.get("probe_counts_in_epochs") else 0


@PLUGINS.register(AUTO)
class AutoBranch(MethodPlugin):
    """`--arch auto` (the `auto` preset): before the run, the probe chooses the arch and the
    weights to start from; the run's record (`auto_branch.json`) then says what the probe spent
    and chose. Used by a run whose arch is `auto`, and on resume by the run folder that holds the
    record."""

    name = AUTO

    @classmethod
    def uses(cls, cfg: Any) -> bool:
        return cfg.model.arch == AUTO or (Path(cfg.out) / RECORD).is_file() or super().uses(cfg)

    @classmethod
    def prepare(cls, cfg: Any, trainer_cls: type[Any]) -> tuple[Any, dict[str, Tensor] | None]:
        if cfg.model.arch != AUTO:  # chosen before (the record): nothing to probe
            return cfg, None
        out, state, _ = run_auto(cfg, trainer_cls)
        return out, state

    def budget_epochs(self, run_dir: Path) -> int:
        return budget_epochs_used(run_dir)

    def stages_before(self, run_dir: Path) -> list[dict[str, Any]]:
        return probe_stages(run_dir)

    def record(self, run_dir: Path) -> dict[str, Any]:
        return auto_branch_record(run_dir)
