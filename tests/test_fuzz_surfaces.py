"""The fuzz suite of issue #24: hostile input on the newer surfaces (train --config, tune --storage,
.onnx weights, --teacher runs, corrections and trusted CSVs, method specs, checkpoints holding
code), each run through the `medmtl` entry point (medmtl/cli/fuzz_surfaces.py). Every case must
exit 2 with one `error:` line naming the input: 0 tracebacks, 0 hangs (a timer; the alias bomb
in a fresh process under a hard timeout), 0 inputs silently accepted."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from medmtl.cli.fuzz_surface_cases import build_cases
from medmtl.cli.fuzz_surfaces import SurfaceCase, run_case, run_surfaces, summary_line

SEED = 24


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 train / 4 val images at 64 px."""
    from medmtl.data.synth import generate

    return generate(tmp_path_factory.mktemp("surf_data"), n_train=8, n_val=4, imgsz=64, seed=0)


def test_every_hostile_input_is_one_named_line_with_exit_2(
        tiny_data: Path, tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cases = build_cases(tmp_path, tiny_data, random.Random(SEED))
        totals = run_surfaces(cases, timeout=120)
    finally:
        torch.set_num_threads(threads)
    record_property("fuzz_totals", summary_line(totals))  # printed by conftest.py
    assert totals["failures"] == [], "\n".join(map(str, totals["failures"]))
    assert totals["refused"] == totals["cases"] == len(cases) >= 70
    assert set(totals["surfaces"]) == {"config", "storage", "onnx", "teacher", "corrections",
                                       "trusted", "probs", "spec", "checkpoint"}


def _line(case: SurfaceCase) -> str:
    out = run_case(case, timeout=120)
    assert out.status == "refused", (out.status, out.line)
    return out.line


def test_the_issue_examples_word_for_word(tiny_data: Path, tmp_path: Path) -> None:
    """One example per item of #24: what the line says (docs/reliability.md quotes them)."""
    by = {(c.surface, c.name): c for c in build_cases(tmp_path, tiny_data, random.Random(SEED),
                                                      ("config", "storage", "onnx", "spec"))}
    bomb = _line(by["config", "alias_bomb"])  # a fresh process: a hang would be killed
    assert bomb.startswith("error: Invalid value for --config: ") and \
        "more than 100000 values once YAML aliases are expanded (an alias bomb?)" in bomb
    port = _line(by["storage", "closed_port"])
    assert "--storage 'postgresql://localhost:1/x': cannot connect to localhost:1" in port and \
        "e.g. sqlite:///runs/tune/study.db or postgresql://user@host/db" in port
    assert "folder" in _line(by["storage", "missing_dir"]) and \
        "unsupported scheme 'mongodb'" in _line(by["storage", "scheme"])
    assert "not a medmtl graph: no input 'images'" in _line(by["onnx", "foreign_io"])
    assert "not a readable ONNX graph (InvalidProtobuf" in _line(by["onnx", "random_bytes"])
    assert "freeze_trunk_epochs=inf is out of range; freeze_trunk_epochs takes a whole number " \
        "in [0, 10000]" in _line(by["spec", "inf"])


def test_a_classify_only_teacher_and_a_code_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    by = {(c.surface, c.name): c for c in build_cases(tmp_path, tiny_data, random.Random(SEED),
                                                      ("teacher", "csv", "checkpoint"))}
    torch.set_num_threads(1)
    line = _line(by["teacher", "classify_only"])
    assert "no teacher for detect: the teacher must have the tasks being distilled (detect, " \
        "classify), and this one has classify only" in line
    code = _line(by["checkpoint", "val_pickled_code"])
    # PyTorch's reason is kept, its advice (weights_only=False, allow-listing) is not
    assert "code.pt: not a loadable medmtl checkpoint (" in code and "GLOBAL print" in code
    assert "weights_only" not in code and "safe_globals" not in code and "untrusted" in code
    huge = _line(by["corrections", "huge_field"])
    assert "corr_huge_field.csv:2: a cell longer than the 131072 characters" in huge
    assert "corr_unclosed_quote.csv:3: a quoted cell is still open at the end of the file" in \
        _line(by["corrections", "unclosed_quote"])


def test_the_checker_sees_tracebacks_acceptance_and_unnamed_lines(
        tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The contract check is not vacuous."""
    import medmtl.methods

    ok = SurfaceCase("spec", "fine", ["--version"], ["x"])
    assert run_case(ok).status == "accepted"
    unnamed = SurfaceCase("spec", "unnamed", ["train", "--data", str(tiny_data), "--method",
                                              "shared:fixed:lr=nan"], ["not in the line"])
    assert run_case(unnamed).status == "unnamed"

    def boom(spec: str) -> dict:
        raise RuntimeError("a bug")

    monkeypatch.setattr(medmtl.methods, "parse_spec", boom)
    bug = SurfaceCase("spec", "bug", ["train", "--data", str(tiny_data), "--method",
                                      "shared:fixed:lr=1"], ["lr"])
    assert run_case(bug).status == "traceback"
