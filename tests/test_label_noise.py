"""Systematic view-label noise (issue #27): the synthetic benchmark (today's finder against the
clip ranking with and without trusted clips), the corruption estimate against the planted
matrix, the clean posterior, the review list, trusted files, and `audit --trusted` end to end."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medmtl.cli import app
from medmtl.data.dataset_yaml import DataError
from medmtl.data.trusted import load_corruption, load_trusted
from medmtl.labelissues.noise import (
    clean_posterior,
    estimate_corruption,
    label_posterior,
    suggest_review,
)
from medmtl.labelissues.simulate import run_benchmark

VIEWS = ["A4C", "PLAX", "PSAX"]


@pytest.fixture(scope="module")
def bench() -> list[dict]:
    return [run_benchmark(seed=s, trusted_fraction=0.05, rate=0.7) for s in range(3)]


def test_benchmark_today_misses_systematic_noise_trusted_finds_it(bench: list[dict]) -> None:
    """The figure the issue asks to keep. Measured (seeds 0-2, rate 0.7, 5 % trusted): today's
    finder 0.41 / 0.39 / 0.47 of the planted clips in the top k, the clip ranking with the
    confident joint 0.75 / 0.79 / 0.77, with the trusted clips 0.78 / 0.88 / 0.84."""
    today = np.mean([r["today"]["recall"] for r in bench])
    frames = np.mean([r["today_frames"]["recall"] for r in bench])
    cj = np.mean([r["confident_joint"]["recall"] for r in bench])
    tr = [r["trusted"] for r in bench]
    assert today < 0.6 and frames < 0.65  # about chance-plus: the systematic clips hide
    assert np.mean([t["recall"] for t in tr]) >= 0.8 > today + 0.2
    assert np.mean([t["precision"] for t in tr]) >= 0.7
    assert np.mean([t["recall"] for t in tr]) > cj  # the trusted clips add to the ranking
    for r in bench:  # k is the number planted outside the trusted clips
        assert r["trusted"]["k"] == r["planted_outside_trusted"] == r["today"]["k"]
        assert 0 < r["trusted_clips"] == int(np.ceil(0.05 * r["clips"]))
        # the model learned the error: against the labels it looks better than against truth
        assert r["oof_accuracy_vs_labels"] > r["oof_accuracy_vs_truth"] + 0.04


def test_estimate_recovers_the_planted_matrix_within_its_uncertainty() -> None:
    """With 30 % trusted clips (about 15 of the noisy view): the planted entries of the A4C row
    lie inside the bootstrap interval in every seed, the exact binomial intervals of the counted
    check contain the planted matrix, and entries that are truly 0 stay under 0.1 (the model's
    softness, which the bootstrap does not cover: documented). Without the shrinkage prior (a
    prior pulls towards the identity by design)."""
    for seed in range(4):
        r = run_benchmark(seed=seed, trusted_fraction=0.3, rate=0.7, prior_clips=0.0)
        e, true = r["estimate"], np.asarray(r["true_matrix"])
        lo, hi, m = (np.asarray(e[k]) for k in ("ci95_low", "ci95_high", "matrix"))
        assert e["trusted_clips_per_class"]["A4C"] >= 8
        for j in (0, 1):
            assert lo[0, j] <= true[0, j] <= hi[0, j], (seed, j, lo[0], true[0], hi[0])
        assert abs(m[0, 1] - true[0, 1]) < 0.12
        assert np.all(m[true == 0] < 0.1)
        clo, chi = np.asarray(e["counted_ci95_low"]), np.asarray(e["counted_ci95_high"])
        assert np.all((clo <= true + 1e-9) & (true <= chi + 1e-9)), (seed, clo, true, chi)


def test_estimate_counts_and_bootstrap_on_known_probabilities() -> None:
    probs = np.array([[0.3, 0.7, 0.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    est = estimate_corruption(probs, given=np.array([1, 0, 1, 2]), true=np.array([0, 0, 1, 2]),
                              num_views=3, n_boot=500, seed=0, prior_clips=0.0)
    assert est.matrix[0] == pytest.approx([0.4, 0.6, 0.0])
    assert est.low[0, 0] == pytest.approx(0.3) and est.high[0, 0] == pytest.approx(0.5)
    assert est.counted.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert est.clips_per_class.tolist() == [2, 1, 1]
    assert any("row 1 rests on 1" in n for n in est.notes)
    # the default prior: one pseudo-clip per row saying "the label is right"
    shrunk = estimate_corruption(probs, np.array([1, 0, 1, 2]), np.array([0, 0, 1, 2]), 3,
                                 n_boot=50)
    assert shrunk.matrix[0] == pytest.approx([2 / 3 * 0.4 + 1 / 3, 2 / 3 * 0.6, 0.0])
    assert shrunk.matrix[1] == pytest.approx([0, 1.0, 0]) and shrunk.counted[0, 1] == 1
    none = estimate_corruption(probs[:1], np.array([1]), np.array([0]), 3, n_boot=50)
    assert none.matrix[1].tolist() == [0, 1, 0] and "identity assumed" in none.notes[1]


def test_clean_posterior_inverts_the_corruption() -> None:
    c = np.array([[0.3, 0.7, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    q_true = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.5, 0.5, 0], [0, 0.2, 0.8]])
    q = clean_posterior(q_true @ c, c)
    assert q == pytest.approx(q_true, abs=1e-3)
    # an A4C-looking clip labelled PLAX is an error; a PLAX-looking one is not
    post = label_posterior(q[:2], np.array([1, 1]), c)
    assert post[0].argmax() == 0 and post[0, 0] > 0.95
    assert post[1].argmax() == 1 and post[1, 1] > 0.95


def test_review_list_spreads_over_patients_and_skips_trusted() -> None:
    rows = [{"clip": f"p{p}-c{c}", "patient": f"p{p}", "given": 1, "suggested": 0,
             "score": 0.9 - 0.01 * c - 0.001 * p, "uncertainty": 0.5, "trusted": False}
            for p in range(3) for c in range(5)]
    rows.append({"clip": "t", "patient": "p9", "given": 1, "suggested": 0, "score": 1.0,
                 "uncertainty": 0.0, "trusted": True})
    picked = suggest_review(rows, budget=6)
    assert [r["review_order"] for r in picked] == list(range(1, 7))
    assert "t" not in {r["clip"] for r in picked}
    # the greedy discount makes the first three picks three different patients
    assert len({r["patient"] for r in picked[:3]}) == 3
    assert sum(r["patient"] == "p0" for r in picked) == 2


def _trusted(path: Path, rows: list[str]) -> Path:
    path.write_text("clip,view,reviewer,date,how\n" + "".join(r + "\n" for r in rows))
    return path


def test_trusted_file_errors_name_file_and_line(tmp_path: Path) -> None:
    ok = load_trusted(_trusted(tmp_path / "t.csv", ["a-1,A4C,dr x,2026-12-07,by eye",
                                                    "a-1,A4C,dr y,2026-12-08,by eye",
                                                    "b-2,PLAX,dr x,2026-12-07,by eye"]), VIEWS)
    assert len(ok) == 2 and ok.view_of("a-1") == 0 and ok.per_class()["PLAX"] == 1
    assert ok.record()["reviewers"] == ["dr x"]  # the repeated row adds nothing
    cases = [(["a,AP4,x,2026-12-07,eye"], "t.csv:2: view AP4 is not one of A4C, PLAX, PSAX (or ?"),
             (["a,A4C,,2026-12-07,eye"], "t.csv:2: empty reviewer"),
             (["a,A4C,x,7/12/2026,eye"], "t.csv:2: date 7/12/2026 is not YYYY-MM-DD"),
             (["a,A4C,x,2026-12-07,eye", "a,PLAX,x,2026-12-07,eye"],
              "t.csv:3: clip a is labelled A4C on line 2 and PLAX here")]
    for rows, msg in cases:
        with pytest.raises(DataError, match=re.escape(msg)):
            load_trusted(_trusted(tmp_path / "t.csv", rows), VIEWS)
    (tmp_path / "h.csv").write_text("clip,view\na,A4C\n")
    with pytest.raises(DataError, match=r"h.csv: missing column\(s\) reviewer, date, how"):
        load_trusted(tmp_path / "h.csv", VIEWS)


def test_conditioning_warning_names_the_close_views() -> None:
    from medmtl.data.trusted import conditioning_note

    assert conditioning_note(np.array([[0.3, 0.7, 0], [0, 1, 0], [0, 0, 1]]), VIEWS) is None
    note = conditioning_note(np.array([[0.21, 0.77, 0.02], [0.10, 0.74, 0.16],
                                       [0.0, 0.5, 0.5]]), VIEWS)
    assert note is not None and "rows of A4C and PLAX differ by only 0.28" in note


def test_corruption_file_checks(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"classes": VIEWS, "matrix": [[0.3, 0.7, 0], [0, 1, 0], [0, 0, 1]]}))
    assert load_corruption(p, VIEWS).matrix[0, 1] == pytest.approx(0.7)
    p.write_text(json.dumps({"classes": VIEWS, "matrix": [[0.5, 0.5, 0], [0.5, 0.5, 0],
                                                          [0, 0, 1]]}))
    with pytest.raises(DataError, match="singular"):
        load_corruption(p, VIEWS)
    p.write_text(json.dumps({"classes": ["A4C", "PSAX", "PLAX"], "matrix": np.eye(3).tolist()}))
    with pytest.raises(DataError, match="differ from the data's cls_names"):
        load_corruption(p, VIEWS)


def test_audit_with_trusted_writes_corruption_clips_and_review_first(tmp_path: Path) -> None:
    from test_label_issues import NODE, _flipped_set, _probs_csv

    y, truth, _ = _flipped_set(tmp_path / "d")
    from medmtl.data.groups import clip_of
    from medmtl.labelissues.oof import load_pool

    pool = load_pool(y)
    clips = sorted({clip_of(r.path) for r in pool.records})
    first = {clip_of(r.path): truth[s] for s, r in zip(pool.stems, pool.records, strict=True)}
    trusted = _trusted(tmp_path / "trusted.csv",
                       [f"{c},{VIEWS[first[c]]},test,2026-12-07,known truth" for c in clips[:5]]
                       + ["nowhere-1,A4C,test,2026-12-07,known truth"])
    out = tmp_path / "li"
    res = CliRunner().invoke(app, ["audit", "--data", str(y), "--label-issues", "--probs",
                                   str(_probs_csv(tmp_path / "p.csv", truth)), "--trusted",
                                   str(trusted), "--review-budget", "6", "--out", str(out)],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "from 5 trusted clips" in res.output and "1 of 6 trusted clips" in res.output
    cor = json.loads((out / "corruption.json").read_text())
    assert cor["source"] == "trusted" and cor["classes"] == VIEWS
    assert cor["trusted"]["clips"] == 6 and sum(cor["trusted_clips_per_class"].values()) == 5
    assert np.allclose(np.asarray(cor["matrix"]).sum(1), 1.0, atol=1e-3)
    load_corruption(out / "corruption.json", VIEWS)  # what train --corruption reads
    with (out / "clips.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(clips) and sum(r["trusted"] == "1" for r in rows) == 5
    assert sorted(int(r["review_order"]) for r in rows if r["review_order"]) == list(range(1, 7))
    page = (out / "review.html").read_text()
    assert page.index('id="first"') < page.index('id="rows"')  # the first screen
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>',
                                page, re.S).group(1))
    assert [c["order"] for c in data["clips"]] == list(range(1, 7))
    assert all(len(c["thumbs"]) >= 1 and c["thumbs"][0].startswith("data:image/jpeg")
               for c in data["clips"])
    summary = json.loads((out / "label_issues.json").read_text())
    assert [s["clip"] for s in summary["suggested_review"]] == [c["clip"] for c in data["clips"]]
    if NODE is not None:
        js = Path(__file__).resolve().parents[1] / "medmtl" / "labelissues" / "review_page.js"
        cl = data["clips"][:3]
        dec = {cl[0]["key"]: "A4C", cl[1]["key"]: "unsure", cl[2]["key"]: "PSAX"}
        code = (f"const m = require({json.dumps(str(js))});process.stdout.write("
                f"m.trustedCsv({json.dumps(cl)}, {json.dumps(dec)}, 'dr, x', '2026-12-07',"
                f" 'by eye'));")
        run = subprocess.run([NODE, "-e", code], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        (tmp_path / "back.csv").write_text(run.stdout)
        back = load_trusted(tmp_path / "back.csv", VIEWS)  # the page's file feeds --trusted
        assert {c: t.view for c, t in back.labels.items()} == {cl[0]["clip"]: 0,
                                                               cl[2]["clip"]: 2}
        assert list(back.unsure) == [cl[1]["clip"]]  # "can't tell" is kept, not a label
        # given back, the "can't tell" clip leaves the next suggested list
        res = CliRunner().invoke(app, ["audit", "--data", str(y), "--label-issues", "--probs",
                                       str(tmp_path / "p.csv"), "--trusted",
                                       str(tmp_path / "back.csv"), "--review-budget", "6",
                                       "--out", str(tmp_path / "li2")], env={"COLUMNS": "200"})
        assert res.exit_code == 0, res.output
        again = json.loads((tmp_path / "li2" / "label_issues.json").read_text())
        assert cl[1]["clip"] not in {s["clip"] for s in again["suggested_review"]}
        assert again["trusted"]["cant_tell"] == 1
        assert back.labels[cl[0]["clip"]].reviewer == "dr, x"


def test_audit_trusted_file_error_is_one_line(tmp_path: Path) -> None:
    from test_label_issues import _flipped_set, _probs_csv

    y, truth, _ = _flipped_set(tmp_path / "d")
    bad = _trusted(tmp_path / "t.csv", ["x,AP4,me,2026-12-07,eye"])
    res = CliRunner().invoke(app, ["audit", "--data", str(y), "--label-issues", "--probs",
                                   str(_probs_csv(tmp_path / "p.csv", truth)), "--trusted",
                                   str(bad), "--out", str(tmp_path / "li")])
    assert res.exit_code == 2
    assert "t.csv:2: view AP4 is not one of A4C, PLAX, PSAX" in res.output
    assert "Traceback" not in res.output
