"""Methods: presets and specs `arch:balancer[:key=value,...]`, their parsing, their one-line
errors, and a comparison of two specs through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medmtl.methods import build_config, parse_spec, run_name, split_methods


def test_spec_sets_arch_balancer_options_weights_and_lr() -> None:
    cfg = build_config("split2:gradnorm:alpha=0.5,lr=0.01")
    assert (cfg.model.arch, cfg.balancer.name, cfg.lr, cfg.method) == \
        ("split2", "gradnorm", 0.01, "split2:gradnorm:alpha=0.5,lr=0.01")
    assert cfg.balancer.model_dump()["alpha"] == 0.5 and cfg.balancer.model_dump()["lr"] == 0.025
    cfg = build_config("shared:cagrad:c=0.2")
    assert cfg.balancer.model_dump()["cagrad_c"] == 0.2
    cfg = build_config("shared:fixed:w_classify=0.3")
    assert cfg.balancer.weights == {"detect": 1.0, "classify": 0.3}
    # overrides still win over the spec, as over a preset
    assert build_config("dual:fixed", {"lr": 0.5}).lr == 0.5


@pytest.mark.parametrize(("spec", "needle"), [
    ("shared:gradnorm:beta=1", "unknown key 'beta'; gradnorm specs take alpha, epochs, "
                               "freeze_trunk_epochs, lr, view_labels, w_classify, w_detect, "
                               "w_distill"),
    ("shared:nope", "unknown balancer 'nope'"),
    ("triple:fixed", "unknown arch 'triple'; known: detach, dual, shared, single, split<k>"),
    ("shared", None),  # a preset name: no spec error
    ("split2:cagrad:c=high", "c='high' is not a number"),
    (":fixed", "expected arch:balancer"),
])
def test_spec_errors_name_the_problem(spec: str, needle: str | None) -> None:
    if needle is None:
        with pytest.raises(KeyError, match="unknown method 'shared'"):
            build_config(spec)
        return
    with pytest.raises(ValueError, match=needle):
        parse_spec(spec)


def test_spec_values_within_their_ranges_are_taken() -> None:
    """#24: the range checks refuse nan/inf/1e30 (tests/test_fuzz_surfaces.py) but take every
    value inside the range, its bounds included."""
    from medmtl.methods import MAX_SPEC_CHARS

    over = parse_spec("staged:freeze_trunk_epochs=10000")
    assert over["freeze_trunk_epochs"] == 10000 and isinstance(over["freeze_trunk_epochs"], int)
    assert parse_spec("staged:freeze_trunk_epochs=0")["freeze_trunk_epochs"] == 0
    assert parse_spec("shared:fixed:lr=10,w_classify=1000")["lr"] == 10
    assert parse_spec("shared:gradnorm:alpha=0")["balancer"]["alpha"] == 0
    assert parse_spec("shared:famo:reforward=false")["balancer"]["reforward"] == 0.0
    assert build_config("shared:famo:reforward=false").balancer.model_dump()["reforward"] is False
    spec = "shared:fixed:w_classify=0.3,lr=0.001" + "0" * (MAX_SPEC_CHARS - 36)
    assert len(spec) == MAX_SPEC_CHARS and parse_spec(spec)["lr"] == 0.001
    with pytest.raises(ValueError, match=f"more than the {MAX_SPEC_CHARS}"):
        parse_spec(spec + "0")
    with pytest.raises(ValueError, match="c and cagrad_c set the same option"):
        parse_spec("shared:cagrad:c=0.3,cagrad_c=0.2")


def test_split_methods_and_run_names() -> None:
    assert split_methods("fixed, shared:fixed:w_detect=1,w_classify=0.3,dual,"
                         "split2:gradnorm:alpha=0.5") == \
        ["fixed", "shared:fixed:w_detect=1,w_classify=0.3", "dual", "split2:gradnorm:alpha=0.5"]
    assert run_name("split2:gradnorm:alpha=0.5,lr=0.01") == "split2_gradnorm_alpha=0.5_lr=0.01"
    assert run_name("fixed") == "fixed"


def _flat(text: str) -> str:
    """CLI output without the error box's borders and line wrapping."""
    return " ".join(text.replace("│", " ").split())


def test_compare_runs_specs_from_the_cli(synth_tiny: Path, tmp_path: Path,
                                         no_retime: list[list[Path]]) -> None:
    from typer.testing import CliRunner

    from medmtl.cli import app

    runner = CliRunner()
    out = tmp_path / "cmp"
    base = ["compare", "--data", str(synth_tiny), "--seeds", "1", "--epochs", "1", "--imgsz", "64",
            "--workers", "0", "--out", str(out), "--jobs", "2"]
    bad = runner.invoke(app, [*base, "--methods", "fixed,shared:gradnorm:alfa=0.5"])
    assert bad.exit_code == 2 and "unknown key 'alfa'" in _flat(bad.output)
    assert not (out / "runs").exists()  # checked before any run starts

    # a second spec's run is planned with its own folder and options (not trained: one trained
    # run shows the path from the command line to config.yaml and the report)
    from medmtl.experiments.compare import plan_runs

    [cag] = plan_runs(str(synth_tiny), ["shared:cagrad:c=0.3"], [0], out, {"epochs": 1})
    assert cag.run_dir.name == "shared_cagrad_c=0.3-s0"
    assert cag.cfg.balancer.model_dump() == {"name": "cagrad",
                                             "weights": {"detect": 1.0, "classify": 1.0},
                                             "cagrad_c": 0.3}
    res = runner.invoke(app, [*base, "--methods", "split2:gradnorm:alpha=0.5"])
    assert res.exit_code == 0, res.output
    runs = out / "runs"
    cfg = yaml.safe_load((runs / "split2_gradnorm_alpha=0.5-s0" / "config.yaml").read_text())
    assert cfg["method"] == "split2:gradnorm:alpha=0.5" and cfg["model"]["arch"] == "split2"
    assert cfg["balancer"]["name"] == "gradnorm" and cfg["balancer"]["alpha"] == 0.5
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"split2:gradnorm:alpha=0.5"}
    assert [len(c) for c in no_retime] == [1]  # the run handed to the re-timing, once
