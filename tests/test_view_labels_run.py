"""Issue #17 through a run: a corrections file changes what training sees and is recorded in the
run directory; metrics.json (val and test) and the report give frame and clip view accuracy and
the accuracy against clip-majority labels, for runs trained as-is and with clip-majority labels."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console

from medmtl.data import clip_of, load_data_yaml, scan_split
from medmtl.data.view_labels import view_label_stats
from medmtl.distributed import LOCAL
from medmtl.engine.data_setup import RunData
from medmtl.methods import build_config


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<patient>-<clip>.mp4-<frame> names, one view per clip, planted flips in every split."""
    from medmtl.data.synth import generate

    return generate(tmp_path_factory.mktemp("noisy"), n_train=48, n_val=16, n_test=16,
                    imgsz=64, seed=7, view_flips=0.5)


@pytest.fixture(scope="module")
def corrections(noisy: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """Relabel the first training frame to another view: (file, stem, new view index)."""
    spec = load_data_yaml(noisy)
    r = scan_split(spec, "train").records[0]
    new = (r.view + 1) % 3
    path = tmp_path_factory.mktemp("corr") / "review.csv"
    path.write_text("stem,field,old,new,note\n"
                    f"{r.path.stem},view,{spec.cls_names[r.view]},{spec.cls_names[new]},review\n")
    return path, r.path.stem, new


def _cfg(data: Path, out: Path, **kw: object):  # noqa: ANN202
    over = {"data": str(data), "out": str(out), "epochs": 1, "imgsz": 64, "batch": 16,
            "workers": 0, "diag_steps": 0, "cache": False}
    over.update(kw)
    return build_config("fixed", over)


def test_corrections_and_policy_change_only_what_training_sees(
        noisy: Path, corrections: tuple[Path, str, int], tmp_path: Path) -> None:
    path, stem, new = corrections
    quiet = Console(quiet=True)
    plain = RunData(_cfg(noisy, tmp_path / "a"), LOCAL, torch.device("cpu"), quiet, tmp_path / "a")
    fixed = RunData(_cfg(noisy, tmp_path / "b", corrections=str(path)), LOCAL,
                    torch.device("cpu"), quiet, tmp_path / "b")
    assert plain.train_set.records[0].path.stem == stem
    assert plain.train_set.records[0].view != new and fixed.train_set.records[0].view == new
    assert (tmp_path / "b" / "corrections.csv").read_bytes() == path.read_bytes()
    assert fixed.data_record()["corrections"]["applied"] == {"train": 1}
    # a run resumed with another corrections file than the one it started with fails
    other = tmp_path / "other.csv"
    other.write_text(path.read_text() + "\n")
    from medmtl.data.corrections import CorrectionError

    with pytest.raises(CorrectionError, match=r"other\.csv: differs from .*corrections\.csv"):
        RunData(_cfg(noisy, tmp_path / "b", corrections=str(other)), LOCAL, torch.device("cpu"),
                quiet, tmp_path / "b")
    major = RunData(_cfg(noisy, tmp_path / "c", corrections=str(path), view_labels="clip-majority"),
                    LOCAL, torch.device("cpu"), quiet, tmp_path / "c")
    # training labels: one view per clip; the split's own records (scored) keep the noise
    views: dict[str, set[int]] = {}
    for r in major.train_set.records:
        views.setdefault(clip_of(r.path), set()).add(r.view)
    assert all(len(v) == 1 for c, v in views.items()
               if c not in _tied(major.train_index.records))
    stats = view_label_stats(major.train_index.records)
    assert major.view_policy["frames_relabelled"] == stats["frames_disagreeing"] > 0
    assert [r.view for r in major.train_index.records] == [r.view for r in fixed.train_set.records]


def _tied(records: list) -> set[str]:
    from medmtl.data.view_labels import clip_majorities

    clips, major = clip_majorities(records)
    return {c for c in clips if major[c] is None}


def _check_block(block: dict, eval_dir: Path) -> None:
    """The clip metrics of a classification block, recomputed from eval/view_predictions.json."""
    rows = json.loads((eval_dir / "view_predictions.json").read_text())["images"]
    lab = [r for r in rows if r["view"] is not None]
    acc = np.mean([r["pred"] == r["view_clip_majority"] for r in lab])
    assert block["accuracy_clip_majority_labels"] == pytest.approx(acc, abs=1e-12)
    assert block["accuracy"] == pytest.approx(np.mean([r["pred"] == r["view"] for r in lab]),
                                              abs=1e-12)
    clips: dict[str, list[dict]] = {}
    for r in rows:
        clips.setdefault(r["clip"], []).append(r)
    right = n = 0
    for frames in clips.values():
        labels = [r["view"] for r in frames if r["view"] is not None]
        counts = np.bincount(labels, minlength=3)
        if not labels or (counts == counts.max()).sum() > 1:
            continue  # tied labels: not scored per clip
        votes = np.bincount([r["pred"] for r in frames], minlength=3).astype(float)
        votes += 1e-6 * np.sum([r["probs"] for r in frames], axis=0)  # ties: summed probability
        right += int(np.argmax(votes) == np.argmax(counts))
        n += 1
    assert block["clips"] == n > 0
    assert block["clip_accuracy"] == pytest.approx(right / n, abs=1e-12)
    assert block["frames_disagreeing_clip_majority"] > 0  # the planted flips are in this split


def test_runs_record_corrections_and_score_frames_and_clips(
        noisy: Path, corrections: tuple[Path, str, int], tmp_path: Path, one_thread: None) -> None:
    from medmtl.engine.trainer import train
    from medmtl.report import write_report
    from medmtl.report.bootstrap import BootstrapSettings

    path = corrections[0]
    run = train(_cfg(noisy, tmp_path / "run", corrections=str(path), view_labels="clip-majority"),
                progress=False)
    m = json.loads((run / "metrics.json").read_text())
    data = m["data"]
    assert data["corrections"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert data["corrections"]["rows"] == 1 and data["corrections"]["applied"] == {"train": 1}
    assert data["view_labels"]["policy"] == "clip-majority"
    assert data["view_labels"]["frames_relabelled"] > 0
    assert (run / "corrections.csv").read_bytes() == path.read_bytes()
    assert yaml.safe_load((run / "config.yaml").read_text())["view_labels"] == "clip-majority"
    history = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert "val/clip_accuracy" in history and "val/accuracy_clip_majority_labels" in history
    _check_block(m["classification"], run / "eval")
    _check_block(m["test"]["classification"], run / "eval" / "test")

    # a comparison folder with the run under two policies: the report shows every view measure
    folder = tmp_path / "cmp"
    for method, policy in (("fixed", "as-is"), ("fixed:view_labels=clip-majority", "clip-majority")):
        dst = folder / "runs" / f"{method.replace(':', '_')}-s0"
        shutil.copytree(run, dst)
        cfg = yaml.safe_load((dst / "config.yaml").read_text())
        cfg.update(method=method, view_labels=policy)
        (dst / "config.yaml").write_text(yaml.safe_dump(cfg))
    write_report(folder, plots=False, bootstrap=BootstrapSettings(0, 0))
    summary = json.loads((folder / "summary.json").read_text())
    assert {r["view_labels"] for r in summary["runs"]} == {"as-is", "clip-majority"}
    test_cls = m["test"]["classification"]
    entry = summary["methods"]["fixed"]["metrics"]
    assert entry["clip_accuracy"]["mean"] == pytest.approx(test_cls["clip_accuracy"])
    assert entry["accuracy_clip_labels"]["mean"] == pytest.approx(
        test_cls["accuracy_clip_majority_labels"])
    md = (folder / "report.md").read_text()
    assert "view accuracy vs clip-majority labels" in md and "view accuracy per clip" in md
    row = next(ln for ln in md.splitlines()
               if ln.startswith("| fixed:view_labels=clip-majority | clip-majority |"))
    assert f"| {test_cls['clip_accuracy']:.3f} |" in row
    assert data["corrections"]["sha256"][:12] in row
