"""Checkpoint selection by the decision metric: Δm against single-task references, its
fallback, the former composite score, and how compare and resume supply the references."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from medmtl.engine.run_state import keep_selection_rule
from medmtl.evaluation.selection import describe, references_from, selection_score
from medmtl.experiments.compare import _references_first, _set_references, plan_runs


def _m(map50=None, map50_95=None, acc=None, f1=None) -> dict:
    det = None if map50 is None else {"map50": map50, "map50_95": map50_95}
    cls = None if acc is None else {"accuracy": acc, "macro_f1": f1}
    return {"detection": det, "classification": cls}


REFS = {"map50": 0.5, "map50_95": 0.2, "accuracy": 0.8, "macro_f1": 0.4}


def test_delta_m_against_references_by_hand() -> None:
    m = _m(0.55, 0.18, 0.84, 0.5)
    want = ((0.55 - 0.5) / 0.5 + (0.18 - 0.2) / 0.2 + (0.84 - 0.8) / 0.8 + (0.5 - 0.4) / 0.4) / 4
    assert selection_score(m, "delta-m", REFS) == pytest.approx(100 * want, rel=1e-12)
    # a single-task model: Δm over its own task's metrics
    assert selection_score(_m(0.55, 0.18), "delta-m", REFS) == pytest.approx(
        100 * ((0.55 - 0.5) / 0.5 + (0.18 - 0.2) / 0.2) / 2, rel=1e-12)
    # the references reweigh the metrics: a checkpoint better on the small-reference metric
    # (map50_95) wins under Δm and loses under the unweighted mean
    a, b = _m(0.60, 0.20, 0.8, 0.4), _m(0.50, 0.25, 0.8, 0.4)
    assert selection_score(b, "delta-m", REFS) > selection_score(a, "delta-m", REFS)
    assert selection_score(b, "delta-m") < selection_score(a, "delta-m")


def test_fallback_composite_single_metric_and_errors() -> None:
    m = _m(0.6, 0.3, 0.7, 0.5)
    assert selection_score(m) == pytest.approx(100 * (0.6 + 0.3 + 0.7 + 0.5) / 4, rel=1e-12)
    partial = {"map50": 0.5}  # incomplete references: the fallback, and it says so
    assert selection_score(m, "delta-m", partial) == selection_score(m)
    d = describe("delta-m", partial, m)
    assert d["references_used"] is False and d["references"] == partial
    assert describe("delta-m", REFS, m)["references_used"] is True
    assert selection_score(m, "composite") == pytest.approx((0.1 * 0.6 + 0.9 * 0.3 + 0.7) / 2)
    assert selection_score(m, "macro_f1") == 0.5 and selection_score(_m(0.6, 0.3), "accuracy") == 0
    assert selection_score(_m()) == 0.0
    with pytest.raises(ValueError, match="unknown selection metric 'f1'"):
        selection_score(m, "f1")


def test_select_refs_are_validated() -> None:
    from pydantic import ValidationError

    from medmtl.methods import build_config

    with pytest.raises(ValidationError, match="unknown metric"):
        build_config("fixed", {"data": "d.yaml", "select_refs": {"map": 0.5}})
    with pytest.raises(ValidationError, match="finite and > 0"):
        build_config("fixed", {"data": "d.yaml", "select_refs": {"map50": 0.0}})


def test_references_from_single_task_runs() -> None:
    refs = references_from({"detect": [_m(0.5, 0.2), _m(0.7, 0.4)],
                            "classify": [_m(acc=0.6, f1=0.3), _m(acc=0.8, f1=float("nan"))]})
    assert refs == pytest.approx({"map50": 0.6, "map50_95": 0.3, "accuracy": 0.7,
                                  "macro_f1": 0.3})


def test_compare_trains_the_references_first_and_hands_them_to_joint_runs(tmp_path: Path) -> None:
    data = tmp_path / "d.yaml"
    plan = plan_runs(str(data), ["fixed", "detect", "classify", "dual"], [0, 1], tmp_path)
    first = _references_first(plan, plan, sharded=False)
    assert sorted(r.name for r in first) == ["classify-s0", "classify-s1", "detect-s0",
                                             "detect-s1"]
    assert _references_first(plan, plan, sharded=True) == []
    figures = {"classify-s0": _m(acc=0.6, f1=0.4), "classify-s1": _m(acc=0.8, f1=0.6),
               "detect-s0": _m(0.5, 0.2), "detect-s1": _m(0.7, 0.3)}
    for r in first:
        m = figures[r.name]
        r.run_dir.mkdir(parents=True)
        (r.run_dir / "metrics.json").write_text(json.dumps(m))
    _set_references(plan, Console(quiet=True))
    want = {"accuracy": 0.7, "macro_f1": 0.5, "map50": 0.6, "map50_95": 0.25}
    for r in plan:
        joint = len(r.cfg.model.tasks) == 2
        assert (r.cfg.select_refs == pytest.approx(want)) if joint else r.cfg.select_refs == {}
    # given references are the user's: kept
    mine = plan_runs(str(data), ["fixed"], [0], tmp_path / "x",
                     overrides={"select_refs": {"map50": 0.9, "map50_95": 0.5, "accuracy": 0.9,
                                                "macro_f1": 0.9}})
    assert _references_first(mine + plan[:0], mine, sharded=False) == []


def test_resume_keeps_the_rule_the_run_selected_by() -> None:
    cfg = SimpleNamespace(select="delta-m", select_refs={})
    say = Console(quiet=True).print
    keep_selection_rule(cfg, {"seed": 0}, say)  # a run begun before --select existed
    assert (cfg.select, cfg.select_refs) == ("composite", {})
    keep_selection_rule(cfg, {"select": "delta-m", "select_refs": REFS}, say)
    assert (cfg.select, cfg.select_refs) == ("delta-m", REFS)
