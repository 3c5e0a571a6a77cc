"""`medmtl tune`: the same number of trials per method over its own hyper-parameters on val, a
killed search resumes (a dead trial's parameters run again), and the best configurations feed a
comparison whose report shows the tuned values and the trace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medmtl.evaluation.selection import references_from
from medmtl.experiments.tune import search_space, trial_overrides, tune
from medmtl.methods import build_config


def test_search_space_per_method() -> None:
    assert set(search_space(build_config("gradnorm"))) == {"lr", "alpha"}
    assert set(search_space(build_config("shared:cagrad"))) == {"lr", "cagrad_c"}
    assert set(search_space(build_config("fixed"))) == {"lr", "w_classify"}
    assert set(search_space(build_config("detect"))) == {"lr"}
    lo, hi, log = search_space(build_config("fixed", {"lr": 0.004}))["lr"]
    assert (lo, hi, log) == (0.001, 0.016, True)
    assert trial_overrides({"lr": 0.01, "w_classify": 0.2, "alpha": 0.5}) == {
        "lr": 0.01, "balancer": {"weights": {"detect": 1.0, "classify": 0.2}, "alpha": 0.5}}


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.heavy  # 107 s; resuming a search is also proven by test_tune_postgres.py's lost server
def test_tune_resumes_after_a_kill_and_feeds_compare(synth_tiny: Path, tmp_path: Path) -> None:
    import optuna
    from typer.testing import CliRunner

    from medmtl.cli import app

    out = tmp_path / "tune"
    out.mkdir()
    # a search stopped by a kill: trial 0 finished (entered as Optuna records one; its low score
    # keeps the best a trial trained below), trial 1 killed mid-run: RUNNING, its process gone
    study = optuna.create_study(study_name="gradnorm", storage=f"sqlite:///{out / 'tune.db'}",
                                direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 1e-3, "alpha": 1.0}, value=-1e6, distributions={
            "lr": optuna.distributions.FloatDistribution(5e-4, 8e-3, log=True),
            "alpha": optuna.distributions.FloatDistribution(0.0, 3.0)}))
    killed = study.ask()
    params = {"lr": killed.suggest_float("lr", 5e-4, 8e-3, log=True),
              "alpha": killed.suggest_float("alpha", 0.0, 3.0)}
    killed.set_user_attr("host", __import__("socket").gethostname())
    killed.set_user_attr("pid", _dead_pid())

    runner = CliRunner()
    res = runner.invoke(app, ["tune", "--data", str(synth_tiny), "--methods", "gradnorm,fixed",
                              "--untuned", "detect,classify",
                              "--trials", "2", "--seeds", "1", "--out", str(out), "--epochs", "1",
                              "--imgsz", "64", "--batch", "16", "--workers", "0",
                              "--diag-steps", "0", "--jobs", "2"])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "tune.json").read_text())
    for method in ("gradnorm", "fixed"):  # the same budget: 2 complete trials each
        states = [t["state"] for t in result["methods"][method]["trials"]]
        assert states.count("COMPLETE") == 2, states
    gn = result["methods"]["gradnorm"]["trials"]
    assert gn[0]["value"] == -1e6  # the finished trial is kept, not run again
    assert gn[1]["state"] == "FAIL"  # the killed one, then re-run with its own parameters
    assert gn[2]["params"] == params and gn[2]["state"] == "COMPLETE"
    assert gn[2]["drawn_by"] == "re-run" and result["methods"]["gradnorm"]["best"]["trial"] == 2

    best = result["methods"]["gradnorm"]["best"]
    cfg = yaml.safe_load((out / "runs" / "gradnorm@tuned-s0" / "config.yaml").read_text())
    assert cfg["method"] == "gradnorm@tuned"
    assert cfg["balancer"]["alpha"] == best["params"]["alpha"] and cfg["lr"] == best["params"]["lr"]
    # Δm selection: the references ran before any trial; their val figures (where not 0, which a
    # 1-epoch detector may score) are every later run's references
    ref = {t: out / "runs" / f"{t}-s0" / "metrics.json" for t in ("detect", "classify")}
    trial0 = out / "trials" / "fixed" / "t0" / "config.yaml"  # (metrics.json is re-timed later)
    assert max((p.parent / "history.csv").stat().st_mtime for p in ref.values()) \
        <= trial0.stat().st_mtime
    want = references_from({t: [json.loads(p.read_text())] for t, p in ref.items()})
    assert want.keys() >= {"accuracy", "macro_f1"}  # the view task scores > 0 after an epoch
    full = len(want) == 4
    assert result["select_refs"] == (pytest.approx(want, rel=1e-12) if full else None)
    assert cfg["select"] == "delta-m"
    assert cfg["select_refs"] == (pytest.approx(want, rel=1e-12) if full else {})
    sel = json.loads((out / "runs" / "gradnorm@tuned-s0" / "metrics.json").read_text())[
        "selection"]
    assert sel["references_used"] is full
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"gradnorm@tuned", "fixed@tuned", "detect", "classify"}
    md = (out / "report.md").read_text()
    assert "## Tuning" in md and "gradnorm@tuned" in md and (out / "plots/tune_trace.png").exists()
    # configurations (the budget), completed and failed trials: gradnorm's killed one failed
    assert "| gradnorm@tuned | 2 | 2 | 1 |" in md and "| fixed@tuned | 2 | 2 | 0 |" in md
    # the sampler as it ran: a budget of 2 is all random start-up; the re-run is named apart
    text = " ".join(md.split())
    assert "searched by Optuna's TPE sampler, whose first 2 trials are random draws (" in text
    assert "fixed: 2 drawn at random, 0 by TPE" in text and ", 1 re-run" in text


def test_a_resumed_search_draws_new_configurations(synth_tiny: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen in the real-data study: stopped after one gradnorm trial and resumed, the search
    drew the first trial's parameters again (the seeded sampler restarts its random sequence in
    a new process), so gradnorm got 2 distinct configurations of its budget of 3. A resumed
    search draws new ones, reproducibly, and a repeated configuration does not count."""
    import medmtl.experiments.tune as tune_mod

    def fake_objective(method, data, base, out, space):  # no training: a score from the params
        def run(trial):
            p = {k: trial.suggest_float(k, lo, hi, log=log) for k, (lo, hi, log) in space.items()}
            return -abs(p["alpha"] - 1.0)
        return run

    monkeypatch.setattr(tune_mod, "_objective", fake_objective)
    runs = {}
    for name, steps in (("once", [3]), ("resumed", [1, 2, 3]), ("again", [1, 2, 3])):
        for n in steps:
            res = tune(str(synth_tiny), ["gradnorm"], n, tmp_path / name, console=None)
        runs[name] = [tuple(sorted(t["params"].items())) for t in res["methods"]["gradnorm"]["trials"]]
    assert len(runs["once"]) == len(set(runs["once"])) == 3
    assert len(runs["resumed"]) == len(set(runs["resumed"])) == 3  # was 2 distinct of 3
    assert runs["resumed"][0] == runs["once"][0]  # the first process is seeded as before
    assert runs["resumed"] == runs["again"]  # and the resumed sequence is reproducible

    # a configuration completed twice (as in that study's database) counts once
    import optuna

    study = optuna.load_study(study_name="gradnorm", storage=f"sqlite:///{tmp_path / 'once' / 'tune.db'}")
    study.enqueue_trial(dict(runs["once"][0]))
    study.optimize(fake_objective("gradnorm", "", {}, tmp_path, {"lr": (5e-4, 8e-3, True),
                                                                  "alpha": (0.0, 3.0, False)}),
                   n_trials=1)
    res = tune(str(synth_tiny), ["gradnorm"], 4, tmp_path / "once", console=None)
    trials = res["methods"]["gradnorm"]["trials"]
    assert len(trials) == 5 and len({tuple(sorted(t["params"].items())) for t in trials}) == 4


def _scripted_objective(fail: dict[int, BaseException | float]):  # noqa: ANN202
    """A fake `_objective` (no training): trial N raises or returns `fail[N]`, the others score
    by their parameters."""
    def make(method, data, base, out, space):  # noqa: ANN001, ANN202
        def run(trial):  # noqa: ANN001, ANN202
            p = {k: trial.suggest_float(k, lo, hi, log=log) for k, (lo, hi, log) in space.items()}
            what = fail.get(trial.number)
            if isinstance(what, BaseException):
                raise what
            return what if what is not None else -abs(p["alpha"] - 1.0)
        return run
    return make


def test_failed_trials_are_counted_and_the_search_goes_on(
        synth_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22 item 9: a diverging configuration neither aborts the search nor is silently
    replaced: it is counted as failed, with its reason, and the search still completes the
    asked number of configurations. The sampler that ran is said truthfully."""
    import io

    from rich.console import Console

    import medmtl.experiments.tune as tune_mod
    from medmtl.errors import NonFiniteError

    monkeypatch.setattr(tune_mod, "_objective", _scripted_objective({
        1: NonFiniteError("weights turned non-finite (NaN/inf) at epoch 1"),
        2: float("nan")}))
    console = Console(file=io.StringIO(), width=300)
    res = tune(str(synth_tiny), ["gradnorm"], 3, tmp_path / "a", console=console)
    r = res["methods"]["gradnorm"]
    assert [t["state"] for t in r["trials"]] == ["COMPLETE", "FAIL", "FAIL", "COMPLETE",
                                                  "COMPLETE"]
    assert r["completed"] == 3 and r["failed"] == 2
    assert [t["failed"] for t in r["trials"] if t["state"] == "FAIL"] == [
        "NonFiniteError: weights turned non-finite (NaN/inf) at epoch 1",
        "its val score is nan (not finite)"]
    assert r["best"]["trial"] in (0, 3, 4)
    text = console.file.getvalue()
    assert "gradnorm: trial 1 failed, counted as failed, the search goes on: NonFiniteError" in text
    assert "gradnorm: 3/3 configurations completed, 2 trial(s) failed" in text
    # a budget of 3 is inside TPE's random start-up: every draw was random, and it says so
    assert "sampler: random (a budget of 3 is within TPE's 3 random start-up trials" in text
    assert r["sampler"]["name"] == "random" and r["sampler"]["drawn"] == {"random": 5}
    assert "sampler: random (5 drawn at random, 0 by TPE)" in text
    saved = json.loads((tmp_path / "a" / "tune.json").read_text())["methods"]["gradnorm"]
    assert saved["failed"] == 2 and saved["sampler"]["text"] == "5 drawn at random, 0 by TPE"

    # a budget past the start-up: TPE draws once 5 trials finished, and the record counts it
    monkeypatch.setattr(tune_mod, "_objective", _scripted_objective({}))
    console = Console(file=io.StringIO(), width=300)
    r = tune(str(synth_tiny), ["gradnorm"], 7, tmp_path / "b", console=console)["methods"][
        "gradnorm"]
    assert [t["drawn_by"] for t in r["trials"]] == ["random"] * 5 + ["TPE"] * 2
    assert r["sampler"]["name"] == "TPE" and r["sampler"]["drawn"] == {"random": 5, "TPE": 2}
    assert "sampler: TPE (first 5 trials random)" in console.file.getvalue()


def test_a_search_that_keeps_failing_stops_and_says_what_happened(
        synth_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As many failures as the budget stop a process's search: with what completed, the best of
    it and the counts; with nothing completed, one line (exit 1) after tune.json is written."""
    import io

    from rich.console import Console

    import medmtl.experiments.tune as tune_mod
    from medmtl.experiments.tune import TuneFailed

    monkeypatch.setattr(tune_mod, "_objective", _scripted_objective(
        {n: ValueError("loss exploded") for n in range(1, 10)}))
    console = Console(file=io.StringIO(), width=300)
    r = tune(str(synth_tiny), ["gradnorm"], 2, tmp_path / "a", console=console)["methods"][
        "gradnorm"]
    assert [t["state"] for t in r["trials"]] == ["COMPLETE", "FAIL", "FAIL"]
    assert r["completed"] == 1 and r["failed"] == 2 and r["best"]["trial"] == 0
    assert "gradnorm: stopped after 2 failed trials in this process; 1 of 2 configurations " \
        "completed" in console.file.getvalue()

    monkeypatch.setattr(tune_mod, "_objective", _scripted_objective(
        {n: ValueError("loss exploded") for n in range(10)}))
    with pytest.raises(TuneFailed) as e:
        tune(str(synth_tiny), ["fixed"], 2, tmp_path / "b", console=None)
    assert "no trial of fixed completed" in str(e.value) and e.value.exit_code == 1
    r = json.loads((tmp_path / "b" / "tune.json").read_text())["methods"]["fixed"]
    assert r["completed"] == 0 and r["failed"] == 2 and r["best"] is None
    assert [t["failed"] for t in r["trials"]] == ["ValueError: loss exploded"] * 2


@pytest.mark.timeout(120)
def test_a_trial_left_running_by_an_unknown_process_does_not_block_the_search(
        synth_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A RUNNING trial with no heartbeat and no record of its process (it died right after
    starting, or an older medmtl ran it) holds a place of the budget: once it is older than the
    grace period it is failed and its place run again, instead of a wait without end."""
    import optuna

    import medmtl.experiments.tune as tune_mod

    study = optuna.create_study(study_name="gradnorm", storage=f"sqlite:///{tmp_path / 'tune.db'}",
                                direction="maximize")
    study.ask()  # RUNNING, no attributes, no heartbeat
    monkeypatch.setattr(tune_mod, "GRACE_S", 0)
    monkeypatch.setattr(tune_mod, "_objective", _scripted_objective({}))
    r = tune(str(synth_tiny), ["gradnorm"], 1, tmp_path, console=None)["methods"]["gradnorm"]
    assert [t["state"] for t in r["trials"]] == ["FAIL", "COMPLETE"] and r["completed"] == 1
    assert r["trials"][0]["failed"] == "left running with no heartbeat and no record of its process"
