"""`medmtl compare` end to end on tiny synthetic data: runs in subprocesses, resumable, and a
report whose every number is the one in the runs' metrics.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from medmtl.engine.compare import plan_runs, run_compare


def test_compare_runs_resumes_and_reports_true_numbers(synth_tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    over = {"epochs": 1, "imgsz": 64, "batch": 16, "workers": 0}
    run_compare(str(synth_tiny), ["fixed", "dual"], [0], out, overrides=over, jobs=2)
    runs = {p.name: p for p in (out / "runs").iterdir() if p.is_dir()}
    assert set(runs) == {"fixed-s0", "dual-s0"}
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


def test_shards_split_the_grid_and_report_retimes_all(synth_tiny: Path, tmp_path: Path) -> None:
    """Job-array workflow: `compare --shard 0/2` and `--shard 1/2` run disjoint halves of the grid
    into one folder; `report --retime` re-times every model and reports both."""
    from typer.testing import CliRunner

    from medmtl.cli import app

    out = tmp_path / "cmp"
    common = ["compare", "--data", str(synth_tiny), "--methods", "fixed,dual", "--seeds", "1",
              "--epochs", "1", "--imgsz", "64", "--workers", "0", "--out", str(out),
              "--latency-budget", "50"]
    runner = CliRunner()
    r0 = runner.invoke(app, [*common, "--shard", "0/2"])
    assert r0.exit_code == 0, r0.output
    assert [p.name for p in (out / "runs").iterdir() if p.is_dir()] == ["fixed-s0"]
    assert not (out / "report.md").exists()  # a shard does not report a partial grid
    eff = json.loads((out / "runs" / "fixed-s0" / "metrics.json").read_text())["efficiency"]
    assert eff["latency_e2e_ms"] > 0 and "--retime" in eff["latency_e2e_ort_skipped"]
    r1 = runner.invoke(app, [*common, "--shard", "1/2"])
    assert r1.exit_code == 0, r1.output
    assert sorted(p.name for p in (out / "runs").iterdir() if p.is_dir()) == ["dual-s0", "fixed-s0"]
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
