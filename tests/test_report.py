"""Report package: t distribution, paired verdicts, Δm, collection errors, and that every number
shown in report.md / report.html / summary.json equals what the runs' metrics.json hold."""

from __future__ import annotations

import csv
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from medmtl.report import (
    ReportError,
    aggregate,
    build_summary,
    collect_runs,
    compare,
    paired_ttest,
    write_report,
)
from medmtl.report.significance import NO_SPREAD, apply_holm

VIEWS = ["A4C", "PLAX", "PSAX"]
BOXES = ["MR", "TR", "AR", "PR"]
ARCH = {"dual": "dual", "split2": "split2", "detect": "single", "classify": "single"}


def make_run(root: Path, method: str, seed: int, map50: float | None, acc: float | None, *,
             ms: float = 14.2, mb: float = 12.4, epochs: int = 6, finished: bool = True,
             pr: bool = False, weights: dict[str, float] | None = None,
             e2e: float | None = None) -> Path:
    """A run directory in the trainer's exact formats, with realistic numbers (``e2e``: the
    end-to-end latency of seed 0, as `medmtl.inference.latency` writes it)."""
    d = root / "runs" / f"{method}-s{seed}"
    d.mkdir(parents=True)
    arch = ARCH.get(method, "shared")
    tasks = [t for t, v in (("detect", map50), ("classify", acc)) if v is not None]
    cfg = {"data": "data.yaml", "method": method, "seed": seed, "epochs": epochs, "imgsz": 320,
           "model": {"arch": arch, "size": "n", "tasks": tasks, "view_source": "backbone"},
           "balancer": {"name": "fixed", "weights": {"detect": 1.0, "classify": 1.0}}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    rng = np.random.default_rng(seed * 100 + len(method))
    cols = ["epoch", "loss/detect", "loss/classify", "weight/detect", "weight/classify",
            "grad_cos", "lr", "seconds", "val/map50", "val/map50_95", "val/accuracy",
            "val/macro_f1", "val/loss/detect", "val/loss/classify", "step_ms", "peak_mem_mb"]
    with (d / "history.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for ep in range(epochs):
            frac = (ep + 1) / epochs
            det = map50 is not None
            cls = acc is not None
            w.writerow([ep, f"{3.1 - 1.4 * frac + rng.normal(0, .03):.4f}" if det else "",
                        f"{1.05 - 0.7 * frac + rng.normal(0, .02):.4f}" if cls else "",
                        f"{1.0 + 0.1 * frac:.4f}" if det else "",
                        f"{1.0 - 0.1 * frac:.4f}" if cls else "",
                        f"{0.05 - 0.08 * frac + rng.normal(0, .01):.4f}"
                        if arch == "shared" else "", f"{2e-3 * (1 - 0.9 * frac):.6f}", "41.7",
                        f"{map50 * frac:.4f}" if det else "",
                        f"{map50 * 0.45 * frac:.4f}" if det else "",
                        f"{acc * (0.6 + 0.4 * frac):.4f}" if cls else "",
                        f"{acc * (0.55 + 0.4 * frac):.4f}" if cls else "",
                        f"{2.4 - frac:.4f}" if det else "", f"{0.9 - 0.5 * frac:.4f}" if cls else "",
                        "88.1", "1843.0"])
    if not finished:
        return d
    detection = None if map50 is None else {
        "map50": map50, "map50_95": round(map50 * 0.452, 4), "precision": round(map50 + .05, 4),
        "recall": round(map50 - .03, 4), "f1": round(map50 + .01, 4),
        "per_class": {n: {"ap50": round(map50 + .02 * (i - 1.5), 4),
                          "ap50_95": round(map50 * .45, 4)} for i, n in enumerate(BOXES)}}
    classification = None if acc is None else {
        "accuracy": acc, "macro_f1": round(acc - .021, 4),
        "confusion": [[50 + seed, 3, 2], [4, 61, 5], [1, 6, 51 - seed]],
        "per_class": {v: {"precision": .9, "recall": round(.8 + .01 * seed + .02 * i, 4),
                          "f1": .87} for i, v in enumerate(VIEWS)}}
    metrics = {
        "split": "val", "images": 183, "detection": detection, "classification": classification,
        "val_loss": {"detect": 1.41 + seed * 0.01 if map50 is not None else None,
                     "classify": 0.43 - seed * 0.01 if acc is not None else None},
        "efficiency": {"params": 3_154_321 if arch != "dual" else 6_021_777, "gflops": 4.37,
                       "ms_per_image": ms + 0.1 * seed, "images_per_s": 1000 / (ms + 0.1 * seed),
                       "latency_device": "cpu", "imgsz": 320, "weights_mb": mb},
        "training": {"seconds": 250.3 + 7 * seed, "epochs": epochs, "peak_mem_mb": 1843.0,
                     "best_epoch": epochs - 1, "method": method, "arch": arch,
                     "balancer": "fixed", "seed": seed,
                     "final_weights": weights if len(tasks) == 2 else None}}
    if e2e is not None:
        metrics["efficiency"].update({  # type: ignore[union-attr]
            "latency_e2e_ms": e2e + 0.1 * seed, "latency_e2e_p90_ms": e2e + 0.1 * seed + 0.8,
            "latency_e2e_noise_ms": 0.3, "latency_e2e_n": 30,
            "latency_e2e_ort_ms": 0.6 * e2e, "latency_e2e_ort_p90_ms": 0.6 * e2e + 0.5,
            "latency_e2e_ort_noise_ms": 0.2, "latency_e2e_ort_n": 30,
            "latency_e2e_includes": "read + decode a 430x320 JPEG file, letterbox to 320, "
                                    "forward, NMS; batch 1", "latency_e2e_threads": 2})
    (d / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if pr and map50 is not None:
        rec = np.linspace(0, 1, 101)
        (d / "eval").mkdir()
        (d / "eval" / "pr_curves.json").write_text(json.dumps(
            {"recall": rec.tolist(), "per_class": {n: np.clip(1 - rec ** (2 + i), 0, 1).tolist()
                                                   for i, n in enumerate(BOXES)}}))
    return d


# method -> per-seed (mAP@0.5, view accuracy, ms/image, weights MB)
STUDY: dict[str, list[tuple[float | None, float | None, float, float]]] = {
    "fixed": [(0.612, 0.861, 14.2, 12.4), (0.598, 0.874, 14.2, 12.4), (0.605, 0.869, 14.2, 12.4)],
    "gradnorm": [(0.624, 0.866, 14.2, 12.4), (0.609, 0.871, 14.2, 12.4),
                 (0.621, 0.858, 14.2, 12.4)],
    "dual": [(0.648, 0.902, 27.9, 24.3), (0.641, 0.897, 27.9, 24.3), (0.655, 0.905, 27.9, 24.3)],
    "original": [(0.301, 0.712, 14.9, 12.5), (0.288, 0.705, 14.9, 12.5),
                 (0.296, 0.721, 14.9, 12.5)],
    "detect": [(0.651, None, 12.9, 11.1), (0.644, None, 12.9, 11.1), (0.659, None, 12.9, 11.1)],
    "classify": [(None, 0.908, 6.1, 5.2), (None, 0.899, 6.1, 5.2), (None, 0.911, 6.1, 5.2)],
}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compare")
    for method, seeds in STUDY.items():
        for seed, (mp, ac, ms, mb) in enumerate(seeds):
            make_run(root, method, seed, mp, ac, ms=ms, mb=mb, pr=(seed == 0),
                     weights={"detect": 1.0 + 0.05 * seed, "classify": 1.0 - 0.05 * seed},
                     e2e=ms + 6.0)
    make_run(root, "pcgrad", 0, 0.61, 0.86, finished=False, epochs=3)
    return root


@pytest.fixture(scope="module")
def report(study: Path) -> dict[str, Path]:
    return write_report(study)


# --- t-test (scipy) -----------------------------------------------------------------------

@pytest.mark.parametrize("t,df,p", [(2.776, 4, 0.05), (12.706, 1, 0.05), (2.228, 10, 0.05),
                                    (1.0, 1, 0.5), (2.0, 10, 0.07339), (4.604, 4, 0.01)])
def test_paired_ttest_known_values(t: float, df: float, p: float) -> None:
    """Differences built to give a chosen t: the p-values of the t table."""
    n = df + 1
    d = np.resize([1.0, -1.0], n)
    d -= d.mean()
    d = d / d.std(ddof=1) + t / math.sqrt(n)  # sd 1, mean t / sqrt(n) -> t
    got_t, got_p, got_df, _ = paired_ttest(d, np.zeros(n))
    assert got_t == pytest.approx(t) and got_df == df
    assert got_p == pytest.approx(p, abs=2e-4)
    assert paired_ttest(-d, np.zeros(n))[1] == pytest.approx(p, abs=2e-4)


def test_paired_ttest_without_spread() -> None:
    """Identical differences in every seed: no test (NaN), never p = 0; compare() gives no
    verdict and no p-value, so the pair stays out of the Holm family."""
    for a, b in (([0.5, 0.6], [0.4, 0.5]), ([0.5, 0.6], [0.5, 0.6])):
        t, p, df, ci = paired_ttest(a, b)
        assert math.isnan(t) and math.isnan(p) and df == 1
        assert ci == pytest.approx((a[0] - b[0],) * 2)
    out = compare({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5}, higher_is_better=True)
    assert out["p"] is None and out["verdict"] == NO_SPREAD
    assert apply_holm([(out, True)]) == 0
    with pytest.raises(ValueError, match="2 pairs"):
        paired_ttest([0.5], [0.4])


# --- verdicts ------------------------------------------------------------------------------

def test_identical_configs_with_seed_noise_are_indistinguishable() -> None:
    a = {0: 0.612, 1: 0.598}
    b = {0: 0.605, 1: 0.611}  # same configuration, another draw of seed noise
    out = compare(b, a, higher_is_better=True)
    assert out["verdict"] == "indistinguishable" and out["n_pairs"] == 2 and out["p"] > 0.05


def test_crippled_method_is_worse() -> None:
    base = {0: 0.612, 1: 0.598}
    crippled = {0: 0.301, 1: 0.288}
    assert compare(crippled, base, higher_is_better=True)["verdict"] == "worse"
    # lower-is-better metric: a much higher validation loss is worse too
    assert compare({0: 2.9, 1: 3.05}, {0: 1.41, 1: 1.42}, higher_is_better=False)["verdict"] \
        == "worse"
    assert compare({0: 0.3, 1: 0.29, 2: 0.31}, {0: 0.2, 1: 0.2, 2: 0.21}, True)["verdict"] \
        == "better"


def test_non_finite_values_are_not_indistinguishable(tmp_path: Path) -> None:
    assert compare({0: math.nan, 1: 0.3}, {0: 0.6, 1: 0.61}, True)["verdict"].startswith(
        "undefined")
    for seed in (0, 1):
        make_run(tmp_path, "fixed", seed, 0.6 + 0.01 * seed, 0.86)
        make_run(tmp_path, "gradnorm", seed, math.nan if seed else 0.5, 0.87)
    paths = write_report(tmp_path)  # the figures must survive a NaN too
    row = _row(_md_tables(paths["md"].read_text()), "Detection (regurgitation jet boxes)",
               "gradnorm")
    assert row["mAP@0.5"].startswith("nan") and row["mAP@0.5 vs baseline"].startswith("undefined")
    rec = json.loads(paths["json"].read_text())["recommendations"]["accuracy_first"]
    assert rec["method"] == "fixed" and rec["excluded_non_finite"] == ["gradnorm"]


def test_fewer_than_two_pairs_cannot_tell() -> None:
    assert compare({0: 0.3}, {0: 0.6}, True)["verdict"] == "not enough seeds to tell"
    assert compare({0: 0.3, 1: 0.3}, {1: 0.6, 2: 0.6}, True)["verdict"] == \
        "not enough seeds to tell"  # only seed 1 pairs


# --- collection ----------------------------------------------------------------------------

def test_malformed_files_are_named(tmp_path: Path) -> None:
    d = make_run(tmp_path, "fixed", 0, 0.6, 0.85)
    (d / "metrics.json").write_text('{"detection": {"map50": 0.6,')
    with pytest.raises(ReportError, match=r"fixed-s0/metrics\.json"):
        collect_runs(tmp_path)
    (d / "metrics.json").write_text('{"detection": {"map50": "high"}}')
    with pytest.raises(ReportError, match=r"metrics\.json.*detection\.map50"):
        collect_runs(tmp_path)
    make_run(tmp_path, "dwa", 1, 0.6, 0.85, finished=False)
    (d / "metrics.json").unlink()
    hist = tmp_path / "runs" / "dwa-s1" / "history.csv"
    hist.write_text(hist.read_text().replace("41.7", "fast", 1))
    with pytest.raises(ReportError, match=r"dwa-s1/history\.csv.*line 2.*'seconds'"):
        collect_runs(tmp_path)


def test_unfinished_runs_are_listed(study: Path, report: dict[str, Path]) -> None:
    runs = collect_runs(study)
    assert [r.name for r in runs if not r.finished] == ["pcgrad-s0"]
    summary = json.loads(report["json"].read_text())
    assert summary["unfinished"][0]["method"] == "pcgrad"
    assert summary["unfinished"][0]["epochs_logged"] == 3
    assert "pcgrad seed 0: 3 epoch(s) logged" in report["md"].read_text()
    assert summary["methods"]["pcgrad"]["n"] == 0


# --- aggregation, Δm, recommendations ------------------------------------------------------

def _mean(method: str, i: int) -> float:
    return float(np.mean([s[i] for s in STUDY[method]]))


def test_aggregate_delta_m_and_verdicts(study: Path) -> None:
    agg = aggregate(collect_runs(study))
    assert agg["baseline"] == "fixed"
    ms = agg["methods"]
    cell = ms["gradnorm"]["metrics"]["map50"]
    vals = [s[0] for s in STUDY["gradnorm"]]
    assert cell["mean"] == pytest.approx(np.mean(vals)) and cell["std"] == pytest.approx(
        np.std(vals, ddof=1))
    rel = (_mean("gradnorm", 0) - _mean("fixed", 0)) / _mean("fixed", 0) * 100
    assert ms["gradnorm"]["relative_to_baseline_pct"]["map50"] == pytest.approx(rel)
    assert ms["original"]["significance"]["map50"]["verdict"] == "worse"
    # 3 seeds, 24 tests in the family: dual's raw p < 0.05 does not survive Holm
    dual = ms["dual"]["significance"]["map50"]
    assert dual["verdict_unadjusted"] == "better" and dual["p"] < 0.05 < dual["p_adj"]
    assert dual["verdict"] == "indistinguishable"
    dm_ref = 0.5 * ((_mean("dual", 0) - _mean("detect", 0)) / _mean("detect", 0)
                    + (_mean("dual", 1) - _mean("classify", 1)) / _mean("classify", 1)) * 100
    assert ms["dual"]["delta_m_two"]["available"]
    assert ms["dual"]["delta_m_two"]["mean"] == pytest.approx(dm_ref)
    assert ms["dual"]["delta_m"]["available"] and ms["dual"]["delta_m"]["metrics"] == {
        "detect": ["map50", "map50_95"], "classify": ["accuracy", "macro_f1"]}
    assert not ms["detect"]["delta_m"]["available"]
    assert not ms["detect"]["delta_m_two"]["available"]
    # configurable references of the two-metric form: mAP@0.5:0.95 and macro-F1
    other = aggregate(collect_runs(study), delta_m_metrics={"detect": "map50_95",
                                                            "classify": "macro_f1"})
    det = {m: _metrics_mean(study, m, "detection", "map50_95") for m in ("dual", "detect")}
    cls = {m: _metrics_mean(study, m, "classification", "macro_f1") for m in ("dual", "classify")}
    assert other["methods"]["dual"]["delta_m_two"]["mean"] == pytest.approx(
        50 * ((det["dual"] - det["detect"]) / det["detect"]
              + (cls["dual"] - cls["classify"]) / cls["classify"]))
    with pytest.raises(ValueError, match="delta_m_metrics"):
        aggregate(collect_runs(study), delta_m_metrics={"detect": "mAP"})


def test_delta_m_unavailable_without_single_task_runs(tmp_path: Path) -> None:
    for seed in (0, 1):
        make_run(tmp_path, "fixed", seed, 0.6 + 0.01 * seed, 0.86)
        make_run(tmp_path, "famo", seed, 0.62 - 0.01 * seed, 0.87)
    paths = write_report(tmp_path, plots=False)
    summary = json.loads(paths["json"].read_text())
    for m in ("fixed", "famo"):
        dm = summary["methods"][m]["delta_m"]
        assert dm["available"] is False and dm["mean"] is None and "single-task" in dm["reason"]
    assert summary["recommendations"]["accuracy_first"]["score_name"] == "combined"
    assert "unavailable" in paths["md"].read_text()


def test_recommendations_follow_the_numbers(study: Path, report: dict[str, Path]) -> None:
    rec = json.loads(report["json"].read_text())["recommendations"]
    joint = ["fixed", "gradnorm", "dual", "original"]
    four = [("detection", "map50", "detect"), ("detection", "map50_95", "detect"),
            ("classification", "accuracy", "classify"),
            ("classification", "macro_f1", "classify")]
    dm = {m: np.mean([(_metrics_mean(study, m, sec, k) - _metrics_mean(study, ref, sec, k))
                      / _metrics_mean(study, ref, sec, k) for sec, k, ref in four])
          for m in joint}  # the main Δm, over the four metrics
    acc = rec["accuracy_first"]
    assert acc["score_name"] == "delta_m" and acc["method"] == max(dm, key=dm.get)
    assert "original" in acc["worse"]
    # efficiency first: the Pareto front of Δm against end-to-end latency; fixed and gradnorm
    # share an architecture (latencies tie), so the more accurate gradnorm dominates fixed
    lat = {m: _metrics_mean(study, m, "efficiency", "latency_e2e_ms") for m in joint}
    eff = rec["efficiency_first"]
    assert eff["criterion"] == "pareto_delta_m_latency"
    assert eff["front"] == ["gradnorm", "dual"] and lat["gradnorm"] < lat["dual"]
    assert dm["dual"] - dm["gradnorm"] > 0.01  # more than the 1-point tolerance (Δm in %)
    assert eff["method"] == "dual" and eff["tradeoff"] is None  # the best is the pick
    assert eff["text"] in report["md"].read_text()
    loose = build_summary(collect_runs(study), delta_m_tolerance=100 * (dm["dual"] - dm["gradnorm"])
                          + 0.01)["recommendations"]["efficiency_first"]
    assert loose["method"] == "gradnorm"
    speed = lat["dual"] / lat["gradnorm"]
    assert loose["tradeoff"]["speedup"] == pytest.approx(speed)
    assert f"{speed:.2f}× faster than dual" in loose["text"]


# --- outputs: every number equals the runs' metrics.json -----------------------------------

def _md_tables(md: str) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    section = ""
    for line in md.splitlines():
        if line.startswith("## "):
            section = line[3:]
        elif line.startswith("| ") and section and not line.startswith("|---"):
            out.setdefault(section, []).append([c.strip() for c in line.strip("|").split(" | ")])
    return out


class _HTMLTables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.section, self.tag, self.row = "", "", None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tag = tag
        if tag == "tr":
            self.row = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self.row is not None:
            self.tables.setdefault(self.section, []).append(self.row)
            self.row = None
        self.tag = ""

    def handle_data(self, data: str) -> None:
        if self.tag == "h2":
            self.section = data
        elif self.tag in ("td", "th") and self.row is not None:
            self.row.append(data)


def _row(tables: dict[str, list[list[str]]], section: str, method: str) -> dict[str, str]:
    header, *rows = tables[section]
    row = next(r for r in rows if r[0] == method)
    return dict(zip(header, row, strict=True))


def _metrics_mean(study: Path, method: str, section: str, key: str) -> float:
    vals = [json.loads(p.read_text())[section][key]
            for p in sorted((study / "runs").glob(f"{method}-s*/metrics.json"))]
    return float(np.mean(vals))


CHECKS = [("Detection (regurgitation jet boxes)", "detection",
           [("map50", "mAP@0.5"), ("map50_95", "mAP@0.5:0.95"), ("precision", "precision"),
            ("recall", "recall"), ("f1", "F1")]),
          ("View classification", "classification",
           [("accuracy", "view accuracy"), ("macro_f1", "view macro-F1")])]


def test_every_number_in_the_report_equals_metrics_json(study: Path,
                                                        report: dict[str, Path]) -> None:
    summary = json.loads(report["json"].read_text())
    md = _md_tables(report["md"].read_text())
    parser = _HTMLTables()
    parser.feed(report["html"].read_text())
    checked = 0
    for method, seeds in STUDY.items():
        for section, block, pairs in CHECKS:
            if seeds[0][0 if block == "detection" else 1] is None:
                assert method not in [r[0] for r in md[section][1:]]
                continue
            md_row, html_row = _row(md, section, method), _row(parser.tables, section, method)
            for key, label in pairs:
                truth = _metrics_mean(study, method, block, key)
                assert summary["methods"][method]["metrics"][key]["mean"] == pytest.approx(
                    truth, abs=1e-12)
                for run in summary["runs"]:
                    if run["method"] == method:
                        path = study / "runs" / f"{method}-s{run['seed']}" / "metrics.json"
                        assert run["metrics"][key] == json.loads(path.read_text())[block][key]
                assert md_row[label].split(" ± ")[0] == f"{truth:.3f}"
                assert html_row[label] == md_row[label]
                checked += 1
        eff = _row(md, "Efficiency", method)
        truth_ms = _metrics_mean(study, method, "efficiency", "ms_per_image")
        assert eff["ms/image"].split(" ± ")[0] == f"{truth_ms:.1f}"
        params = _metrics_mean(study, method, "efficiency", "params")
        assert eff["parameters"].split(" ± ")[0] == f"{params / 1e6:.2f}M"
        secs = _metrics_mean(study, method, "training", "seconds")
        assert eff["training time (s)"].split(" ± ")[0] == f"{secs:.1f}"
    assert checked == 4 * 7 + 5 + 2  # joint methods: both tables; detect; classify


def test_outputs_are_complete_and_self_contained(report: dict[str, Path]) -> None:
    html_text = report["html"].read_text()
    assert "http://" not in html_text and "https://" not in html_text
    assert "<link" not in html_text and "<script" not in html_text
    assert html_text.count("data:image/png;base64,") == 7
    md = report["md"].read_text()
    assert "How to read this report" in md and "How to read this report" in html_text
    for name in ("metric_bars", "pareto", "training_curves", "task_weights", "grad_cos",
                 "pr_curves", "confusion"):
        png = report[f"plot_{name}"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(plots/{name}.png)" in md
    with report["csv"].open() as f:
        rows = list(csv.DictReader(f))
    by = {r["method"]: r for r in rows}
    assert float(by["fixed"]["map50_mean"]) == pytest.approx(_mean("fixed", 0))
    assert float(by["fixed"]["map50_std"]) == pytest.approx(
        np.std([s[0] for s in STUDY["fixed"]], ddof=1))
    assert by["pcgrad"]["n_seeds"] == "0" and by["detect"]["accuracy_mean"] == ""
    summary: dict[str, Any] = json.loads(report["json"].read_text())
    assert set(summary) >= {"baseline", "methods", "runs", "unfinished", "recommendations"}


def test_single_seed_one_banner_not_dashes(tmp_path: Path) -> None:
    """#15.4: one banner says there is a single seed; cells show the value alone."""
    make_run(tmp_path, "fixed", 0, 0.612, 0.861)
    make_run(tmp_path, "cagrad", 0, 0.633, 0.85)
    paths = write_report(tmp_path, baseline="fixed", plots=False)
    md = paths["md"].read_text()
    row = _row(_md_tables(md), "Detection (regurgitation jet boxes)", "cagrad")
    assert row["mAP@0.5"] == "0.633" and "± —" not in md
    assert md.count("> **Note:** Every method ran a single seed") == 1
    assert 'class="banner">Every method ran a single seed' in paths["html"].read_text()
    assert row["mAP@0.5 vs baseline"] == "not enough seeds to tell"
    assert row["Δ mAP@0.5 vs baseline (%)"] == f"{(0.633 - 0.612) / 0.612 * 100:+.1f}"
    with pytest.raises(ValueError, match="baseline 'dwa'"):
        write_report(tmp_path, baseline="dwa", plots=False)


def test_view_recall_per_class_is_the_mean_over_seeds(study: Path,
                                                      report: dict[str, Path]) -> None:
    """Accuracy alone hides a view the model never predicts: the report lists each view's
    recall (mean over seeds) next to it."""
    lines = report["md"].read_text().splitlines()
    at = lines.index(next(ln for ln in lines if ln.startswith("### View recall per class")))
    header, *rows = [[c.strip() for c in ln.strip("|").split(" | ")]
                     for ln in lines[at + 1:at + 12] if ln.startswith("| ")]
    assert header == ["method", *VIEWS]
    by_method = {r[0]: r[1:] for r in rows}
    for method, seeds in STUDY.items():
        if seeds[0][1] is None:
            assert method not in by_method
            continue
        n = len(seeds)
        want = [f"{.8 + .01 * (n - 1) / 2 + .02 * i:.3f}" for i in range(len(VIEWS))]
        assert by_method[method] == want, method


# --- issue #24.11: no best method without the evidence for one ------------------------------

def _no_best(text: str) -> bool:
    """No method is called best ("best epoch", a column of the per-run table, aside)."""
    import re
    return re.search(r"\bbest\b(?! epoch)", text, re.I) is None


def test_differences_within_noise_name_no_best_method(tmp_path: Path) -> None:
    """Two methods whose scores swap from seed to seed: the top one is not crowned, and the
    report says why; every interval column names the split it is over."""
    for seed, (a, b) in enumerate([(0.60, 0.61), (0.62, 0.60), (0.61, 0.62)]):
        make_run(tmp_path, "fixed", seed, a, 0.86 + 0.01 * seed)
        make_run(tmp_path, "gradnorm", seed, b, 0.87 - 0.01 * seed)
    paths = write_report(tmp_path, plots=False)
    md = paths["md"].read_text()
    acc = json.loads(paths["json"].read_text())["recommendations"]["accuracy_first"]
    assert acc["method"] is None and acc["recommended"] is False and acc["top"] == "fixed"
    # fixed's combined score 1.000 vs gradnorm's 0.994: paired p = 0.64, far from 0.05
    gn = acc["ranking"][1]
    assert gn["method"] == "gradnorm" and gn["vs_best"]["verdict"] == "indistinguishable"
    assert gn["vs_best"]["p"] > 0.5
    assert acc["why_no_pick"] == ["the lead of fixed over gradnorm is within seed noise (not "
                                  "significantly lower: paired t-test, Holm-adjusted)"]
    rec = md.split("## Recommendations")[1].split("\n## ")[0]
    assert rec.strip().startswith("Accuracy first: no method can be recommended: the lead of "
                                  "fixed over gradnorm is within seed noise")
    assert "| fixed | 1.000 ± 0.012 | 3 | top score (not recommended) |" in rec
    assert _no_best(md) and _no_best(acc["text"])
    # every interval column names its split (these runs were scored on val)
    headers = [ln for ln in md.splitlines() if "CI" in ln]
    assert headers == ["| method | metric | difference | 95 % CI over seeds (t, val split) | "
                       "95 % CI over val clips (bootstrap) | p | Holm p | verdict |"]


def test_one_seed_at_a_tiny_budget_crowns_nothing(tmp_path: Path) -> None:
    """The report that named a method best on mAP@0.5 0.027 vs 0.007 (+277 %) with one seed
    each: no method learnt detection, so every recommendation is withheld; with learning but one
    seed, the seeds are the reason."""
    make_run(tmp_path / "a", "fixed", 0, 0.007, 0.86)
    make_run(tmp_path / "a", "gradnorm", 0, 0.027, 0.87)
    paths = write_report(tmp_path / "a", plots=False)
    recs = json.loads(paths["json"].read_text())["recommendations"]
    assert recs["withheld"] == (
        "No recommendation: no method learnt both tasks, so differences between them are noise "
        "(fixed's mAP@0.5 0.007 is not above the floor 0.05; gradnorm's mAP@0.5 0.027 is not "
        "above the floor 0.05). Train longer (more epochs or images) and report again.")
    md = paths["md"].read_text()
    assert "Accuracy first" not in md and _no_best(md)
    # mAP fine, but view accuracy 0.30: below the majority-class rate of the scored split
    # (make_run's confusion rows sum to 55, 70, 58: 70 / 183 = 0.383)
    make_run(tmp_path / "b", "fixed", 0, 0.60, 0.30)
    make_run(tmp_path / "b", "gradnorm", 0, 0.62, 0.31)
    recs = build_summary(collect_runs(tmp_path / "b"))["recommendations"]
    assert "view accuracy 0.310 is not above the majority-class rate 0.383" in recs["withheld"]
    # both tasks learnt, one seed each: no pick, and the seeds say why
    make_run(tmp_path / "c", "fixed", 0, 0.60, 0.86)
    make_run(tmp_path / "c", "gradnorm", 0, 0.66, 0.88)
    recs = build_summary(collect_runs(tmp_path / "c"))["recommendations"]
    acc = recs["accuracy_first"]
    assert recs["withheld"] is None and acc["method"] is None and acc["top"] == "gradnorm"
    assert acc["why_no_pick"] == ["fixed (1), gradnorm (1) ran fewer than 2 seeds, so seed "
                                  "noise cannot be told from a difference (`medmtl compare "
                                  "--seeds 3`)"]


def test_losses_are_scored_on_the_test_split_or_left_out() -> None:
    """A run held out on test is scored on test for every quantity with a verdict: the losses
    come from the test block, never from val (the split that chose the checkpoint)."""
    from medmtl.report.collect import extract, scored_view

    raw = {"split": "val", "detection": {"map50": 0.5}, "classification": {"accuracy": 0.8},
           "val_loss": {"detect": 1.0, "classify": 0.3},
           "test": {"split": "test", "detection": {"map50": 0.4},
                    "classification": {"accuracy": 0.7},
                    "val_loss": {"detect": 1.7, "classify": 0.6}}}
    view, split = scored_view(raw)
    got = extract(view)
    assert split == "test" and (got["val_loss_detect"], got["val_loss_classify"]) == (1.7, 0.6)
    del raw["test"]["val_loss"]
    got = extract(scored_view(raw)[0])
    assert got["val_loss_detect"] is None and got["map50"] == 0.4


def _held_out_run(root: Path, method: str, seed: int, val: tuple[float | None, float | None],
                  test: tuple[float | None, float | None]) -> None:
    """A run scored on val (chose its checkpoint) and on a held-out test block."""
    def block(split: str, mp: float | None, acc: float | None) -> dict[str, Any]:
        return {"split": split, "images": 50,
                "detection": None if mp is None else {"map50": mp, "map50_95": mp / 2},
                "classification": None if acc is None else {
                    "accuracy": acc, "macro_f1": acc - 0.1, "confusion": [[10, 0], [0, 10]]}}
    d = root / "runs" / f"{method}-s{seed}"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"method": method, "seed": seed}))
    (d / "metrics.json").write_text(json.dumps({**block("val", *val),
                                                "test": block("test", *test)}))


def test_the_method_is_chosen_on_val_and_confirmed_on_test(tmp_path: Path) -> None:
    """dual leads on val in every seed. On test it leads clearly too: chosen on val, confirmed
    on test, recommended. When test reverses the order, the val choice is not confirmed and no
    method is named."""
    def study(root: Path, dual_test: float) -> dict[str, Any]:
        for s in range(3):
            jitter = 0.004 * s
            _held_out_run(root, "detect", s, (0.50, None), (0.50, None))
            _held_out_run(root, "classify", s, (None, 0.80), (None, 0.80))
            _held_out_run(root, "fixed", s, (0.45 + jitter, 0.78), (0.45 + jitter, 0.78))
            _held_out_run(root, "dual", s, (0.55 + jitter, 0.80),
                          (dual_test + 2 * jitter, 0.80))
        return json.loads(write_report(root, plots=False)["json"].read_text())
    acc = study(tmp_path / "a", 0.56)["recommendations"]["accuracy_first"]
    assert (acc["chosen_on"], acc["confirmed_on"], acc["chosen"]) == ("val", "test", "dual")
    assert acc["val_ranking"][0]["method"] == "dual" and acc["recommended"] is True
    assert "chosen on val (highest Δm there" in acc["text"] and "confirmed on test" in acc["text"]
    md = (tmp_path / "a" / "report.md").read_text()
    assert "| method | score (delta_m), test | score, val | seeds | vs the chosen method (test) |" \
        in md
    assert re.search(r"\| dual \| [-0-9.]+ ± [0-9.]+ \| [-0-9.]+ ± [0-9.]+ \| 3 \| "
                     r"chosen on val, recommended \|", md)
    acc = study(tmp_path / "b", 0.30)["recommendations"]["accuracy_first"]
    assert acc["chosen"] == "dual" and acc["ranking"][0]["method"] == "fixed"
    assert acc["method"] is None and acc["recommended"] is False
    assert any("chosen on val, is not confirmed on test: fixed" in w for w in acc["why_no_pick"])
    assert "| 3 | chosen on val, not recommended |" in (tmp_path / "b" / "report.md").read_text()
    # the reference figures of a choice that failed on test are "tested", not "confirmed", there
    assert "dual, chosen on val (highest Δm there" in acc["text"]
    assert ", tested on test: " in acc["text"] and ", confirmed on test: " not in acc["text"]


def test_a_longer_trained_hybrid_is_compared_with_a_budget_matched_control(
        tmp_path: Path) -> None:
    """staged starts from an 8-epoch dual run and trains 8 more: 16 epochs. Its lead over
    fixed (8 epochs) is not enough: without fixed:epochs=16 the advice names no method and says
    what to add; with a control it beats, the budget block says so."""
    def run(root: Path, method: str, s: int, mp: float, stages: bool = False,
            epochs: int = 8) -> None:
        _held_out_run(root, method, s, (mp, 0.8 if mp else None), (mp, 0.8 if mp else None))
        f = root / "runs" / f"{method}-s{s}" / "metrics.json"
        m = json.loads(f.read_text())
        m["training"] = {"epochs": epochs, **({"stages": [
            {"stage": "init-from", "epochs": 8}, {"stage": "this run", "epochs": 8}]}
            if stages else {})}
        f.write_text(json.dumps(m))

    for with_control in (False, True):
        root = tmp_path / str(with_control)
        for s in range(3):
            run(root, "detect", s, 0.5)
            _held_out_run(root, "classify", s, (None, 0.8), (None, 0.8))
            run(root, "fixed", s, 0.40 + 0.003 * s)
            run(root, "staged", s, 0.60 + 0.002 * s, stages=True)
            if with_control:
                run(root, "fixed:epochs=16", s, 0.45 + 0.004 * s, epochs=16)
        summary = json.loads(write_report(root, plots=False)["json"].read_text())
        b = summary["methods"]["staged"]["budget"]
        assert (b["epochs_total"], b["baseline_epochs"], b["longer"]) == (16, 8, True)
        acc = summary["recommendations"]["accuracy_first"]
        if not with_control:
            assert b["control"] is None and "add fixed:epochs=16" in b["text"]
            assert acc["method"] is None and any("no control trained as long" in w
                                                 for w in acc["why_no_pick"])
        else:
            assert b["control"] == "fixed:epochs=16" and b["vs_control"]["verdict"] == "better"
            assert acc["method"] == "staged"
        assert "## Equal budgets" in (root / "report.md").read_text()
    # against a tuned baseline (the study's fixed@tuned) the control is still fixed:epochs=16,
    # the baseline's method at its defaults trained as long, and the text says so
    root = tmp_path / "True"
    for s in range(3):
        run(root, "fixed@tuned", s, 0.42 + 0.003 * s)
    summary = json.loads(write_report(root, baseline="fixed@tuned",
                                      plots=False)["json"].read_text())
    b = summary["methods"]["staged"]["budget"]
    assert b["control"] == "fixed:epochs=16" and b["vs_control"]["verdict"] == "better"
    assert "the baseline's method at its default settings (fixed) trained as long" in b["text"]
    ctl = summary["methods"]["fixed:epochs=16"]["budget"]  # the control is no hybrid to control
    assert ctl["is_control"] and "is the baseline's method trained 16 epochs" in ctl["text"]
    for s in range(3):
        (root / "runs" / f"fixed:epochs=16-s{s}" / "metrics.json").unlink()
    b = json.loads(write_report(root, baseline="fixed@tuned", plots=False)["json"].read_text())[
        "methods"]["staged"]["budget"]
    assert b["control"] is None and "add fixed:epochs=16 to the compare" in b["text"]


def test_the_report_says_which_methods_were_tuned(tmp_path: Path) -> None:
    for seed in (0, 1):
        make_run(tmp_path, "fixed@tuned", seed, 0.6, 0.86)
        make_run(tmp_path, "gradnorm", seed, 0.61, 0.85)
    summary = json.loads(write_report(tmp_path, baseline="fixed@tuned",
                                      plots=False)["json"].read_text())
    t = summary["tuning"]
    assert (t["tuned"], t["defaults"]) == (["fixed@tuned"], ["gradnorm"])
    assert "At their defaults: gradnorm. Verdicts of these against the tuned baseline" in t["text"]
    assert t["text"] in (tmp_path / "report.md").read_text()
