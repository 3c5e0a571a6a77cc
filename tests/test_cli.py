"""The command line: every command is listed, and the main ones run end to end in-process."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from medmtl.cli import app

runner = CliRunner()

COMMANDS = ["synth", "audit", "split", "train", "val", "predict", "export", "compare", "report",
            "demo"]


def test_help_lists_every_command() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for c in COMMANDS:
        assert c in res.output


def test_audit_real_data(real_data: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["audit", "--data", str(real_data), "--json", str(tmp_path / "a.json")])
    assert res.exit_code == 0, res.output
    a = json.loads((tmp_path / "a.json").read_text())
    text = json.dumps(a)
    assert "aGdjwqtqa8Kb-unnamed_1_6.mp4-40" in text and "bmRlwqVuacKY-unnamed_1_3.mp4-28" in text


def test_train_val_export_predict_cli(synth_tiny: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--data", str(synth_tiny), "--method", "gradnorm",
                              "--epochs", "1", "--imgsz", "64", "--workers", "0", "--out", str(run),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "mAP@0.5" in res.output and (run / "metrics.json").exists()
    cfg = (run / "config.yaml").read_text()
    assert "name: gradnorm" in cfg and "method: gradnorm" in cfg

    res = runner.invoke(app, ["val", "--weights", str(run / "weights/best.pt"), "--data",
                              str(synth_tiny), "--out", str(tmp_path / "val"), "--workers", "0",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "val/metrics.json").read_text())["images"] == 32

    res = runner.invoke(app, ["export", "--weights", str(run / "weights/best.pt")])
    assert res.exit_code == 0, res.output
    assert (run / "weights/best.onnx").exists()

    images = synth_tiny.parent / "valid" / "images"
    res = runner.invoke(app, ["predict", "--weights", str(run / "weights/best.onnx"), "--source",
                              str(images), "--out", str(tmp_path / "pred"), "--no-save-media"])
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 32


def test_train_refuses_to_overwrite_and_bad_options(synth_tiny: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "--data", str(synth_tiny), "--task", "detect",
                              "--method", "dual", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0
    assert "give --task or --method, not both" in res.output
    res = runner.invoke(app, ["train", "--data", str(tmp_path / "missing.yaml"), "--out",
                              str(tmp_path / "y"), "--epochs", "1"])
    assert res.exit_code != 0
    assert "missing.yaml" in str(res.exception) + res.output
