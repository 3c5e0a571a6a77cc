"""The committed real-data study (docs/study/) keeps issue 22's promises: every verdict is drawn on
the test split from a quantity that varies over seeds, the recommendation is chosen on val and
confirmed on test, and every figure the README states about it is in a committed report."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "docs" / "study"
README = ROOT / "README.md"
# quantities that are measured, not tested: identical over seeds for twins, or timed once
EFFICIENCY = ("ms", "latency", "params", "gflops", "size", "mb", "seconds")


def _tests(node: Any, path: tuple = ()) -> list[tuple[tuple, dict]]:
    """Every block of the summary that holds a p-value, with where it sits."""
    out = []
    if isinstance(node, dict):
        p = node.get("p")
        if isinstance(p, (int, float)) and not math.isnan(p):
            out.append((path, node))
        for k, v in node.items():
            out += _tests(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _tests(v, (*path, i))
    return out


def _summary() -> dict:
    return json.loads((STUDY / "summary.json").read_text())


def test_the_study_is_committed_with_its_provenance() -> None:
    for name in ("README.md", "report.md", "summary.json", "summary.csv", "tune.json"):
        assert (STUDY / name).is_file(), name
    readme = (STUDY / "README.md").read_text()
    assert re.search(r"\b[0-9a-f]{7,40}\b", readme), "docs/study/README.md names no commit"
    for budget in ("128 px", "8 epochs", "3 seeds"):
        assert budget in readme, budget


def test_every_verdict_is_on_test_and_varies_over_seeds() -> None:
    summary = _summary()
    assert summary["scored_on"] == ["test"]
    info = summary["metric_info"]
    tests = _tests(summary)
    assert len(tests) >= 20  # the study's comparisons are there to check
    for path, block in tests:
        where = "/".join(map(str, path))
        # a p-value comes with spread: a zero-spread difference gets none (its interval is a point)
        assert block["ci_low"] < block["ci_high"], where
        assert block["n_pairs"] >= 2, where
        if path[0] == "methods" and path[2] == "budget":  # per-seed Δm on test vs the control
            assert path[3] == "vs_control", where
        elif path[0] == "methods":
            method, section, metric = path[1], path[2], path[3]
            assert section == "significance", where
            assert metric in info, where
            assert not any(metric.startswith(e) or metric.endswith(e) for e in EFFICIENCY), where
            assert not metric.endswith("_val"), where
            assert method in summary["methods"], where
    family = summary["multiple_comparisons"]
    assert family["family_size"] == len(family["comparisons"]) > 0
    assert all(m in info for _, m in family["comparisons"])


def test_the_recommendation_is_chosen_on_val_and_confirmed_on_test() -> None:
    recs = _summary()["recommendations"]
    text = recs["accuracy_first"]["text"]
    assert "chosen on val" in text and "on test" in text, text


def _study_section() -> str:
    text = README.read_text()
    start = text.index("## What the study found")
    return text[start:text.index("\n## ", start + 1)]


def test_every_readme_study_figure_is_in_a_committed_report() -> None:
    """A figure of the README's study section (0.412, +4.2, 28.4 %) appears, as written, in a
    committed report or summary of docs/study*/ (report.md, summary.csv, the pretrained
    comparison): nothing is stated that a reader cannot find in a file."""
    sources = [p.read_text() for d in sorted((ROOT / "docs").glob("study*"))
               for p in d.glob("*") if p.suffix in (".md", ".csv") and p.name != "README.md"]
    corpus = "\n".join(sources).replace("−", "-")
    figures = re.findall(r"(?<![\w.])[+−-]?\d+\.\d+", _study_section())
    assert len(figures) >= 6, figures
    missing = [f for f in figures if f.lstrip("+−-") not in corpus]
    assert not missing, f"README figures found in no committed report: {missing}"


def test_the_results_table_is_printed_from_the_summary(capsys: Any) -> None:
    """docs/results.md's study table is `benchmarks/study_table.py docs/study/summary.json`,
    row for row."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("study_table",
                                                  ROOT / "benchmarks" / "study_table.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(str(STUDY / "summary.json"))
    table = capsys.readouterr().out.strip().splitlines()
    assert len(table) >= 10
    results = (ROOT / "docs" / "results.md").read_text().splitlines()
    missing = [row for row in table if row not in results]
    assert not missing, missing
