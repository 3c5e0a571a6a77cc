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

from medmtl.engine.tune import search_space, trial_overrides, tune
from medmtl.evaluation.selection import references_from
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


def test_tune_resumes_after_a_kill_and_feeds_compare(synth_tiny: Path, tmp_path: Path) -> None:
    import optuna
    from typer.testing import CliRunner

    from medmtl.cli import app

    out = tmp_path / "tune"
    over = {"epochs": 1, "imgsz": 64, "batch": 16, "workers": 0, "diag_steps": 0}
    first = tune(str(synth_tiny), ["gradnorm"], 1, out, overrides=over)
    assert len(first["methods"]["gradnorm"]["trials"]) == 1
    # a second trial killed mid-run: RUNNING in the database, its process gone
    study = optuna.load_study(study_name="gradnorm", storage=f"sqlite:///{out / 'tune.db'}")
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
    assert gn[1]["state"] == "FAIL"  # the killed one, then re-run with its own parameters
    assert gn[2]["params"] == params and gn[2]["state"] == "COMPLETE"

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


def test_a_resumed_search_draws_new_configurations(synth_tiny: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen in the real-data study: stopped after one gradnorm trial and resumed, the search
    drew the first trial's parameters again (the seeded sampler restarts its random sequence in
    a new process), so gradnorm got 2 distinct configurations of its budget of 3. A resumed
    search draws new ones, reproducibly, and a repeated configuration does not count."""
    import medmtl.engine.tune as tune_mod

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
