"""Issue #15.5: conventions of the command line: --task-weights (train's --weights is refused
with the new name), --version, defaults in every --help, train's options in panels."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main
from _cli import run_main

import medmtl
from medmtl.cli import app
from medmtl.cli.options import PANEL_ORDER

COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]
# options whose absence means "off" / "not given": they have no default to show
OPTIONAL_INPUTS = {"--json", "--corrections", "--probs", "--runs", "--data", "--backbone",
                   "--backbone-weights", "--trusted", "--corruption", "--features",
                   "--task", "--view-class-weights", "--config", "--select-refs", "--shard",
                   "--latency-budget"}


def test_version_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        from medmtl.cli import main

        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert re.fullmatch(rf"medmtl {re.escape(medmtl.__version__)} \(torch \S+, Python \S+\)\n", out)


def test_train_weights_is_task_weights(tmp_path: Path, capsys) -> None:
    code, err = run_main(["train", "--data", str(tmp_path / "d.yaml"),
                          "--weights", "detect=1,classify=0.3"], capsys)
    assert code == 2
    assert err.strip() == ("error: Invalid value for --weights: is now --task-weights (task loss "
                           "weights, e.g. --task-weights detect=1,classify=0.3); --weights names "
                           "a checkpoint in val, predict and export")
    from medmtl.cli.train_cmds import build_train_config

    cfg = build_train_config("fixed", None, None, {"task_weights": "detect=1,classify=0.3"})
    assert cfg.balancer.weights == {"detect": 1.0, "classify": 0.3}


def test_every_option_shows_its_default() -> None:
    missing = []
    for name, cmd in COMMANDS.items():
        for p in cmd.params:
            if (p.param_type_name != "option" or p.name == "help" or p.hidden or p.required
                    or p.opts[0] in OPTIONAL_INPUTS):
                continue
            shown = p.show_default is not False and p.default is not None
            if not shown and "[default" not in (p.help or ""):
                missing.append(f"{name} {p.opts[0]}")
    assert missing == [], missing


def test_train_options_grouped_in_order() -> None:
    panels = [p.rich_help_panel for p in COMMANDS["train"].params
              if p.param_type_name == "option" and not p.hidden and p.name != "help"]
    assert {"Data", "Model", "Method", "Optimisation", "Run"} <= set(panels)
    order = [PANEL_ORDER.index(x) for x in panels]
    assert order == sorted(order), panels
