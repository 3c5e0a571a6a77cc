"""Deployment advice: the Pareto front of Δm against end-to-end latency recomputed on hand-made
points (ties, dominated points, latencies equal within noise), the budget and tolerance picks,
the front built from run folders, the plot, and the CLI's --latency-budget."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from test_report import make_run

from medmtl.report import collect_runs, write_report
from medmtl.report.pareto import (
    Point,
    analyse,
    budget_pick,
    dominates,
    dominators,
    pareto_front,
    tolerance_pick,
)
from medmtl.report.plots import pareto as pareto_plot
from medmtl.report.recommendations import budget_advice
from medmtl.report.stats import aggregate


def _names(points: list[Point]) -> list[str]:
    return [p.method for p in points]


def _front_by_definition(points: list[Point]) -> set[str]:
    """Written out from the definition, independently of the module: p is off the front when some
    q is at least as accurate and at least as fast (|Δlatency| <= noise sum is a tie), and better
    on one of the two."""
    off = set()
    for p, q in itertools.permutations(points, 2):
        tie = abs(q.latency - p.latency) <= q.noise + p.noise + 1e-9
        q_faster = q.latency < p.latency and not tie
        q_not_slower = tie or q_faster
        if q.accuracy >= p.accuracy and q_not_slower and (q.accuracy > p.accuracy or q_faster):
            off.add(p.method)
    return {p.method for p in points} - off


def test_front_on_hand_made_points() -> None:
    pts = [
        Point("fast", 2.0, 10.0, 0.2),
        Point("best", 8.0, 30.0, 0.5),
        Point("dominated", 1.0, 20.0, 0.2),  # slower and less accurate than "fast"
        Point("tied_slower", 7.0, 30.6, 0.3),  # 0.6 ms slower: within 0.5 + 0.3, a latency tie
        Point("twin", 8.0, 30.4, 0.3),  # same Δm as "best", latency tied: neither dominates
        Point("middle", 5.0, 20.0, 0.2),
        Point("middle_noisy", 5.0, 19.5, 0.1),  # 0.5 ms faster than "middle", beyond 0.2 + 0.1
    ]
    dom = dominators(pts)
    assert dom["dominated"] == ["fast", "middle", "middle_noisy"]
    assert dom["tied_slower"] == ["best", "twin"]  # the tie counts as "not faster"
    assert dom["twin"] == [] and dom["best"] == []
    assert dom["middle"] == ["middle_noisy"]
    front = pareto_front(pts)
    assert _names(front) == ["fast", "middle_noisy", "best", "twin"]  # fastest first
    assert set(_names(front)) == _front_by_definition(pts)
    # without noise the 0.6 ms are a real difference, yet "best" is still faster and better
    assert dominates(Point("a", 8.0, 30.0), Point("b", 7.0, 30.6))
    assert not dominates(Point("a", 8.0, 30.0), Point("b", 8.0, 30.0))  # identical: a tie
    assert dominates(Point("a", 8.0, 30.0), Point("b", 8.0, 30.1))  # zero noise: strictly faster
    assert not dominates(Point("a", 8.0, 30.0, 0.1), Point("b", 8.0, 30.1))  # within noise
    assert dominates(Point("a", 8.0, 30.0, 0.1), Point("b", 8.0, 30.2))  # beyond it


def test_a_delta_m_lead_within_seed_noise_is_a_tie() -> None:
    """Δm 0.7 points apart with seed standard deviations of 3 and 9: a tie, so the faster of
    the two dominates and the more accurate one drops off the front; beyond the band it stays."""
    fast = Point("fast", 1.0, 10.0, 0.1, 3.0)
    slow = Point("slow", 1.7, 20.0, 0.1, 9.0)
    assert dominates(fast, slow) and not dominates(slow, fast)
    assert _names(pareto_front([fast, slow])) == ["fast"]
    precise = Point("slow", 1.7, 20.0, 0.1, 0.2)
    assert not dominates(Point("fast", 1.0, 10.0, 0.1, 0.3), precise)
    assert _names(pareto_front([Point("fast", 1.0, 10.0, 0.1, 0.3), precise])) == ["fast", "slow"]


def test_front_matches_the_definition_on_random_points() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 9))
        acc = rng.choice([-5.0, -2.0, 0.0, 1.0, 3.0], size=n)  # repeated values: accuracy ties
        lat = rng.uniform(5.0, 15.0, size=n).round(1)
        noise = rng.choice([0.0, 0.2, 1.0], size=n)
        pts = [Point(f"m{i}", float(a), float(x), float(z))
               for i, (a, x, z) in enumerate(zip(acc, lat, noise, strict=True))]
        front = pareto_front(pts)
        assert set(_names(front)) == _front_by_definition(pts), trial
        assert front  # never empty
        assert [p.latency for p in front] == sorted(p.latency for p in front)


def test_budget_and_tolerance_picks() -> None:
    pts = [Point("a", 2.0, 10.0, 0.2), Point("b", 5.0, 20.0, 0.2), Point("c", 8.0, 30.0, 0.2),
           Point("c_slow", 8.0, 35.0, 0.2)]
    assert budget_pick(pts, 25.0).method == "b"
    assert budget_pick(pts, 30.0).method == "c"  # the budget is inclusive
    assert budget_pick(pts, 40.0).method == "c"  # equally accurate: the faster one
    assert budget_pick(pts, 9.9) is None
    front = pareto_front(pts)
    assert _names(front) == ["a", "b", "c"]
    assert tolerance_pick(front, 0.0).method == "c"
    assert tolerance_pick(front, 3.0).method == "b"
    assert tolerance_pick(front, 6.0).method == "a"
    assert tolerance_pick([], 1.0) is None
    dep = {"runtime": "torch-cpu", "runtime_label": "PyTorch CPU",
           "points": [{"method": p.method, "delta_m": p.accuracy, "latency_ms": p.latency,
                       "noise_ms": p.noise} for p in pts]}
    rec = budget_advice(dep, 29.9)
    assert rec["method"] == "b" and rec["within"] == ["a", "b"]
    assert "b is the most accurate method within it" in rec["text"]
    assert "noise band" in budget_advice(dep, 20.1)["text"]  # 20.0 + 0.2 > 20.1: close call
    none = budget_advice(dep, 5.0)
    assert none["method"] is None and "no method is within it; the fastest is a" in none["text"]


def test_analyse_reads_the_runs(tmp_path: Path) -> None:
    for seed in (0, 1):
        make_run(tmp_path, "fixed", seed, 0.60, 0.86, e2e=20.0 + 0.9 * seed)  # 20.0, 21.0
        make_run(tmp_path, "dual", seed, 0.64, 0.90, e2e=34.0)
        make_run(tmp_path, "famo", seed, 0.62, 0.87)  # measured before end-to-end latency
        make_run(tmp_path, "detect", seed, 0.65, None, e2e=15.0)
        make_run(tmp_path, "classify", seed, None, 0.91, e2e=8.0)
    runs = collect_runs(tmp_path)
    dep = analyse(runs, aggregate(runs))
    rows = {r["method"]: r for r in dep["points"]}
    assert set(rows) == {"fixed", "dual"}
    assert rows["fixed"]["latency_ms"] == pytest.approx(20.5)  # mean of 20.0 and 21.0
    assert rows["fixed"]["noise_ms"] == pytest.approx(0.5)  # half the seeds' range > 0.3
    assert rows["dual"]["noise_ms"] == pytest.approx(0.3)
    assert rows["dual"]["other_runtimes_ms"]["ort-cpu"] == pytest.approx(0.6 * 34.0)
    assert dep["front"] == ["fixed", "dual"]
    assert dep["excluded"]["detect"].startswith("single-task reference")
    assert "no end-to-end PyTorch CPU latency" in dep["excluded"]["famo"]
    ort = analyse(runs, aggregate(runs), "ort-cpu")
    assert ort["latency_key"] == "latency_e2e_ort_ms"
    assert {r["method"]: r["latency_ms"] for r in ort["points"]}["dual"] == pytest.approx(20.4)
    with pytest.raises(ValueError, match="unknown latency runtime"):
        analyse(runs, aggregate(runs), "tensorrt")
    png = pareto_plot(dep, tmp_path / "plots" / "pareto.png", budget_ms=25.0)
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pareto_plot({"points": []}, tmp_path / "none.png") is None


def test_report_and_cli_name_the_front_and_the_budget(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medmtl.cli import app

    for seed in (0, 1):
        make_run(tmp_path, "fixed", seed, 0.60 + 0.01 * seed, 0.86, e2e=20.0)
        make_run(tmp_path, "gradnorm", seed, 0.58 + 0.01 * seed, 0.85, e2e=20.2)  # tie, worse
        make_run(tmp_path, "dual", seed, 0.64, 0.90 + 0.01 * seed, e2e=34.0)
        make_run(tmp_path, "detect", seed, 0.65, None, e2e=15.0)
        make_run(tmp_path, "classify", seed, None, 0.91, e2e=8.0)
    paths = write_report(tmp_path, latency_budget_ms=30.0)
    summary = json.loads(paths["json"].read_text())
    dep = summary["deployment"]
    assert dep["front"] == ["fixed", "dual"]
    assert {r["method"]: r["dominated_by"] for r in dep["points"]}["gradnorm"] == ["fixed"]
    assert summary["recommendations"]["latency_budget"]["method"] == "fixed"
    assert summary["plots"]["pareto"] == "plots/pareto.png"
    md = paths["md"].read_text()
    assert "Pareto-optimal, fastest first: fixed, dual." in md
    assert "detect (single-task reference: no Δm)" in md
    assert "(plots/pareto.png)" in md
    assert "Caution: some of these latencies were measured at the end" in md  # not re-timed
    runner = CliRunner()
    r = runner.invoke(app, ["report", str(tmp_path), "--latency-budget", "21",
                            "--latency-runtime", "ort-cpu"])  # ONNX Runtime: 0.6 x e2e here
    assert r.exit_code == 0, r.output
    assert "dual is the most accurate method within it" in " ".join(r.output.split())
    summary = json.loads(paths["json"].read_text())
    assert summary["deployment"]["runtime"] == "ort-cpu"
    assert summary["recommendations"]["latency_budget"]["method"] == "dual"
    bad = runner.invoke(app, ["report", str(tmp_path), "--latency-runtime", "tpu"])
    assert bad.exit_code != 0 and "choose from torch-cpu" in " ".join(bad.output.split())


def test_compressed_variants_enter_the_front(tmp_path: Path) -> None:
    """<run>/compressed/<kind>/metrics.json (`medmtl val` of an exported graph) -> a point
    `<method>+<kind>` with its own Δm against the same references and its ONNX Runtime latency."""
    from medmtl.report.render import build_summary

    for seed in (0, 1):
        d = make_run(tmp_path, "fixed", seed, 0.60, 0.86, e2e=20.0)
        make_run(tmp_path, "dual", seed, 0.64, 0.90, e2e=34.0)
        make_run(tmp_path, "detect", seed, 0.65, None, e2e=15.0)
        make_run(tmp_path, "classify", seed, None, 0.91, e2e=8.0)
        m = json.loads((d / "metrics.json").read_text())
        m["detection"]["map50"] -= 0.03  # INT8 loses 3 mAP points and runs faster on ORT
        m["efficiency"] = {"latency_e2e_ort_ms": 7.0, "latency_e2e_ort_noise_ms": 0.2}
        (d / "compressed" / "int8").mkdir(parents=True)
        (d / "compressed" / "int8" / "metrics.json").write_text(json.dumps(m))
        other = dict(m, split="test")  # scored on another split: not comparable, left out
        (d / "compressed" / "half").mkdir()
        (d / "compressed" / "half" / "metrics.json").write_text(json.dumps(other))
    runs = collect_runs(tmp_path)
    dep = build_summary(runs, latency_runtime="ort-cpu")["deployment"]
    rows = {r["method"]: r for r in dep["points"]}
    assert set(rows) == {"fixed", "dual", "fixed+int8"}
    assert rows["fixed+int8"]["compressed"] == "int8" and rows["fixed+int8"]["of"] == "fixed"
    assert rows["fixed+int8"]["latency_ms"] == pytest.approx(7.0)
    # Δm over (map50, map50_95, accuracy, macro_f1): the map50 term falls by 3/0.65 % / 4
    assert rows["fixed"]["delta_m"] - rows["fixed+int8"]["delta_m"] == \
        pytest.approx(0.03 / 0.65 * 100 / 4, rel=1e-6)
    # fastest (7 ms against 12), less accurate than fixed: both stay on the front
    assert dep["front"] == ["fixed+int8", "fixed", "dual"]
    cpu = build_summary(runs)["deployment"]  # PyTorch CPU: the graph has no such latency
    assert "compressed ONNX graph" in cpu["excluded"]["fixed+int8"]


def test_compressed_graphs_have_their_own_scores_and_change(tmp_path: Path) -> None:
    """The INT8 graphs' mAP and view accuracy, mean ± std over seeds and paired against the
    float run of each seed, are in summary.json and report.md (the README's INT8 figures come
    from there); no significance verdict is drawn on them."""
    drops = {0: 0.03, 1: 0.05, 2: 0.04}
    floats, graphs = {}, {}
    for seed, drop in drops.items():
        d = make_run(tmp_path, "fixed", seed, 0.60 + 0.01 * seed, 0.86, e2e=20.0)
        make_run(tmp_path, "detect", seed, 0.65, None, e2e=15.0)
        make_run(tmp_path, "classify", seed, None, 0.91, e2e=8.0)
        m = json.loads((d / "metrics.json").read_text())
        floats[seed] = (m["detection"]["map50"], m["classification"]["accuracy"])
        m["detection"]["map50"] -= drop
        m["classification"]["accuracy"] += 0.01 * seed
        graphs[seed] = (m["detection"]["map50"], m["classification"]["accuracy"])
        (d / "compressed" / "int8").mkdir(parents=True)
        (d / "compressed" / "int8" / "metrics.json").write_text(json.dumps(m))
    paths = write_report(tmp_path, plots=False)
    block = json.loads(paths["json"].read_text())["compressed"]["fixed+int8"]
    assert (block["of"], block["kind"], block["seeds"]) == ("fixed", "int8", [0, 1, 2])
    g = np.array([graphs[s][0] for s in drops])
    assert block["metrics"]["map50"]["mean"] == pytest.approx(g.mean(), rel=1e-9)
    assert block["metrics"]["map50"]["std"] == pytest.approx(g.std(ddof=1), rel=1e-9)
    assert block["change"]["map50"]["mean"] == pytest.approx(-0.04, abs=1e-9)
    assert block["change"]["map50"]["std"] == pytest.approx(0.01, rel=1e-6)
    assert block["change"]["accuracy"]["mean"] == pytest.approx(0.01, abs=1e-9)
    assert all(set(c) == {"mean", "std", "n", "per_seed"} for c in block["change"].values())
    md = paths["md"].read_text()
    assert "## Compressed graphs" in md
    row = next(line for line in md.splitlines() if line.startswith("| fixed+int8 | fixed | 3 |"))
    assert f"{g.mean():.3f} ± {g.std(ddof=1):.3f} (-0.040 ± 0.010)" in row, row
