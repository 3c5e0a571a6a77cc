"""A finished run folder whose configuration is not the planned one (a re-tuned `<method>@tuned`,
another override) is kept by `compare` but named in a warning and in compare.json: it is never
silently reported as the planned run."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from medmtl.experiments.compare import plan_runs
from medmtl.experiments.drift import config_drift, warn_drift


def _finish(plan_run, **changes) -> None:
    """Write the run folder as a finished run trained with `changes` to its planned config."""
    cfg = plan_run.cfg.model_copy(deep=True)
    for k, v in changes.items():
        if k == "alpha":
            cfg.balancer.alpha = v
        else:
            setattr(cfg, k, v)
    plan_run.run_dir.mkdir(parents=True)
    cfg.to_yaml(plan_run.run_dir / "config.yaml")
    (plan_run.run_dir / "metrics.json").write_text("{}")


def test_finished_runs_with_another_configuration_are_named(synth_tiny: Path, tmp_path: Path) -> None:
    over = {"epochs": 3, "imgsz": 64, "lr": 0.002, "workers": 0}
    variants = {"gradnorm@tuned": ("gradnorm", {"balancer": {"alpha": 1.5}})}
    first = plan_runs(str(synth_tiny), ["fixed", "gradnorm@tuned"], [0, 1], tmp_path, over, variants)
    by = {r.name: r for r in first}
    _finish(by["fixed-s0"], workers=3)  # as planned: loader workers change nothing trained
    _finish(by["fixed-s1"], lr=0.004)
    _finish(by["gradnorm@tuned-s0"], alpha=2.1455680991172583)  # tuned again since

    plan = plan_runs(str(synth_tiny), ["fixed", "gradnorm@tuned"], [0, 1], tmp_path, over, variants)
    status = {r.name: (r.status, r.drift) for r in plan}
    assert status["fixed-s0"] == ("finished", [])
    assert status["fixed-s1"] == ("finished", ["lr: 0.004 in the run, 0.002 planned"])
    assert status["gradnorm@tuned-s0"] == (
        "finished", ["balancer.alpha: 2.146 in the run, 1.5 planned"])
    assert status["gradnorm@tuned-s1"] == ("new", [])

    buf = io.StringIO()
    drift = warn_drift(plan, Console(file=buf, width=300))
    assert set(drift) == {"fixed-s1", "gradnorm@tuned-s0"}
    lines = buf.getvalue().splitlines()
    assert lines[0] == ("warning: fixed-s1 finished with another configuration than planned "
                        "(lr: 0.004 in the run, 0.002 planned): kept and reported as it is; "
                        "delete its folder to retrain it")
    assert lines[-1] == "2 finished run(s) with another configuration"
    json.dumps(drift)  # compare.json records it as is


def test_a_run_written_by_an_older_medmtl_is_not_drift(tmp_path: Path) -> None:
    """Fields the old config lacks (added since, at defaults that change nothing) are not
    differences; a missing or unreadable config.yaml is none either."""
    from medmtl.methods import build_config

    cfg = build_config("fixed", {"data": "d.yaml", "epochs": 3})
    old = cfg.model_dump(mode="json")
    for k in ("init_from", "teacher", "freeze_trunk_epochs"):
        old.pop(k)
    import yaml

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert config_drift(tmp_path, cfg) == []
    assert config_drift(tmp_path / "nowhere", cfg) == []
    (tmp_path / "config.yaml").write_text("[unclosed")
    assert config_drift(tmp_path, cfg) == []
