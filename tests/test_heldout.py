"""Held-out scoring: the checkpoint chosen on val is scored on a test split (the data YAML's
`test:` key, or patients held out of train), metrics.json gets a `test` block beside the val
scores, and the report says which split its tables come from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medmtl.data.splits import group_of
from medmtl.engine.trainer import Trainer
from medmtl.methods import build_config


@pytest.fixture(scope="module")
def synth_with_test(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medmtl.data.synth import generate

    return generate(tmp_path_factory.mktemp("synth_test"), n_train=64, n_val=24, n_test=24,
                    imgsz=64, seed=5)


def _cfg(data: Path, out: Path, **kw: object) -> object:
    over = {"data": str(data), "out": str(out), "epochs": 3, "imgsz": 64, "batch": 16,
            "workers": 0, "diag_steps": 0, "lr": 0.01, "warmup_epochs": 0.5}
    over.update(kw)
    return build_config("fixed", over)


def test_val_selected_checkpoint_is_scored_on_test(synth_with_test: Path, tmp_path: Path,
                                                   one_thread: None) -> None:
    from medmtl.engine.validate import validate_checkpoint

    run = tmp_path / "run"
    Trainer(_cfg(synth_with_test, run), progress=False).fit()
    m = json.loads((run / "metrics.json").read_text())
    assert m["split"] == "val" and m["images"] == 24  # today's keys: the val scores
    assert m["test"]["split"] == "test" and m["test"]["images"] == 24
    sel = m["selection"]
    assert (sel["split"], sel["metric"], sel["test_split"]) == ("val", "delta-m", "yaml")
    # no single-task references given: Δm's fallback, the unweighted mean of the 4 metrics x 100
    assert sel["references"] is None and sel["references_used"] is False
    four = [m["detection"]["map50"], m["detection"]["map50_95"], m["classification"]["accuracy"],
            m["classification"]["macro_f1"]]
    assert sel["score"] == pytest.approx(100 * sum(four) / 4, rel=1e-9, abs=1e-12)
    assert (run / "eval" / "test" / "predictions.json").exists()
    assert (run / "eval" / "test" / "ground_truth.json").exists()
    # the test block is best.pt (the val-selected checkpoint) scored on test, not on val
    direct = validate_checkpoint(run / "weights" / "best.pt", synth_with_test, "test",
                                 tmp_path / "v", workers=0, device="cpu", plots=False)
    for task, keys in (("detection", ("map50", "map50_95")), ("classification", ("accuracy",))):
        for k in keys:
            assert m["test"][task][k] == pytest.approx(direct[task][k], rel=1e-6, abs=1e-9)
    on_val = validate_checkpoint(run / "weights" / "best.pt", synth_with_test, "val",
                                 tmp_path / "vv", workers=0, device="cpu", plots=False)
    assert m["detection"]["map50"] == pytest.approx(on_val["detection"]["map50"], rel=1e-6,
                                                    abs=1e-9)

    from medmtl.report import write_report

    folder = tmp_path / "cmp"
    (folder / "runs").mkdir(parents=True)
    run.rename(folder / "runs" / "fixed-s0")
    write_report(folder)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["scored_on"] == ["test"]
    assert summary["runs"][0]["metrics"]["map50"] == pytest.approx(m["test"]["detection"]["map50"])
    assert summary["runs"][0]["val_metrics"]["map50"] == pytest.approx(m["detection"]["map50"])
    md = (folder / "report.md").read_text()
    assert "held-out test split" in md and "Validation scores (the selection split)" in md


def test_grouped_test_split_holds_out_whole_patients(synth_with_test: Path, tmp_path: Path,
                                                     one_thread: None) -> None:
    run = tmp_path / "g"
    t = Trainer(_cfg(synth_with_test, run, epochs=1, test_split="grouped", test_fraction=0.25),
                progress=False)
    split = run / "split"
    train = split.joinpath("train.txt").read_text().split()
    test = split.joinpath("test.txt").read_text().split()
    assert len(train) + len(test) == 64 and 8 <= len(test) <= 24
    assert not {group_of(p) for p in train} & {group_of(p) for p in test}
    assert len(t.data.train_set) == len(train) and len(t.data.test_set) == len(test)
    t.fit()
    m = json.loads((run / "metrics.json").read_text())
    assert m["test"]["images"] == len(test) and m["selection"]["test_split"] == "grouped"
    # deterministic: a second run (another seed) holds out the same patients
    Trainer(_cfg(synth_with_test, tmp_path / "g2", epochs=1, test_split="grouped",
                 test_fraction=0.25, seed=1), progress=False)
    assert (tmp_path / "g2" / "split" / "test.txt").read_text().split() == test


def test_no_test_split_when_asked(synth_with_test: Path, tmp_path: Path) -> None:
    t = Trainer(_cfg(synth_with_test, tmp_path / "n", epochs=1, test_split="none"),
                progress=False)
    assert t.data.test_set is None
