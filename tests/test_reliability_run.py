"""Issue #14, training side: one writer per run folder, the non-finite guard, kill during a save,
and option ranges. Each test reproduces a failure the tester found (see docs/reliability.md)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _cli import run_main as _cli

from medmtl.engine.checkpoint import save_checkpoint
from medmtl.engine.runlock import OWNER_NAME, RunLock
from medmtl.engine.trainer import Trainer
from medmtl.errors import NonFiniteError, RunLocked
from medmtl.losses import MultiTaskCriterion
from medmtl.methods import build_config
from medmtl.models.checkpoint import load_checkpoint

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
       "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def micro_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 train / 4 val images at 64 px: a few optimiser steps, in seconds."""
    from medmtl.data.synth import generate

    return generate(tmp_path_factory.mktemp("micro"), n_train=12, n_val=4, imgsz=64, seed=5)


def _cfg(data: Path, out: Path, method: str = "classify", **kw: object) -> object:
    base = {"data": str(data), "out": str(out), "epochs": 1, "imgsz": 64, "batch": 4,
            "workers": 0, "seed": 0, "ema": False, "diag_steps": 0, "cache": False}
    return build_config(method, {**base, **kw})



def _holder(run: Path, seconds: float) -> subprocess.Popen[str]:
    """A child process that takes the run lock and sleeps; returns once it holds it."""
    code = ("import sys,time; from medmtl.engine.runlock import RunLock; "
            f"lock = RunLock({str(run)!r}).acquire(); print('held', flush=True); time.sleep({seconds})")
    p = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_second_writer_exits_2_naming_the_holder(micro_data: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """#14.1: two `train --out R` at once: the second stops at once (exit 2), naming pid and host;
    before, both exited 0 and R ended up mixing the two runs."""
    run = tmp_path / "R"
    holder = _holder(run, 60)
    try:
        code, err = _cli(["train", "--data", str(micro_data), "--out", str(run), "--epochs", "1",
                          "--imgsz", "64", "--workers", "0", "--no-progress"], capsys)
        assert code == 2
        assert f"pid {holder.pid} on host {socket.gethostname()}" in err
        assert err.startswith("error: ") and err.count("\n") == 1
        assert not (run / "weights").exists() and not (run / "config.yaml").exists()
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
            Trainer(_cfg(micro_data, run), progress=False)
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_after_kill_9_is_taken_over(tmp_path: Path) -> None:
    run = tmp_path / "R"
    holder = _holder(run, 60)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads((run / OWNER_NAME).read_text())["pid"] == holder.pid  # left behind
    lock = RunLock(run).acquire()
    try:
        assert lock.stale_owner is not None and f"pid {holder.pid}" in lock.stale_owner
        assert json.loads((run / OWNER_NAME).read_text())["pid"] == os.getpid()
    finally:
        lock.release()
    assert not (run / OWNER_NAME).exists()


def _nan_on(monkeypatch: pytest.MonkeyPatch, calls: set[int]) -> dict[str, int]:
    """Make the criterion's losses NaN on the given (0-based) training calls."""
    real = MultiTaskCriterion.__call__
    n = {"calls": 0}

    def patched(self: MultiTaskCriterion, *a: object, **k: object) -> dict[str, torch.Tensor]:
        out = real(self, *a, **k)
        if torch.is_grad_enabled():
            i = n["calls"]
            n["calls"] += 1
            if i in calls:
                return {t: v * float("nan") for t, v in out.items()}
        return out

    monkeypatch.setattr(MultiTaskCriterion, "__call__", patched)
    return n


def test_nonfinite_steps_are_skipped_and_counted(micro_data: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 one_thread: None) -> None:
    """#14.2: a NaN loss no longer reaches the weights: the step is skipped and counted."""
    _nan_on(monkeypatch, {1})
    t = Trainer(_cfg(micro_data, tmp_path / "r", nonfinite_limit=2), progress=False)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.fit()
    hist = (tmp_path / "r" / "history.csv").read_text().splitlines()
    row = dict(zip(hist[0].split(","), hist[1].split(","), strict=True))
    assert int(row["nonfinite_steps"]) == 1
    best = load_checkpoint(tmp_path / "r" / "weights" / "best.pt")
    assert all(torch.isfinite(v).all() for v in best["model"].values() if v.is_floating_point())
    assert any(not torch.equal(before[k], v) for k, v in t.model.state_dict().items())
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert 0.0 <= m["classification"]["accuracy"] <= 1.0


def test_nonfinite_run_stops_keeping_last_good(micro_data: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               one_thread: None) -> None:
    """#14.2: N non-finite steps in a row stop the run with a clear error; before, it exited 0
    with an all-NaN best.pt and a metrics.json."""
    run = tmp_path / "r"
    Trainer(_cfg(micro_data, run), progress=False).fit()  # epoch 1: good
    good = load_checkpoint(run / "weights" / "last.pt")
    _nan_on(monkeypatch, set(range(100)))
    t = Trainer(_cfg(micro_data, run, epochs=2), resume=True, progress=False)
    t.nonfinite.limit = 2
    t.cfg.epochs = 2
    with pytest.raises(NonFiniteError, match=r"2 optimiser steps in a row .* last good checkpoint"):
        t.fit()
    after = load_checkpoint(run / "weights" / "last.pt")
    assert after["epoch"] == good["epoch"] == 1 and after["sha256"] == good["sha256"]
    assert RunLock(run).acquire().release() is None  # released on the way out


def test_nan_task_weight_and_bad_options_exit_2(micro_data: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """#14.2 / #14.7 / #14.4: option values out of range fail in one line naming the option,
    before any work (before: ZeroDivisionError, OpenCV assertions, dfl_loss index errors)."""
    base = ["train", "--data", str(micro_data), "--out", str(tmp_path / "x"), "--workers", "0"]
    cases = {("--task-weights", "detect=nan,classify=1"): "--task-weights",
             ("--batch", "0"): "--batch", ("--accumulate", "0"): "--accumulate",
             ("--imgsz", "0"): "--imgsz", ("--imgsz", "50"): "--imgsz",
             ("--lr", "-1"): "--lr", ("--lr", "nan"): "--lr", ("--epochs", "0"): "--epochs",
             ("--weight-decay", "inf"): "--weight-decay", ("--max-boxes", "0"): "--max-boxes",
             ("--view-class-weights", "1,-1,1"): "--view-class-weights",
             ("--nonfinite-limit", "0"): "--nonfinite-limit"}
    for args, flag in cases.items():
        code, err = _cli([*base, *args], capsys)
        assert code == 2, (args, err)
        assert flag in err, (args, err)
    assert not (tmp_path / "x").exists()


def test_dfl_loss_with_nan_predictions_is_nan_not_an_index_error() -> None:
    from medmtl.losses.detection import dfl_loss

    logits = torch.full((2, 4, 16), float("nan"))
    target = torch.tensor([[1.5, float("nan"), 3.0, 14.99]] * 2)
    out = dfl_loss(logits, target)
    assert out.shape == (2, 4) and torch.isnan(out).all()
    ok = dfl_loss(torch.zeros(1, 1, 16), torch.tensor([[2.25]]))
    assert ok.item() == pytest.approx(torch.log(torch.tensor(16.0)).item(), rel=1e-6)


_KILLER = """
import sys, time
import medmtl.fileio as fio
def slow_fsync(fd):
    print("writing", flush=True)
    time.sleep(60)
fio.os.fsync = slow_fsync
fio.atomic_write_bytes(sys.argv[1], b"x" * 5_000_000)  # what save_checkpoint ends with
"""


def test_kill_9_during_save_leaves_last_intact_and_temp_is_cleaned(tmp_path: Path) -> None:
    """#14.8: a save killed mid-write keeps the previous last.pt whole; its partial temp file is
    removed by the next save (before: they piled up, 27 MB after 10 kills)."""
    last = tmp_path / "weights" / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "config": {}}, last)
    before = last.read_bytes()
    p = subprocess.Popen([sys.executable, "-c", _KILLER, str(last)], env=ENV,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "writing"
    p.send_signal(signal.SIGKILL)
    p.wait()
    temps = list(last.parent.glob(".last.pt.*.tmp"))
    assert len(temps) == 1 and temps[0].stat().st_size > 4_000_000
    assert last.read_bytes() == before
    assert torch.equal(load_checkpoint(last)["model"]["w"], torch.ones(3))
    save_checkpoint({"model": {"w": torch.zeros(3)}, "config": {}}, last)
    assert list(last.parent.glob(".*.tmp")) == []
    assert torch.equal(load_checkpoint(last)["model"]["w"], torch.zeros(3))


def test_resume_removes_stale_temps(micro_data: Path, tmp_path: Path, one_thread: None) -> None:
    run = tmp_path / "r"
    Trainer(_cfg(micro_data, run), progress=False).fit()
    junk = run / "weights" / ".last.pt.abc123.tmp"
    junk.write_bytes(b"\0" * 1000)
    t = Trainer(_cfg(micro_data, run), resume=True, progress=False)
    t.close()
    assert not junk.exists()
    time.sleep(0)


def test_huge_lr_stops_with_a_clear_error_and_finite_checkpoints(micro_data: Path, tmp_path: Path,
                                                                 one_thread: None) -> None:
    """#14.2 as reported: `--task classify --lr 1e6` exited 0 with an all-NaN best.pt."""
    run = tmp_path / "r"
    t = Trainer(_cfg(micro_data, run, lr=1e6, epochs=4, nonfinite_limit=3), progress=False)
    with pytest.raises(NonFiniteError, match="in a row|turned non-finite"):
        t.fit()
    assert not (run / "metrics.json").exists()
    for name in ("best.pt", "last.pt"):
        if (run / "weights" / name).exists():
            ck = load_checkpoint(run / "weights" / name)
            assert all(torch.isfinite(v).all() for v in ck["model"].values()
                       if v.is_floating_point()), name


def test_old_run_folder_still_resumes(micro_data: Path, tmp_path: Path, one_thread: None) -> None:
    """A run folder from before #14 (no lock files, last.pt without checksum or header) resumes,
    with the checkpoint reported as unverified."""
    import warnings

    run = tmp_path / "r"
    Trainer(_cfg(micro_data, run), progress=False).fit()
    last = run / "weights" / "last.pt"
    ck = torch.load(last, weights_only=True)
    old = {k: v for k, v in ck.items() if k not in ("sha256", "header")}
    old["config"]["epochs"] = 2
    torch.save(old, last)
    (run / ".lock").unlink()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t = Trainer(_cfg(micro_data, run), resume=True, progress=False)
    assert any("unverified" in str(x.message) for x in w)
    assert (t.state.epoch, t.cfg.epochs) == (1, 2)
    t.fit()
    new = load_checkpoint(last)
    assert new["epoch"] == 2 and len(new["sha256"]) == 64 and new["header"]["arch"] == "single"


def test_sigterm_to_the_whole_group_stops_at_a_step_and_saves(micro_data: Path,
                                                               tmp_path: Path) -> None:
    """A scheduler's stop reaches every process of the job (SLURM's preemption, `kill -- -PGID`):
    the data-loader workers ignore it, so the run finishes its step, saves weights/last.pt and
    says how to resume, instead of failing on a "DataLoader worker killed by signal" error (which
    made `tune` count such a trial as failed)."""
    out = tmp_path / "run"
    p = subprocess.Popen(
        [sys.executable, "-m", "medmtl", "train", "--data", str(micro_data), "--out", str(out),
         "--method", "classify", "--epochs", "200", "--imgsz", "64", "--batch", "4",
         "--workers", "1", "--no-progress", "--no-ema"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    last = out / "weights" / "last.pt"
    deadline = time.monotonic() + 240
    while not last.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert last.exists(), "no epoch finished in time"
    os.killpg(p.pid, signal.SIGTERM)  # every process of the group, workers included
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-3000:]
    assert "DataLoader worker" not in err, err[-3000:]
    assert "interrupted: state saved" in err and "--resume" in err, err[-3000:]
    assert load_checkpoint(last)["epoch"] >= 1
