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


# options several commands take, and where one deliberately reads otherwise (and why)
SHARED = ("--imgsz", "--data", "--device", "--weights")
DIFFERENT = {("synth", "--imgsz"): "the side of the images it generates, not the model's input",
             ("export", "--weights"): "export reads checkpoints only, no exported graph"}


def _plain(text: str | None) -> str:
    """An option's help without its default note (defaults differ: 320, the checkpoint's)."""
    return re.sub(r"\s*\\?\[default: [^\]]*\]$", "", text or "")


def test_shared_options_read_the_same() -> None:
    """#24.14b: --imgsz, --data, --device and --weights read the same in every command that takes
    them: the same help text (bar the default), the same required marker."""
    seen: dict[str, dict[str, tuple[str, bool]]] = {o: {} for o in SHARED}
    for name, cmd in COMMANDS.items():
        for p in cmd.params:
            flag = next((o for o in p.opts if o in SHARED), None)
            if flag and not p.hidden and (name, flag) not in DIFFERENT:
                seen[flag][name] = (_plain(p.help), bool(p.required))
    assert set(seen["--imgsz"]) == {"train", "compare", "tune", "val", "predict", "export",
                                    "audit", "demo"}
    assert set(seen["--data"]) == {"train", "compare", "tune", "val", "audit", "split"}
    assert set(seen["--device"]) == {"train", "compare", "tune", "val", "predict", "audit"}
    assert set(seen["--weights"]) == {"val", "predict"}
    for flag, by_cmd in seen.items():
        texts = {t for t, _ in by_cmd.values()}
        assert len(texts) == 1, (flag, by_cmd)
    assert seen["--imgsz"]["val"][0] == ("Square image side the model sees, in pixels (a multiple "
                                         "of 32, at least 32)")
    assert {r for _, r in seen["--data"].values()} == {True}  # required everywhere
    assert {r for _, r in seen["--imgsz"].values()} == {False}
    assert {r for _, r in seen["--device"].values()} == {False}
    # --weights: val needs one; predict falls back to the shipped model (its default note)
    assert seen["--weights"]["val"][1] and not seen["--weights"]["predict"][1]


IMGSZ_ARGS = {"train": [], "compare": [], "tune": [], "val": ["--weights", "w.pt"],
              "predict": ["--source", "s.png"], "export": ["--weights", "w.pt"], "audit": [],
              "demo": []}


@pytest.mark.parametrize(("value", "fix"), [
    ("100", "Input should be a multiple of 32; got 100, use --imgsz 96 or --imgsz 128"),
    ("0", "Input should be greater than or equal to 32; got 0, use --imgsz 32 or more"),
])
def test_imgsz_refused_in_the_same_words(value: str, fix: str, tmp_path: Path, capsys) -> None:
    """Every command that takes --imgsz checks it as train does and says so in the same line
    (val used to fail in a traceback on 100, export in another, predict in other words)."""
    for cmd, extra in IMGSZ_ARGS.items():
        data = [] if cmd in ("predict", "export", "demo") else ["--data", str(tmp_path / "d.yaml")]
        code, err = run_main([cmd, *data, *extra, "--imgsz", value, "--out",
                              str(tmp_path / cmd)], capsys)
        assert (code, err.strip()) == (2, f"error: Invalid value for --imgsz: {fix}"), cmd
        assert not (tmp_path / cmd).exists()


@pytest.mark.parametrize("cmd", ["train", "compare", "tune"])
def test_data_required_like_val(cmd: str, capsys) -> None:
    code, err = run_main([cmd, "--epochs", "1"], capsys)
    assert (code, err.strip()) == (2, "error: Missing option '--data'.")
    code, err = run_main(["val", "--weights", "w.pt"], capsys)
    assert (code, err.strip()) == (2, "error: Missing option '--data'.")


def test_auto_probe_help_agrees_with_the_budget() -> None:
    """#24.14a: the probe's steps count against --epochs by default (--auto-probe-in-budget);
    --auto-probe-steps' help said the opposite."""
    helps = {p.opts[0]: p.help or "" for p in COMMANDS["train"].params if p.opts}
    steps, budget = helps["--auto-probe-steps"], helps["--auto-probe-in-budget"]
    assert "not counted" not in steps
    assert "count against --epochs, see --auto-probe-in-budget" in steps
    assert "[default: auto-probe-in-budget]" in budget
    assert "--no-auto-probe-in-budget: the probe is extra to --epochs" in budget
