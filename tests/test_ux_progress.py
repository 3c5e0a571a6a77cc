"""Issue #15.3 (and #15.6 end to end): one unwrapped line per epoch in a log file, no progress
bar or carriage returns outside a terminal, no float(tensor) warning; compare's run lines; run
files readable under the umask."""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from pathlib import Path

import pytest
import torch
from rich.console import Console

from medmtl.engine.progress import EpochProgress, epoch_line, format_duration, run_end_line
from medmtl.errors import InputError
from medmtl.experiments.compare import PlannedRun
from medmtl.methods import build_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medmtl.data.synth import generate

    return generate(tmp_path_factory.mktemp("d"), n_train=16, n_val=8, imgsz=64, seed=0)


def test_epoch_line_has_every_part() -> None:
    row = {"epoch": 3, "loss/detect": 1.23456, "loss/classify": 0.5, "val/map50": 0.4121,
           "val/map50_95": 0.2, "val/accuracy": 0.85, "val/macro_f1": 0.8111,
           "weight/detect": 1.0, "weight/classify": 0.1, "lr": 0.0019, "seconds": 4.1}
    assert epoch_line(row, 30, 110.0) == (
        "epoch 3/30  loss det 1.235 cls 0.500  val mAP50 0.412 mAP 0.200 acc 0.850 F1 0.811  "
        "w det 1.00 cls 0.10  lr 1.9e-03  4s  ETA 1m50s")
    # single task, no validation this epoch: only what the row has
    assert epoch_line({"epoch": 1, "loss/detect": 2.0, "loss/classify": "", "weight/detect": 1.0,
                       "weight/classify": "", "lr": 1e-3, "seconds": 0.4}, 2, 0.4) == \
        "epoch 1/2  loss det 2.000  lr 1.0e-03  0s  ETA 0s"
    assert [format_duration(s) for s in (0, 59.4, 61, 3725)] == ["0s", "59s", "1m01s", "1h02m"]


def test_no_bar_outside_a_terminal() -> None:
    log = Console(file=io.StringIO(), force_terminal=False)
    bar = EpochProgress(log, "epoch 1/2", 10)
    assert not bar.enabled
    bar.advance({"detect": torch.ones((), requires_grad=True) * 2})
    bar.close()
    assert log.file.getvalue() == ""  # type: ignore[attr-defined]
    tty = Console(file=io.StringIO(), force_terminal=True, width=100)
    bar = EpochProgress(tty, "epoch 1/2", 10)
    assert bar.enabled
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the float(tensor) warning would raise here
        bar.advance({"detect": torch.ones((), requires_grad=True) * 2})
    bar.close()
    assert "detect 2.000" in tty.file.getvalue()  # type: ignore[attr-defined]


def test_train_log_one_line_per_epoch(micro: Path, tmp_path: Path) -> None:
    from medmtl.engine.trainer import Trainer

    old = os.umask(0o022)
    try:
        cfg = build_config("gradnorm", {"data": str(micro), "out": str(tmp_path / "r"),
                                        "epochs": 2, "imgsz": 64, "batch": 8, "workers": 0,
                                        "model": {"size": "n"}})
        buf = io.StringIO()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            Trainer(cfg, progress=True, console=Console(file=buf, width=80, soft_wrap=True)).fit()
    finally:
        os.umask(old)
    text = buf.getvalue()
    assert "\r" not in text and "━" not in text  # no bar, no carriage returns in a log
    lines = [ln for ln in text.splitlines() if ln.startswith("epoch ") and "  batch " not in ln]
    assert len(lines) == 2, text
    pat = (r"epoch {e}/2  loss det \d+\.\d{{3}} cls \d+\.\d{{3}}  val mAP50 \d\.\d{{3}} "
           r"mAP \d\.\d{{3}} acc \d\.\d{{3}} F1 \d\.\d{{3}}  w det \d\.\d\d cls \d\.\d\d  "
           r"lr \d\.\de-0\d  \d+s  ETA \S+")
    for e, ln in enumerate(lines, start=1):
        assert len(ln) > 80 and re.fullmatch(pat.format(e=e), ln), ln  # longer than 80, unwrapped
    assert lines[-1].endswith("ETA 0s")
    assert not [w for w in caught if "requires_grad" in str(w.message)]
    run = tmp_path / "r"
    for f in ("metrics.json", "history.csv", "config.yaml", "weights/best.pt", "weights/last.pt"):
        assert stat.S_IMODE((run / f).stat().st_mode) == 0o644, f  # colleagues can read it


def test_compare_run_end_line(micro: Path, tmp_path: Path) -> None:
    cfg = build_config("fixed", {"data": str(micro), "seed": 1})
    run = tmp_path / "runs" / "fixed-s1"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"detection": {"map50": 0.41234}, '
                                      '"classification": {"accuracy": 0.85}}')
    r = PlannedRun("fixed-s1", cfg, run, status="done", returncode=0)
    assert run_end_line(r, 81.2) == \
        "done   fixed-s1  method fixed  seed 1  mAP50 0.412  view acc 0.850  1m21s"
    r = PlannedRun("fixed-s1", cfg, run, status="failed", returncode=2)
    assert run_end_line(r, 3) == (f"failed fixed-s1  method fixed  seed 1  exit 2  3s  log: "
                                  f"{tmp_path / 'runs' / 'fixed-s1.log'}")


def test_lines_within_an_epoch_in_a_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """#24.14f: outside a terminal, a line within the epoch every MEDMTL_PROGRESS_EVERY batches
    (or seconds, default 30 s) with the epoch's running mean losses; none after the last batch
    (the epoch line follows), none with --no-progress (enabled=False); a resumed epoch counts
    from where it resumed."""
    from medmtl.engine import progress

    log = Console(file=io.StringIO(), force_terminal=False)
    monkeypatch.setenv("MEDMTL_PROGRESS_EVERY", "2")
    bar = EpochProgress(log, "epoch 1/2", 5)
    for det, cls in ((2.0, 1.0), (4.0, 2.0), (6.0, 3.0), (8.0, 6.0), (10.0, 5.0)):
        bar.advance({"detect": torch.tensor(det, requires_grad=True), "classify": cls})
    bar.close()
    assert log.file.getvalue().splitlines() == [  # type: ignore[attr-defined]
        "epoch 1/2  batch 2/5  loss det 3.000 cls 1.500  0s",
        "epoch 1/2  batch 4/5  loss det 5.000 cls 3.000  0s"]
    off = Console(file=io.StringIO(), force_terminal=False)
    bar = EpochProgress(off, "epoch 1/2", 5, enabled=False)
    for _ in range(5):
        bar.advance({"detect": 1.0})
    assert off.file.getvalue() == ""  # type: ignore[attr-defined]
    # every 30 s by default: a fake clock, 12 s per batch; a resumed epoch (3 of 8 done)
    monkeypatch.delenv("MEDMTL_PROGRESS_EVERY")
    clock = iter(range(0, 1000, 12))
    monkeypatch.setattr(progress.time, "perf_counter", lambda: float(next(clock)))
    log = Console(file=io.StringIO(), force_terminal=False)
    bar = EpochProgress(log, "epoch 3/8", 5, start=3)
    for _ in range(5):
        bar.advance({"detect": 4.9, "classify": 0.6})
    assert log.file.getvalue().splitlines() == [  # type: ignore[attr-defined]
        "epoch 3/8  batch 6/8  loss det 4.900 cls 0.600  36s"]
    assert progress.log_interval() == (0, 30.0)
    for bad in ("abc", "0", "-3", "2m"):
        monkeypatch.setenv("MEDMTL_PROGRESS_EVERY", bad)
        with pytest.raises(InputError, match=f"MEDMTL_PROGRESS_EVERY={re.escape(bad)}: give a "
                                             r"number of batches \(40\) or of seconds \(30s\)"):
            progress.log_interval()
    monkeypatch.setenv("MEDMTL_PROGRESS_EVERY", "45s")
    assert progress.log_interval() == (0, 45.0)


def test_train_log_shows_batches_within_the_epoch(micro: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A real run in a log (16 images, batch 4: 4 batches), a line every batch: batches 1-3 of
    each epoch, then its epoch line; a bad MEDMTL_PROGRESS_EVERY stops `medmtl train` in one
    line before any run folder is made."""
    from _cli import run_main

    from medmtl.engine.trainer import Trainer

    monkeypatch.setenv("MEDMTL_PROGRESS_EVERY", "1")
    cfg = build_config("fixed", {"data": str(micro), "out": str(tmp_path / "r"), "epochs": 1,
                                 "imgsz": 64, "batch": 4, "workers": 0, "diag_steps": 0,
                                 "model": {"size": "n"}})
    buf = io.StringIO()
    Trainer(cfg, progress=True, console=Console(file=buf, width=80, soft_wrap=True)).fit()
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 4, lines
    for b, ln in enumerate(lines[:3], start=1):
        assert re.fullmatch(rf"epoch 1/1  batch {b}/4  loss det \d+\.\d{{3}} cls \d+\.\d{{3}}  "
                            r"\d+s", ln), ln
    assert "  batch " not in lines[3] and "val mAP50" in lines[3]
    monkeypatch.setenv("MEDMTL_PROGRESS_EVERY", "often")
    code, err = run_main(["train", "--data", str(micro), "--out", str(tmp_path / "r2")], capsys)
    assert (code, err.strip()) == (2, "error: MEDMTL_PROGRESS_EVERY=often: give a number of "
                                      "batches (40) or of seconds (30s), at least 1")
    assert not (tmp_path / "r2").exists()
