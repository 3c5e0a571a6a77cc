"""--arch auto: the per-stage probe, the split rule, the weight transfer, and the CLI run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medmtl.config import ModelConfig
from medmtl.engine.autobranch import (
    StageProfile,
    autocorrelation_time,
    choose_split,
    feature_similarity,
    linear_cka,
    stage_test,
    transfer_shared,
)
from medmtl.methods import build_config, check_method, parse_spec
from medmtl.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


class Toy(nn.Module):
    """Five linear "backbone stages". Both task losses read stage 2's output the same way (weight
    ``c``) and the last stage's output in opposite ways: early stages get agreeing gradients, the
    last two opposing ones -- conflict only in the late stages."""

    def __init__(self, c: float = 4.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stages = nn.ModuleList(nn.Linear(8, 8) for _ in range(5))
        self.u, self.v, self.c = torch.randn(8), torch.randn(8), c

    def losses(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        feats = {}
        for g, s in enumerate(self.stages):
            x = torch.tanh(s(x))
            feats[f"backbone.stage{g}"] = x
        common = self.c * (feats["backbone.stage2"] @ self.u).pow(2).mean()
        late = (feats["backbone.stage4"] @ self.v).mean()
        return {"detect": common + late, "classify": common - late}, feats

    def shared_stages(self) -> list[tuple[str, list[nn.Parameter]]]:
        return [(f"backbone.stage{g}", list(s.parameters())) for g, s in enumerate(self.stages)]


def test_probe_finds_the_late_conflict_and_the_rule_splits_there() -> None:
    toy = Toy()
    prof = StageProfile()
    for i in range(40):  # the probe's measurement over batches
        losses, _ = toy.losses(torch.randn(16, 8, generator=torch.Generator().manual_seed(i)))
        prof.add(losses, list(toy.parameters()), toy.shared_stages())
    cos = prof.means()
    assert list(cos) == [f"backbone.stage{g}" for g in range(5)]
    for k, v in cos.items():  # one value per step, whose mean is the profile
        assert len(prof.series[k]) == 40
        assert sum(prof.series[k]) / 40 == pytest.approx(v, abs=1e-9)
    assert min(cos[f"backbone.stage{g}"] for g in (0, 1, 2)) > 0.3, cos  # agree early
    assert max(cos[f"backbone.stage{g}"] for g in (3, 4)) < -0.99, cos  # oppose late
    arch, conflict, why = choose_split(cos, num_stages=5, threshold=0.0)
    assert (arch, conflict) == ("split2", 3) and "stage 3" in why  # stages 0..2 shared
    # the default rule (family-wise confidence 0.95 over the 40 steps) sees the same conflict
    assert choose_split(cos, 5, 0.0, prof.tests(0.0, 0.95), 0.95)[:2] == ("split2", 3)
    # a stricter threshold moves the split earlier, one above every cosine to split1; a toy
    # whose tasks never conflict stays shared
    assert choose_split(cos, 5, 0.99)[0] == "split1"
    assert choose_split({k: 0.5 for k in cos}, 5, 0.0)[0] == "shared"
    assert choose_split({**cos, "backbone.stage1": math.nan}, 5, 0.0)[0] == "split2"


def _ar1(rng: np.random.Generator, rho: float, shape: tuple[int, int]) -> np.ndarray:
    """Zero-mean AR(1) series (unit variance) along the last axis."""
    e = rng.normal(size=shape)
    x = np.empty(shape)
    x[..., 0] = e[..., 0]
    for i in range(1, shape[-1]):
        x[..., i] = rho * x[..., i - 1] + math.sqrt(1 - rho ** 2) * e[..., i]
    return x


def test_the_stage_test_is_the_t_test_of_batch_means_sized_to_the_autocorrelation() -> None:
    from scipy import stats

    rng = np.random.default_rng(0)
    # AR(1) with rho 0.8: integrated autocorrelation time (1 + rho) / (1 - rho) = 9
    assert autocorrelation_time(_ar1(rng, 0.8, (1, 100000))[0]) == pytest.approx(9.0, rel=0.1)
    assert autocorrelation_time(rng.normal(size=20000)) == pytest.approx(1.0, abs=0.1)
    steps = 0.05 * rng.normal(size=100) - 0.01
    tau = autocorrelation_time(steps)
    res = stage_test(steps, 0.0, 0.05)
    assert res["batch_steps"] == max(math.ceil(10 * tau), 10) and res["batches"] == \
        100 // res["batch_steps"]
    means = steps[100 - res["batches"] * res["batch_steps"]:].reshape(res["batches"], -1).mean(1)
    ref = stats.ttest_1samp(means, 0.0, alternative="less")
    assert res["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    se = means.std(ddof=1) / math.sqrt(len(means))
    assert res["upper"] == pytest.approx(means.mean() + stats.t.ppf(0.95, len(means) - 1) * se,
                                         rel=1e-9)
    # a series too short for its autocorrelation has no evidence
    short = stage_test(_ar1(rng, 0.95, (1, 60))[0] - 1.0, 0.0, 0.05)
    assert short["batches"] < 2 and short["p"] == 1.0 and short["upper"] == math.inf
    assert stage_test([-0.5], 0.0)["p"] == 1.0  # one step: no evidence of conflict


def test_the_auto_rule_false_split_rate_is_at_most_nominal() -> None:
    """No stage conflicts (zero-mean cosines, autocorrelated along the steps as in training):
    the rule splits at most 1 - confidence of the time; the old rule (each stage at 95 %, 10
    batch means) split far more often. A real conflict (mean -0.08 at stage 3, noise sd 0.1) is still found."""
    rng = np.random.default_rng(1)
    reps, stages, steps, level = 400, 5, 200, 0.05
    for rho in (0.0, 0.9):
        split = 0
        for _ in range(reps):
            x = 0.1 * _ar1(rng, rho, (stages, steps))
            tests = {f"backbone.stage{g}": stage_test(x[g], 0.0, level / stages)
                     for g in range(stages)}
            cos = {k: t["mean"] for k, t in tests.items()}
            split += choose_split(cos, stages, 0.0, tests, 1 - level)[0] != "shared"
        bound = level + 3 * math.sqrt(level * (1 - level) / reps)  # Monte Carlo allowance
        assert split / reps <= bound, (rho, split / reps)
    found = 0
    for _ in range(50):
        x = 0.1 * _ar1(rng, 0.5, (stages, steps))
        x[3] -= 0.08
        tests = {f"backbone.stage{g}": stage_test(x[g], 0.0, level / stages)
                 for g in range(stages)}
        found += choose_split({k: t["mean"] for k, t in tests.items()}, stages, 0.0, tests,
                              0.95)[:2] == ("split2", 3)
    assert found >= 40, found


def test_a_mean_below_the_threshold_by_noise_does_not_split() -> None:
    """The study's seed 2 probe: stage 4's mean cosine -0.001 split the network under the mean
    rule. With the confidence bound a noise-level mean stays shared and a clear one splits."""
    gen = torch.Generator().manual_seed(0)
    noise = 0.05 * torch.randn(5, 200, generator=gen, dtype=torch.float64)
    centre = torch.tensor([0.08, 0.04, 0.02, 0.006, -0.001], dtype=torch.float64)
    prof = StageProfile()
    for i in range(200):
        for g in range(5):
            k = f"backbone.stage{g}"
            prof.acc[f"sum/grad_cos/{k}"] = prof.acc.get(f"sum/grad_cos/{k}", 0.0) + float(
                centre[g] + noise[g, i] - noise[g].mean())  # exactly the centre on average
            prof.acc[f"n/grad_cos/{k}"] = i + 1
        prof.end_step()
    cos = prof.means()
    assert cos["backbone.stage4"] == pytest.approx(-0.001, abs=1e-9)
    assert choose_split(cos, 5, 0.0)[0] == "split3"  # the mean rule follows the noise
    tests = prof.tests(0.0, 0.95)
    arch, conflict, why = choose_split(cos, 5, 0.0, tests, 0.95)
    assert (arch, conflict) == ("shared", None)
    assert "family-wise confidence 95%" in why and "lowest: stage 4, mean -0.001, Holm p" in why
    clear = {**cos, "backbone.stage3": -0.2}
    tests["backbone.stage3"] = {**tests["backbone.stage3"], "p": 1e-6}
    arch, conflict, why = choose_split(clear, 5, 0.0, tests, 0.95)
    assert (arch, conflict) == ("split2", 3) and "Holm p 5e-06" in why


def test_feature_similarity_is_linear_cka() -> None:
    toy = Toy()
    losses, feats = toy.losses(torch.randn(32, 8, generator=torch.Generator().manual_seed(9)))
    sim = feature_similarity(losses, feats)
    # stage 3's feature gradients come from the opposed term only, exact negatives: CKA is 1
    # (sign-blind: the second signal tells related from unrelated, not agreeing from opposing);
    # the last stage's are the same vector for every image: constant, no CKA
    assert sim["backbone.stage3"] == pytest.approx(1.0, abs=1e-9)
    assert math.isnan(sim["backbone.stage4"])
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in list(sim.values())[:4])
    x = torch.randn(20, 5, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-9)  # rotation, scale
    assert linear_cka(x, torch.randn(20, 5, dtype=torch.float64)) < 0.6
    assert math.isnan(linear_cka(x, torch.ones(20, 3)))


@pytest.mark.parametrize("k", [1, 3])
def test_transfer_makes_split_compute_what_the_probe_computed(k: int) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="shared", size="n")
    shared = build_model(cfg).eval()
    split = build_model(cfg.model_copy(update={"arch": f"split{k}"})).eval()
    split.load_state_dict(transfer_shared(shared.state_dict(), k), strict=True)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = shared(x), split(x)
    assert torch.allclose(a["classify"], b["classify"], atol=1e-5)
    for p, q in zip(a["detect"], b["detect"], strict=True):
        assert torch.allclose(p, q, atol=1e-4 * float(p.abs().max()))
    # the two branches are copies, not one module
    assert split.det_body.stages[0].parameters().__next__() is not \
        split.cls_body.stages[0].parameters().__next__()


def test_auto_is_a_method_and_a_spec() -> None:
    check_method("auto")
    assert build_config("auto", {}).model.arch == "auto"
    assert parse_spec("auto:pcgrad")["model"]["arch"] == "auto"
    from typer.testing import CliRunner

    from medmtl.cli import app

    for cmd in ("train", "compare"):  # the probe's settings reach both commands
        out = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200"}).output
        assert "--auto-probe-steps" in out and "--auto-threshold" in out, cmd
        assert "--auto-confidence" in out, cmd


@pytest.mark.slow
def test_auto_trains_through_compare(synth_tiny: Path, tmp_path: Path,
                                     no_retime: list[list[Path]]) -> None:
    """`compare --methods auto` runs `medmtl train --method auto` in a subprocess (the CLI path):
    probe, choice, training, metrics, and the report's section (compare's closing re-timing is
    tests/test_compare.py's)."""
    from medmtl.experiments.compare import run_compare

    out = tmp_path / "cmp"
    over = {"epochs": 1, "imgsz": 64, "batch": 16, "workers": 0, "auto_probe_steps": 3}
    run_compare(str(synth_tiny), ["auto"], [0], out, overrides=over, jobs=1)
    run = out / "runs" / "auto-s0"
    rec = json.loads((run / "auto_branch.json").read_text())
    assert rec["probe_steps"] == 3 and rec["threshold"] == 0.0 and rec["confidence"] == 0.95
    assert set(rec["grad_cos"]) == {f"backbone.stage{g}" for g in range(5)}
    assert set(rec["feature_cka"]) <= set(rec["grad_cos"]) and rec["feature_cka"]
    for k, steps in rec["grad_cos_steps"].items():  # the evidence, step by step
        assert len(steps) == 3 and sum(steps) / 3 == pytest.approx(rec["grad_cos"][k], abs=1e-5)
        assert rec["grad_cos_test"][k]["batches"] == stage_test(steps, 0.0, 0.01)["batches"]
    # 3 steps are too few to test: no evidence, no split, and the reason says what to do
    assert rec["choice"] == choose_split(rec["grad_cos"], 5, 0.0, rec["grad_cos_test"],
                                         0.95)[0] == "shared"
    assert "raise --auto-probe-steps" in rec["reason"]
    assert f"arch: {rec['choice']}" in (run / "config.yaml").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classification"] is not None
    assert metrics["auto_branch"]["choice"] == rec["choice"]
    assert metrics["auto_branch"]["probe_steps"] == 3
    training = metrics["training"]  # the probe's time is part of the method's cost
    assert [st["stage"] for st in training["stages"]] == ["auto probe", "this run"]
    assert training["stages"][0]["seconds"] == rec["probe_seconds"] > 0
    assert training["seconds_total"] == pytest.approx(training["seconds"] + rec["probe_seconds"],
                                                      abs=0.02)
    assert not (run / "auto_probe").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["auto_branch"]["runs"][0]["choice"] == rec["choice"]


@pytest.mark.slow
def test_the_probe_counts_against_the_epoch_budget(synth_tiny: Path, tmp_path: Path) -> None:
    """96 images at batch 16: 6 steps per epoch. A 6-step probe is one of the 3 epochs, so auto
    trains 2 more (the same budget as a fixed split); a probe longer than the budget is refused
    before it runs; --no-auto-probe-in-budget makes it extra."""
    from medmtl.engine.autobranch import budget_epochs_used
    from medmtl.engine.trainer import train

    over = {"epochs": 3, "imgsz": 64, "batch": 16, "workers": 0, "seed": 0, "device": "cpu",
            "diag_steps": 0, "data": str(synth_tiny)}
    run = train(build_config("auto", {**over, "auto_probe_steps": 6, "out": str(tmp_path / "a")}),
                progress=False)
    rec = json.loads((run / "auto_branch.json").read_text())
    assert rec["probe_counts_in_epochs"] is True
    assert (rec["probe_epochs"], rec["probe_epochs_exact"]) == (1, 1.0)
    training = json.loads((run / "metrics.json").read_text())["training"]
    assert training["epochs"] == 2 and len((run / "history.csv").read_text().splitlines()) == 3
    assert training["stages"][0] == {**training["stages"][0], "stage": "auto probe", "epochs": 1}
    assert "epochs: 3" in (run / "config.yaml").read_text()  # the budget asked for, unchanged
    from medmtl.experiments.compare import _epochs_done

    assert _epochs_done(run) == 3  # compare's table: the probe's epoch counts as done
    with pytest.raises(ValueError, match=r"probe's 12 steps are 2\.0 epochs of the 1-epoch budget"
                       r".*--no-auto-probe-in-budget"):
        train(build_config("auto", {**over, "epochs": 1, "auto_probe_steps": 12,
                                    "out": str(tmp_path / "b")}), progress=False)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "auto_branch.json").write_text(json.dumps(
        {"probe_counts_in_epochs": False, "probe_epochs": 0, "probe_steps": 200}))
    assert budget_epochs_used(tmp_path / "c") == 0 == budget_epochs_used(tmp_path / "none")


def test_report_shows_the_probe_and_auto_against_fixed_splits(tmp_path: Path) -> None:
    from test_report import make_run

    from medmtl.report import write_report

    for seed in (0, 1):
        d = make_run(tmp_path, "auto", seed, 0.61, 0.87)
        make_run(tmp_path, "split2", seed, 0.60, 0.86)
        make_run(tmp_path, "detect", seed, 0.65, None)
        make_run(tmp_path, "classify", seed, None, 0.91)
        cos = {f"backbone.stage{g}": 0.3 - 0.15 * g for g in range(5)}  # conflict from stage 3
        arch, conflict, why = choose_split(cos, 5, 0.0)
        (d / "auto_branch.json").write_text(json.dumps({
            "threshold": 0.0, "choice": arch, "conflict_stage": conflict, "reason": why,
            "probe_steps": 200, "grad_cos": cos,
            "feature_cka": {k: 0.9 - 0.1 * g for g, k in enumerate(cos)}}))
    paths = write_report(tmp_path)
    md = paths["md"].read_text()
    assert "## Automatic branching (--arch auto)" in md
    assert "3: -0.150" in md and "split2" in md  # the evidence and the choice
    assert "| none |" in md  # records without a confidence: the mean rule
    summary = json.loads((tmp_path / "summary.json").read_text())["auto_branch"]
    assert [r["choice"] for r in summary["runs"]] == ["split2", "split2"]
    assert set(summary["compare"]) >= {"auto", "split2"}
    assert summary["compare"]["auto"]["delta_m"] > summary["compare"]["split2"]["delta_m"]
    assert (tmp_path / "plots" / "auto_branch.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("balancer", ["famo", "dwa"])
def test_the_probe_runs_the_balancers_own_updates(synth_tiny: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  balancer: str) -> None:
    """96 images at batch 16: 6 steps an epoch. A 7-step probe with auto:famo calls FAMO's
    after_step once per optimiser step (its weights move); with auto:dwa DWA's on_epoch_end runs
    once, after the first whole epoch."""
    from medmtl.balancing.dwa import DynamicWeightAverage as DWA
    from medmtl.balancing.famo import FAMO
    from medmtl.engine.autobranch import run_auto
    from medmtl.engine.trainer import Trainer

    calls: dict[str, int] = {"after_step": 0, "on_epoch_end": 0}
    for cls, name in ((FAMO, "after_step"), (DWA, "on_epoch_end")):
        real = getattr(cls, name)

        def spy(self: object, losses: object, _real: object = real, _name: str = name) -> None:
            calls[_name] += 1
            _real(self, losses)  # type: ignore[operator]

        monkeypatch.setattr(cls, name, spy)
    cfg = build_config(f"auto:{balancer}", {
        "data": str(synth_tiny), "out": str(tmp_path / "run"), "epochs": 3, "imgsz": 64,
        "batch": 16, "workers": 0, "seed": 0, "device": "cpu", "auto_probe_steps": 7})
    _, _, rec = run_auto(cfg, Trainer)
    assert rec["probe_steps"] == 7
    if balancer == "famo":
        assert calls["after_step"] == 7
    else:
        assert calls["on_epoch_end"] == 1
