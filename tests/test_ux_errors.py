"""Issue #15.2: common mistakes end, before any work starts, in one line saying what was wrong
and what to type instead, with exit status 2; ``--debug`` shows the traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _cli import run_main

from medmtl.errors import CheckpointError


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medmtl.data.synth import generate

    return generate(tmp_path_factory.mktemp("d"), n_train=8, n_val=4, imgsz=64, seed=0)


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    (tmp_path / "gn" / "weights").mkdir(parents=True)
    (tmp_path / "gn" / "weights" / "best.pt").write_bytes(b"x")
    return tmp_path / "gn"


def one_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, err = run_main(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_misspelled_method_suggests_the_name(data: Path, tmp_path: Path, capsys) -> None:
    line = one_line(["train", "--method", "gradnrom", "--data", str(data),
                     "--out", str(tmp_path / "r")], capsys)
    assert "--method" in line and "unknown method 'gradnrom'" in line
    assert "did you mean 'gradnorm'?" in line
    line = one_line(["compare", "--methods", "fixed,pcgard", "--data", str(data),
                     "--out", str(tmp_path / "c")], capsys)
    assert "--methods" in line and "did you mean 'pcgrad'?" in line
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("cmd", ["train", "compare"])
def test_missing_data_yaml(cmd: str, data: Path, tmp_path: Path, capsys) -> None:
    out = ["--out", str(tmp_path / "r")]
    line = one_line([cmd, "--data", str(data.parent / "dta.yaml"), *out], capsys)
    assert "dataset YAML not found" in line and f"did you mean --data {data}?" in line
    line = one_line([cmd, "--data", str(data.parent), *out], capsys)
    assert line == f"error: {data.parent} is a folder; give its dataset YAML: --data {data}"
    line = one_line([cmd, "--data", str(tmp_path / "nowhere" / "data.yaml"), *out], capsys)
    assert "not found" in line and "medmtl synth --out data/synth" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("cmd", ["train", "compare"])
def test_cuda_without_cuda(cmd: str, data: Path, tmp_path: Path, capsys,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = one_line([cmd, "--data", str(data), "--device", "cuda", "--epochs", "1",
                     "--out", str(tmp_path / "r")], capsys)
    assert line.startswith("error: --device cuda: CUDA is not available on this machine")
    assert line.endswith("use --device cpu or --device auto")
    assert not (tmp_path / "r").exists()
    line = one_line([cmd, "--data", str(data), "--device", "gpu0", "--out", str(tmp_path / "r")],
                    capsys)
    assert "--device gpu0: not a device name; use --device auto, cpu" in line


@pytest.mark.parametrize("cmd", [["val", "--data", "D"], ["predict", "--source", "S"],
                                 ["export"]])
def test_weights_given_a_run_folder(cmd: list[str], run_folder: Path, capsys) -> None:
    line = one_line([cmd[0], "--weights", str(run_folder), *cmd[1:]], capsys)
    assert line == (f"error: {run_folder} is a folder, not a checkpoint; give its checkpoint "
                    f"file: --weights {run_folder / 'weights' / 'best.pt'}")
    line = one_line([cmd[0], "--weights", str(run_folder.parent), *cmd[1:]], capsys)
    assert f"give one run's checkpoint, e.g. --weights {run_folder / 'weights' / 'best.pt'}" in line


@pytest.mark.parametrize(("flag", "value", "fix"), [
    ("--imgsz", "100", "got 100, use --imgsz 96 or --imgsz 128"),
    ("--imgsz", "20", "got 20, use --imgsz 32"),
    ("--epochs", "0", "got 0, use --epochs 1 or more"),
])
@pytest.mark.parametrize("cmd", ["train", "compare"])
def test_out_of_range_values(cmd: str, flag: str, value: str, fix: str, data: Path,
                             tmp_path: Path, capsys) -> None:
    line = one_line([cmd, "--data", str(data), flag, value, "--out", str(tmp_path / "r")], capsys)
    assert line.startswith(f"error: Invalid value for {flag}: ") and line.endswith(fix)
    assert not (tmp_path / "r").exists()  # no run folder, no metrics.json of an untrained model


def test_key_value_arguments(data: Path, tmp_path: Path, capsys) -> None:
    line = one_line(["train", f"data={data}", "epochs=3", "image_size=64"], capsys)
    assert line == (f"error: medmtl takes options, not key=value arguments: instead of "
                    f"'data={data} epochs=3 image_size=64' type "
                    f"'--data {data} --epochs 3 --image-size 64' (see medmtl COMMAND --help)")
    line = one_line(["predict", "--weights", "w.pt", "source=clip.mp4"], capsys)
    assert "type '--source clip.mp4'" in line


def test_debug_shows_the_traceback(run_folder: Path, capsys) -> None:
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint"):
        run_main(["val", "--weights", str(run_folder), "--data", "D", "--debug"], capsys)


def test_debug_reaches_the_runs_compare_starts(monkeypatch, capsys) -> None:
    """compare and tune train each run in a `medmtl train` subprocess: --debug on their command
    line must reach those (through MEDMTL_DEBUG, which subprocesses inherit), and only for the
    duration of the command."""
    import os

    import medmtl.cli as cli

    seen = []
    monkeypatch.delenv("MEDMTL_DEBUG", raising=False)
    monkeypatch.setattr(cli, "app", lambda **kw: seen.append(os.environ.get("MEDMTL_DEBUG")))
    for argv in (["compare", "--debug"], ["compare"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 0
    assert seen == ["1", None] and "MEDMTL_DEBUG" not in os.environ
