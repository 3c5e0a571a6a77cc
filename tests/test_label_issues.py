"""`medmtl audit --label-issues`: view ranking (cleanlab + clip consistency) on planted flips, the
K-fold out-of-fold runs, box ranking on planted box errors, and the review page's script."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medmtl.cli import app
from medmtl.data.groups import GroupPattern
from medmtl.labelissues.oof import OOF, load_pool
from medmtl.labelissues.rank import CSV_COLUMNS, rank_boxes, yolo_lines

VIEWS = ["A4C", "PLAX", "PSAX"]


def _flipped_set(root: Path, seed: int = 5) -> tuple[Path, dict[str, int], dict[str, tuple]]:
    """Synthetic clips of 4-7 frames, 10 % of the view labels flipped; the true views."""
    from medmtl.data.synth import generate, plant_view_flips

    y = generate(root, n_train=80, n_val=24, imgsz=64, seed=seed, clip_frames=(4, 7))
    truth = {s: r.view for s, r in zip(*(lambda p: (p.stems, p.records))(load_pool(y)),
                                       strict=True)}
    return y, truth, plant_view_flips(y, 0.10, seed=1)


def _probs_csv(path: Path, truth: dict[str, int], seed: int = 0) -> Path:
    """A model that knows the true view: 0.6 on it plus 0.4 spread at random."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stem", "PSAX", "A4C", "PLAX"])  # any column order
        for stem, v in sorted(truth.items()):
            p = rng.dirichlet([1.0, 1.0, 1.0]) * 0.4
            p[v] += 0.6
            w.writerow([stem, p[2], p[0], p[1]])
    return path


def test_label_issues_from_probabilities_find_planted_flips(tmp_path: Path) -> None:
    y, truth, flipped = _flipped_set(tmp_path / "d")
    probs = _probs_csv(tmp_path / "probs.csv", truth)
    out = tmp_path / "li"
    res = CliRunner().invoke(app, ["audit", "--data", str(y), "--label-issues", "--probs",
                                   str(probs), "--out", str(out)], env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    assert "box issues are not ranked" in res.output
    with (out / "label_issues.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS
    assert len(rows) == len(truth) == 104 and {r["field"] for r in rows} == {"view"}
    assert [int(r["rank"]) for r in rows] == list(range(1, 105))
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    issues = {r["stem"] for r in rows if r["issue"] == "1"}
    tp = len(issues & set(flipped))
    # measured: cleanlab flags 8 of the 10 flips, the clip signal all 10, nothing else is
    # flagged: recall 1.0, precision 1.0 at the default threshold
    assert len(flipped) == 10 and tp / len(flipped) >= 0.9 and tp / len(issues) >= 0.9
    model = {r["stem"] for r in rows if r["model_issue"] == "1"}  # cleanlab alone
    assert len(model & set(flipped)) >= 7 and len(model & set(flipped)) / len(model) >= 0.9
    top = rows[:len(flipped)]  # the highest scores are the flips, and the suggestion undoes them
    assert sum(r["stem"] in flipped for r in top) >= 9
    for r in top:
        if r["stem"] in flipped:
            assert r["suggested"] == VIEWS[flipped[r["stem"]][0]] == r["clip_majority"]
    summary = json.loads((out / "label_issues.json").read_text())
    assert summary["views"]["with_probabilities"] == 104
    assert summary["views"]["out_of_sample_accuracy"] == pytest.approx(1 - 10 / 104, abs=0.02)
    page = (out / "review.html").read_text()
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>',
                                page, re.S).group(1))
    assert {i["stem"] for i in data["items"]} == issues and data["cls_names"] == VIEWS
    assert all(i["thumb"].startswith("data:image/jpeg;base64,") for i in data["items"])
    assert "http://" not in page and "https://" not in page  # self-contained
    if NODE is not None:  # the page's script on a stub DOM: renders, accepts, downloads
        _page_in_node(out / "review.html", len(issues))
    # a CSV without a view's column: one line naming the file and the columns
    bad = tmp_path / "bad.csv"
    bad.write_text("stem,A4C,PLAX\nx,0.5,0.5\n")
    res = CliRunner().invoke(app, ["audit", "--data", str(y), "--label-issues", "--probs",
                                   str(bad), "--out", str(tmp_path / "li2")])
    assert res.exit_code == 2 and "bad.csv: missing column(s) ['PSAX']" in res.output


def test_fold_runs_are_patient_grouped_and_cover_every_image(tmp_path: Path,
                                                            one_thread: None) -> None:
    from medmtl.labelissues.run import label_issues

    y, truth, flipped = _flipped_set(tmp_path / "d", seed=6)
    out = tmp_path / "li"
    logs: list[str] = []
    kw = dict(folds=2, task="classify", epochs=1, imgsz=64, batch=16, device="cpu", seed=0,
              log=logs.append)
    s = label_issues(y, out, **kw)
    assert sum("held-out images" in m for m in logs) == 2
    # #24.13: the plan and its estimate first, then each fold started / done with the time
    plan = next(i for i, m in enumerate(logs) if m.startswith("plan: "))
    assert logs[plan].startswith("plan: 2 folds × 1 epoch × ~52 training images (of 104, "
                                 "patient-grouped); each fold then scores the images it held "
                                 "out, once; estimated ~")
    assert re.search(r"estimated ~\d[\d.]* (s|min) \(\d+ training steps at \d+\.\d\d s per "
                     r"step of 16 images at 64 px, timed just now", logs[plan])
    marks = [m.split(":")[0] for m in logs if re.match(r"fold \d/2 (started|done)", m)]
    assert marks == ["fold 1/2 started", "fold 1/2 done", "fold 2/2 started", "fold 2/2 done"]
    assert logs.index(next(m for m in logs if m.startswith("fold 1/2 started"))) > plan
    assert all(re.search(r"elapsed [\d.]+ s of ~[\d.]+ (s|min) estimated$", m)
               for m in logs if re.match(r"fold \d/2 (started|done)", m))
    assert s["source"] == "2-fold out-of-fold predictions (classify, 1 epoch, 64 px)"
    page = (out / "review.html").read_text()
    assert "1 epochs" not in page and "word-break:break-all" not in page
    # models too weak for their flags: out-of-fold accuracy against the majority-class rate
    pool = load_pool(y)
    counts = np.bincount([r.view for r in pool.records], minlength=3)
    acc, st = s["views"]["out_of_sample_accuracy"], s["model_strength"]
    assert st["majority_rate"] == pytest.approx(counts.max() / counts.sum())
    assert st["weak"] == (not acc > counts.max() / counts.sum() + 0.05)
    assert s["warnings"] == ([st["text"]] if st["weak"] else [])
    assert ("Warning: the models behind the view probabilities are weak" in page) == st["weak"]
    manifest = json.loads((out / "folds" / "folds.json").read_text())
    fold_of = manifest["folds"]
    assert set(fold_of) == set(truth) and set(fold_of.values()) == {0, 1}
    pat = GroupPattern()
    by_patient: dict[str, set[int]] = {}
    for stem, k in fold_of.items():
        by_patient.setdefault(pat.patient_of(stem + ".jpg"), set()).add(k)
    assert all(len(v) == 1 for v in by_patient.values())  # no patient in two folds
    for k in (0, 1):  # each fold run scored exactly its held-out images
        vp = json.loads((out / "folds" / f"fold{k}" / "eval" / "view_predictions.json")
                        .read_text())
        assert len(vp["images"]) == sum(v == k for v in fold_of.values())
    assert s["views"]["with_probabilities"] == 104 and s["boxes"]["ranked"] == 0
    assert s["views"]["clip_issues"] >= 9  # the clip signal does not need a good model
    # the same runs given with --runs rank the same
    res = CliRunner().invoke(app, ["audit", "--data", str(y), "--label-issues", "--out",
                                   str(tmp_path / "again"), "--runs", str(out / "folds" / "fold0"),
                                   "--runs", str(out / "folds" / "fold1")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "again" / "label_issues.csv").read_text() == \
        (out / "label_issues.csv").read_text()
    # a rerun keeps the finished folds; other settings in the same folder are refused
    logs.clear()
    label_issues(y, out, **kw)
    assert sum("finished earlier" in m for m in logs) == 2
    assert any(m.startswith("plan: ") and m.endswith("; all 2 folds are done already and kept") for m in logs)
    with pytest.raises(ValueError, match="other settings"):
        label_issues(y, out, **{**kw, "epochs": 2})


def test_box_issues_rank_planted_box_errors(tmp_path: Path) -> None:
    from medmtl.data.synth import generate

    pool = load_pool(generate(tmp_path / "d", n_train=40, n_val=0, imgsz=64, seed=7))
    dets = {}
    # a detector that finds the truth, confidently: cleanlab considers predictions above 0.95
    # (its HIGH_PROBABILITY_THRESHOLD) for swapped and overlooked boxes
    for s, r in zip(pool.stems, pool.records, strict=True):
        dets[s] = np.concatenate([r.boxes, np.full((len(r.boxes), 1), 0.99),
                                  r.classes[:, None]], axis=1).astype(np.float64)
    planted = {}
    truth16 = yolo_lines(pool.records[16].boxes, pool.records[16].classes, 64, 64)
    for k, i in enumerate(range(0, 40, 8)):  # 5 labels: box moved away / class swapped / missing
        r = pool.records[i]
        if k % 3 == 0:
            r.boxes = (r.boxes + np.array([20, 20, 20, 20], np.float32)).clip(0, 63)
        elif k % 3 == 1:
            r.classes = (r.classes + 1) % 4
        else:
            r.boxes, r.classes = r.boxes[:0], r.classes[:0]
        planted[pool.stems[i]] = k
    rows, summ = rank_boxes(pool, OOF(detections=dets), GroupPattern())
    assert summ["ranked"] == 40
    assert {r["stem"] for r in rows[:5]} == set(planted)  # the five worst are the planted ones
    assert all(r["issue"] for r in rows[:5]) and not any(r["issue"] for r in rows[5:])
    r0 = next(r for r in rows if r["stem"] == pool.stems[16])  # the emptied label
    assert r0["given"] == "" and r0["suggested"] == truth16 and truth16.count(";") == 1
    assert yolo_lines(np.array([[10, 20, 30, 60.0]]), np.array([2]), 100, 200) == \
        "2 0.200000 0.200000 0.200000 0.200000"


NODE = shutil.which("node") or shutil.which("nodejs")
JS = Path(__file__).resolve().parents[1] / "medmtl" / "labelissues" / "review_page.js"


@pytest.mark.skipif(NODE is None, reason="node not found: the review page's script is not run")
def test_review_page_corrections_csv_in_node() -> None:
    items = [{"key": "view:a", "stem": "a", "field": "view", "given": "PLAX", "suggested": "A4C"},
             {"key": "view:b", "stem": "b", "field": "view", "given": "PSAX", "suggested": "A4C"},
             {"key": "boxes:c", "stem": "c", "field": "boxes", "given": "0 0.5 0.5 0.2 0.2",
              "suggested": "1 0.5 0.5 0.2 0.2;2 0.1 0.1 0.1 0.1"},
             {"key": "view:d", "stem": "d", "field": "view", "given": "A4C", "suggested": "PLAX"},
             {"key": "view:e", "stem": "e", "field": "view", "given": "A4C", "suggested": "PSAX"}]
    decisions = {"view:a": {"state": "accept", "note": 'said "apical", 4 chambers'},
                 "view:b": {"state": "reject"},
                 "boxes:c": {"state": "accept", "note": ""},
                 "view:d": {"state": "edit", "value": "", "note": "not a standard view"},
                 "view:e": {"state": "edit", "value": "A4C"}}  # edited back to the label
    code = (f"const m = require({json.dumps(str(JS))});"
            f"process.stdout.write(m.correctionsCsv({json.dumps(items)}, "
            f"{json.dumps(decisions)}));")
    out = subprocess.run([NODE, "-e", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(out.stdout.splitlines()))
    assert out.stdout.splitlines()[0] == "stem,field,old,new,note"
    assert rows == [
        {"stem": "a", "field": "view", "old": "PLAX", "new": "A4C",
         "note": 'said "apical", 4 chambers'},
        {"stem": "c", "field": "boxes", "old": "0 0.5 0.5 0.2 0.2",
         "new": "1 0.5 0.5 0.2 0.2;2 0.1 0.1 0.1 0.1", "note": ""},
        {"stem": "d", "field": "view", "old": "A4C", "new": "", "note": "not a standard view"}]


_STUB_DOM = r"""
const fs = require("fs"), vm = require("vm");
const html = fs.readFileSync(process.argv[1], "utf8");
const data = html.match(/<script type="application\/json" id="data">([\s\S]*?)<\/script>/)[1];
const code = html.match(/<script>([\s\S]*?)<\/script>\s*<\/body>/)[1];
class El {
  constructor(tag) { this.tagName = tag; this.children = []; this.attrs = {}; this.on = {};
    this.value = ""; this.textContent = ""; this.className = ""; }
  append(...k) { this.children.push(...k); }
  replaceChildren(...k) { this.children = k; }
  setAttribute(k, v) { this.attrs[k] = v; if (k === "value") this.value = v; }
  addEventListener(t, f) { (this.on[t] = this.on[t] || []).push(f); }
  fire(t) { for (const f of this.on[t] || []) f({ target: this, preventDefault() {} }); }
  click() {} remove() {}
}
const find = (n, pred, out = []) => { if (n instanceof El) { if (pred(n)) out.push(n);
  n.children.forEach((c) => find(c, pred, out)); } return out; };
const ids = {};
for (const id of ["clip", "field", "state", "sort", "rows", "count", "download", "clips",
                  "reviewer", "how", "download-trusted", "trusted-count"]) ids[id] = new El(id);
ids.reviewer.value = "dr x"; ids.how.value = "by eye";
ids.sort.value = "score-desc";
ids.data = { textContent: data };
global.document = { getElementById: (id) => ids[id], createElement: (t) => new El(t), body: new El("body") };
global.localStorage = { getItem: () => null, setItem: () => {} };
global.Blob = class { constructor(parts) { this.text = parts.join(""); } };
global.URL = { createObjectURL: (b) => { global.LAST = b.text; return "blob:x"; } };
vm.runInThisContext(code);
const cards = () => ids.rows.children;
const first = cards()[0];
const accept = find(first, (n) => n.className.startsWith("btn accept"))[0];
accept.fire("click");
ids.download.fire("click");
const csv = global.LAST;
let trusted = "";  // the first suggested clip judged PLAX, one decision for the whole clip
if (ids.clips.children.length) {
  find(ids.clips.children[0], (n) => n.className.startsWith("btn view"))[1].fire("click");
  ids["download-trusted"].fire("click");
  trusted = global.LAST;
}
process.stdout.write(JSON.stringify({ cards: cards().length, count: ids.count.textContent,
  csv, firstClass: cards()[0].className, clipCards: ids.clips.children.length,
  clipCount: ids["trusted-count"].textContent, trusted }));
"""


def _page_in_node(page: Path, n_items: int) -> None:
    out = subprocess.run([NODE, "-e", _STUB_DOM, str(page)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert res["cards"] == n_items and res["count"] == f"{n_items} shown, 1 of {n_items} decided"
    assert res["firstClass"] == "card accept"
    lines = res["csv"].splitlines()
    assert lines[0] == "stem,field,old,new,note" and len(lines) == 2
    assert lines[1].split(",")[1] == "view"
    n = res["clipCards"]  # the first screen: the suggested clips
    assert n > 0 and res["clipCount"] == f"1 of {n} clips decided"
    tl = res["trusted"].splitlines()
    assert tl[0] == "clip,view,reviewer,date,how" and len(tl) == 2
    assert tl[1].split(",")[1:3] == ["PLAX", "dr x"] and tl[1].endswith(",by eye")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
                 "headless_shell", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium found (chromium, "
                    "chromium-browser, google-chrome): the review page is not rendered")
def test_review_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    y, truth, flipped = _flipped_set(tmp_path / "d")
    from medmtl.labelissues.run import label_issues

    label_issues(y, tmp_path / "li", probs=_probs_csv(tmp_path / "p.csv", truth), log=lambda m: None)
    page = tmp_path / "li" / "review.html"
    out = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                          "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count('<article class="card') == len(flipped)
    assert f"{len(flipped)} shown, 0 of {len(flipped)} decided" in out.stdout


def test_weak_models_are_named_and_names_wrap_at_separators(tmp_path: Path) -> None:
    """#24.13: probabilities that always answer A4C are no better than the majority class: the
    summary, the log and the review page say their flags mean little."""
    from medmtl.labelissues.run import label_issues

    y, truth, flipped = _flipped_set(tmp_path / "d")
    probs = tmp_path / "const.csv"
    probs.write_text("stem,A4C,PLAX,PSAX\n" + "".join(f"{s},0.5,0.25,0.25\n" for s in truth))
    logs: list[str] = []
    s = label_issues(y, tmp_path / "li", probs=probs, log=logs.append)
    given = np.bincount([r.view for r in load_pool(y).records], minlength=3)  # flips included
    acc, majority = given[0] / given.sum(), given.max() / given.sum()
    st = s["model_strength"]
    assert st["out_of_sample_accuracy"] == pytest.approx(acc) and acc <= majority
    assert st["majority_rate"] == pytest.approx(majority) and st["weak"] is True
    text = (f"the models behind the view probabilities are weak: out-of-sample view accuracy "
            f"{acc:.3f} is not above the majority-class rate {majority:.3f} + 0.05, so their "
            "flags (flagged by: model) mean little")
    assert s["warnings"][0].startswith(text) and f"warning: {s['warnings'][0]}" in logs
    page = (tmp_path / "li" / "review.html").read_text()
    assert f'<p class="summary warn">Warning: {text}' in page
    good = label_issues(y, tmp_path / "li2", probs=_probs_csv(tmp_path / "p.csv", truth),
                        log=lambda m: None)
    assert good["model_strength"]["weak"] is False and good["warnings"] == []
    assert "summary warn" not in (tmp_path / "li2" / "review.html").read_text()
    if NODE is not None:
        code = (f"const m = require({json.dumps(str(JS))});process.stdout.write(JSON.stringify("
                "[m.breakPoints('aGdjwqtqa8Kb-unnamed_1_6.mp4-40'), m.breakPoints('clip')]));")
        run = subprocess.run([NODE, "-e", code], capture_output=True, text=True, timeout=60)
        assert json.loads(run.stdout) == [["aGdjwqtqa8Kb-", "unnamed_", "1_", "6.", "mp4-", "40"],
                                          ["clip"]]


def test_adjusted_probabilities_undo_a_bias_against_one_view(tmp_path: Path) -> None:
    """A model that never predicts A4C (as the short runs on the real data): with raw
    probabilities every clean A4C frame gets PLAX suggested and ranks right after the flips;
    cleanlab's class-threshold adjustment (the default) removes that."""
    from medmtl.labelissues.rank import rank_views

    y, truth, flipped = _flipped_set(tmp_path / "d")
    pool = load_pool(y)
    rng = np.random.default_rng(3)
    probs = {}
    for stem, v in truth.items():
        p = np.full(3, 0.05) + rng.dirichlet([2.0, 2.0, 2.0]) * 0.05
        p[v] += 0.55 if v else 0.25  # the true view, but true A4C frames lean to PLAX
        if v == 0:
            p[1] += 0.35
        probs[stem] = p / p.sum()
    assert sum(int(np.argmax(p)) == 0 for p in probs.values()) == 0
    a4c = {s for s, v in truth.items() if v == 0 and s not in flipped}
    alone = GroupPattern(clip=r"^(.+)$")  # every frame its own clip: the model signal alone
    res = {}
    for pattern in (alone, GroupPattern()):
        for adjust in (False, True):
            rows, s = rank_views(pool, OOF(view_probs=probs), pattern, adjust=adjust)
            assert s["probabilities_adjusted"] is adjust and s["predicted_per_view"]["A4C"] == 0
            assert {r["stem"] for r in rows[:len(flipped)]} == set(flipped)
            res[pattern is alone, adjust] = (
                sum(r["stem"] in a4c and r["suggested"] != r["given"] for r in rows),
                sum(r["stem"] in a4c for r in rows[len(flipped):len(flipped) + 30]))
    # measured (30 clean A4C frames): model alone, raw suggests PLAX for all 30, adjusted for
    # none; with clips, ranks 11-40 hold 29 clean A4C frames raw, 12 adjusted
    assert len(a4c) == 30 and res[True, False][0] == 30 and res[True, True][0] == 0
    assert res[False, False][1] >= 25 and res[False, True][1] <= 15


def test_corrected_frames_are_not_flagged_again(tmp_path: Path) -> None:
    """`audit --label-issues --corrections`: half of the planted flips corrected in a
    corrections CSV are ranked by their corrected label (not flagged, given = the true view);
    the other half are still flagged. The fold runs get the corrections too (a file of the
    pool's rows only)."""
    from medmtl.labelissues.folds import _fold_config

    y, truth, flipped = _flipped_set(tmp_path / "d")
    fixed = sorted(flipped)[::2]
    corr = tmp_path / "corrections.csv"
    with corr.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stem", "field", "old", "new", "note"])
        for stem in fixed:
            old, new = flipped[stem]
            w.writerow([stem, "view", VIEWS[new], VIEWS[old], "reviewed"])
    out = tmp_path / "li"
    res = CliRunner().invoke(app, ["audit", "--data", str(y), "--label-issues", "--probs",
                                   str(_probs_csv(tmp_path / "p.csv", truth)), "--out", str(out),
                                   "--corrections", str(corr)], env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    with (out / "label_issues.csv").open(newline="") as f:
        rows = {r["stem"]: r for r in csv.DictReader(f)}
    for stem in fixed:
        assert rows[stem]["given"] == VIEWS[truth[stem]] and rows[stem]["issue"] == "0", stem
    rest = [s for s in flipped if s not in fixed]
    assert sum(rows[s]["issue"] == "1" for s in rest) >= len(rest) - 1
    summary = json.loads((out / "label_issues.json").read_text())
    assert summary["settings"]["corrections"]["rows"] == len(fixed)
    # the fold runs: their config names the pool's corrections
    pool = load_pool(y, corrections=corr)
    assert pool.corrections is not None and len(pool.corrections) == len(fixed)
    from medmtl.data.corrections import subset_corrections

    sub = subset_corrections(pool.corrections, set(pool.stems[:40]), tmp_path / "sub.csv")
    kept = [ln.split(",")[0] for ln in sub.read_text().splitlines()[1:]]
    assert kept == [s for s in fixed if s in set(pool.stems[:40])]
    cfg = _fold_config(str(y), str(tmp_path / "f"), "classify", 1, 64, "n", 8, 0, 0, "cpu", sub)
    assert cfg.corrections == str(sub)
