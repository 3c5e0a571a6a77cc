"""`medmtl compare` end to end on tiny synthetic data: runs in subprocesses, resumable, and a
report whose every number is the one in the runs' metrics.json."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from medmtl.experiments.compare import plan_runs, run_compare


def test_shards_split_the_grid_then_compare_resumes_and_reports_true_numbers(
        synth_tiny: Path, tmp_path: Path) -> None:
    """Job-array workflow: `compare --shard 0/2` (another process) and `--shard 1/2` (this one),
    at once on one folder, run disjoint halves of the grid, each run trained once; `report
    --retime` then re-times every model and reports both. A whole compare of the same grid then
    trains nothing again and reports the runs' own numbers."""
    from typer.testing import CliRunner

    from medmtl.cli import app

    out = tmp_path / "cmp"
    common = ["compare", "--data", str(synth_tiny), "--methods", "fixed,dual", "--seeds", "1",
              "--epochs", "1", "--imgsz", "64", "--workers", "0", "--out", str(out),
              "--latency-budget", "50"]
    other = subprocess.Popen([sys.executable, "-m", "medmtl", *common, "--shard", "0/2"],
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    runner = CliRunner()
    try:
        here = runner.invoke(app, [*common, "--shard", "1/2"])
        log = other.communicate(timeout=600)[0]
    finally:
        if other.poll() is None:
            other.kill()
    assert (other.returncode, here.exit_code) == (0, 0), (log, here.output)
    assert sorted(p.name for p in (out / "runs").iterdir() if p.is_dir()) == ["dual-s0", "fixed-s0"]
    assert not (out / "report.md").exists()  # a shard does not report a partial grid
    for i, name in enumerate(("fixed-s0", "dual-s0")):  # each shard ran its half, and only it
        runs = json.loads((out / f"compare.shard{i}of2.json").read_text())["runs"]
        assert {n: r["status"] for n, r in runs.items()} == {name: "done"}
        # one training process per run (each logs its data check once), one epoch in its history
        assert (out / "runs" / f"{name}.log").read_text().count("train: split train,") == 1
        assert len((out / "runs" / name / "history.csv").read_text().splitlines()) == 2
    eff = json.loads((out / "runs" / "fixed-s0" / "metrics.json").read_text())["efficiency"]
    assert eff["latency_e2e_ms"] > 0 and "--retime" in eff["latency_e2e_ort_skipped"]
    rr = runner.invoke(app, ["report", str(out), "--retime", "--latency-budget", "50"])
    assert rr.exit_code == 0, rr.output
    assert "re-timed 2 models" in rr.output
    eff = json.loads((out / "runs" / "fixed-s0" / "metrics.json").read_text())["efficiency"]
    assert eff.get("latency_e2e_ort_ms", 0) > 0 or "not installed" in eff["latency_e2e_ort_skipped"]
    summary = json.loads((out / "summary.json").read_text())
    text = " ".join(rr.output.split())
    if summary["recommendations"].get("withheld"):  # 1 epoch: every mAP may be 0 (#15.4)
        assert "No recommendation: every method's mAP@0.5 is 0" in text
    else:  # no single-task runs, so no Δm: the budget advice says it has nothing to rank
        assert "no joint method has both a Δm and an end-to-end latency" in text
    assert set(summary["methods"]) == {"fixed", "dual"}
    bad = runner.invoke(app, [*common, "--shard", "2/2"])
    assert bad.exit_code != 0 and "expected I/N with 0 <= I < N" in bad.output

    # then a whole compare of the grid (no shard) resumes the folder: nothing trains again, and
    # its report (re-timing every model after the runs) holds exactly the runs' numbers
    over = {"epochs": 1, "imgsz": 64, "batch": 16, "workers": 0}
    runs = {p.name: p for p in (out / "runs").iterdir() if p.is_dir()}
    best_mtime = {n: (p / "weights" / "best.pt").stat().st_mtime_ns for n, p in runs.items()}
    # finished runs are not redone
    assert all(r.status == "finished" for r in plan_runs(str(synth_tiny), ["fixed", "dual"], [0],
                                                         out, over))
    run_compare(str(synth_tiny), ["fixed", "dual"], [0], out, overrides=over, jobs=2)
    assert best_mtime == {n: (p / "weights" / "best.pt").stat().st_mtime_ns
                          for n, p in runs.items()}

    summary = json.loads((out / "summary.json").read_text())
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for method in ("fixed", "dual"):
        m = json.loads((runs[f"{method}-s0"] / "metrics.json").read_text())
        agg = summary["methods"][method]["metrics"]
        assert agg["map50"]["mean"] == pytest.approx(m["detection"]["map50"], abs=1e-12)
        assert agg["accuracy"]["mean"] == pytest.approx(m["classification"]["accuracy"],
                                                        abs=1e-12)
        eff = m["efficiency"]
        assert eff["latency_context"].startswith("re-timed after all runs")
        # end to end (decode + letterbox + forward + NMS), re-timed too, beside the forward pass
        assert eff["latency_e2e_context"].startswith("re-timed after all runs")
        assert eff["latency_e2e_ms"] > 0 and "NMS" in eff["latency_e2e_includes"]
        assert eff.get("latency_e2e_ort_ms", 0) > 0 or "not installed" in eff.get(
            "latency_e2e_ort_skipped", "")
        assert eff["latency_e2e_n"] == 30  # 3 interleaved rounds of 10 calls, pooled
        for value in (m["detection"]["map50"], m["detection"]["map50_95"],
                      m["classification"]["accuracy"]):
            shown = f"{value:.3f}"
            assert re.search(rf"\|\s*{method}\s*\|.*{re.escape(shown)}", md), (method, shown)
            assert shown in html
    assert "src=\"data:image/png;base64," in html
    dep = summary["deployment"]  # no single-task runs: no Δm, so no front, and the report says so
    assert dep["front"] == [] and "Δm unavailable" in dep["excluded"]["fixed"]
    assert summary["recommendations"]["efficiency_first"]["method"] is None


def test_a_run_another_process_holds_is_left_to_it(synth_tiny: Path, tmp_path: Path) -> None:
    """Two compares on one folder whose grids overlap (a job array submitted twice, a shard
    re-run while the first still trains): a run whose folder another live process holds is not
    started, not cleared and not counted as failed; the holder is named."""
    from medmtl.engine.runlock import LOCK_NAME, OWNER_NAME, probe

    out = tmp_path / "cmp"
    run = out / "runs" / "fixed-s0"
    run.mkdir(parents=True)
    (run / "history.csv").write_text("epoch\n")  # what the other process has written so far
    holder = subprocess.Popen(
        [sys.executable, "-c", "import json, os, sys, time\n"
         "from filelock import FileLock\n"
         f"lock = FileLock({str(run / LOCK_NAME)!r}, timeout=0)\n"
         "lock.acquire()\n"
         f"open({str(run / OWNER_NAME)!r}, 'w').write(json.dumps({{'pid': os.getpid(), "
         "'host': 'node7', 'started': 'now'}))\n"
         "print('held', flush=True)\n"
         "time.sleep(120)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        console = Console(file=io.StringIO(), width=200)
        run_compare(str(synth_tiny), ["fixed"], [0], out, overrides={"epochs": 1, "imgsz": 64},
                    console=console, report=False, shard=(0, 1))
        text = console.file.getvalue()
        assert f"skip   fixed-s0  being trained by pid {holder.pid} on host node7" in text
        assert "not started here" in text and "when they finish: medmtl report" in text
        runs = json.loads((out / "compare.shard0of1.json").read_text())["runs"]
        assert runs == {"fixed-s0": {"status": "elsewhere", "returncode": None}}
        assert (run / "history.csv").read_text() == "epoch\n"  # not cleared
        assert not (run / "weights").exists() and not (out / "runs" / "fixed-s0.log").exists()
    finally:
        holder.kill()
        holder.wait()
    with probe(run) as held_by:  # the holder gone, the folder is free again
        assert held_by is None


def test_a_shard_takes_the_references_from_the_whole_folder(synth_tiny: Path,
                                                            tmp_path: Path) -> None:
    """A shard whose part holds no single-task run still selects its joint runs by Δm against
    the references finished in the folder (it read them from its own part only, and fell back
    to the unweighted mean)."""
    from medmtl.experiments.compare import _set_references

    out = tmp_path / "cmp"
    for name, block in (("detect-s0", {"detection": {"map50": 0.5, "map50_95": 0.25}}),
                        ("classify-s0", {"classification": {"accuracy": 0.8, "macro_f1": 0.7}})):
        (out / "runs" / name).mkdir(parents=True)
        (out / "runs" / name / "metrics.json").write_text(json.dumps(block))
    grid = plan_runs(str(synth_tiny), ["detect", "classify", "fixed"], [0], out)
    part = grid[2::3]  # what `--shard 2/3` runs: fixed-s0 alone
    assert [r.name for r in part] == ["fixed-s0"] and not part[0].cfg.select_refs
    console = Console(file=io.StringIO(), width=200)
    _set_references(part, console, grid)
    assert part[0].cfg.select_refs == {"map50": 0.5, "map50_95": 0.25, "accuracy": 0.8,
                                       "macro_f1": 0.7}
    assert "references (val, single-task runs): map50 0.5000" in console.file.getvalue()


def test_runs_get_the_cores_this_process_may_use_and_at_most_omp_threads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """8 cores bound to the job (a scheduler's allocation): 4 runs at once, 2 threads each; with
    OMP_NUM_THREADS=1 (a shared machine, `make test`) 1 thread each, so parallel runs do not
    spin-wait on each other's threads."""
    import torch

    from medmtl.experiments import compare

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(compare.os, "sched_getaffinity", lambda _pid: set(range(8)),
                        raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert compare._resources(6, None) == (4, 2, [])
    assert compare._resources(1, None) == (1, 8, [])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert compare._resources(6, None) == (4, 1, [])
    assert compare._resources(1, None) == (1, 1, [])
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")  # not a number: no cap
    assert compare._resources(2, 2) == (2, 4, [])
