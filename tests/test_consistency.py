"""Clip consistency of view labels: leave-one-frame-out votes, the audit block, planted flips on
synthetic clips, and the real data's figures (issue #17)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from medmtl.cli import app
from medmtl.data import audit_dataset, render_audit
from medmtl.data.consistency import clip_consistency, clip_flags, clip_majority, loo_clip_counts
from medmtl.data.groups import GroupPattern

NAMES = ["A4C", "PLAX", "PSAX"]


def test_leave_one_out_votes_majority_and_flags() -> None:
    clips = ["a", "a", "a", "a", "b", "b", "c", "d", "d", "d"]
    views = [0, 0, 0, 1, 1, 2, 2, 0, None, 0]
    counts = loo_clip_counts(clips, views, 3)
    assert counts.tolist() == [[2, 1, 0], [2, 1, 0], [2, 1, 0], [3, 0, 0],
                               [0, 0, 1], [0, 1, 0], [0, 0, 0], [1, 0, 0], [2, 0, 0], [1, 0, 0]]
    assert clip_majority(counts).tolist() == [0, 0, 0, 0, 2, 1, -1, 0, 0, 0]
    # the odd frame of clip a is flagged; both frames of the 2-frame clip b are (each outvoted
    # by the other: a 2-frame clip cannot tell which is wrong); c is alone; d agrees
    assert clip_flags(views, counts).tolist() == [False] * 3 + [True, True, True] + [False] * 4
    # a majority of 2 of 3 others is not more than 0.7 of them
    assert clip_flags(views, counts, threshold=0.7).tolist() == [False] * 3 + [True] * 3 + \
        [False] * 4


def test_consistency_block_counts() -> None:
    items = [("train", f"p1-c1.mp4-{i}.jpg", 1) for i in range(5)] + \
            [("val", "p1-c1.mp4-9.jpg", 0), ("val", "p1-c1.mp4-10.jpg", 0)] + \
            [("train", f"p2-c1.mp4-{i}.jpg", 2) for i in range(3)] + \
            [("train", "p2-c2.mp4-1.jpg", 0), ("train", "p2-c2.mp4-2.jpg", 2),
             ("train", "p2-c2.mp4-3.jpg", None), ("val", "p3-x.mp4-1.jpg", 1)]
    b = clip_consistency(items, NAMES)
    json.dumps(b)
    assert (b["clips"], b["mixed_clips"], b["frames_in_mixed_clips"]) == (4, 2, 9)
    assert (b["frames_with_view"], b["frames_without_view"]) == (13, 1)
    assert b["mixed_within_split"] == {"train": 1, "val": 0}
    assert (b["clips_in_several_splits"], b["cross_split_conflicts"]) == (1, 1)
    m = {r["clip"]: r for r in b["mixed"]}
    assert m["p1-c1"]["counts"] == {"A4C": 2, "PLAX": 5}
    assert m["p1-c1"]["splits"] == {"train": {"PLAX": 5}, "val": {"A4C": 2}}
    assert m["p1-c1"]["stems"]["A4C"] == ["p1-c1.mp4-9", "p1-c1.mp4-10"]  # natural order
    assert b["cross_split"][0]["majority_per_split"] == {"train": "PLAX", "val": "A4C"}
    loo = b["loo"]
    # p1-c1: 5 PLAX agree, 2 A4C disagree; p2-c1: 3 agree; p2-c2: 2 labelled frames, each
    # outvoted by the other (decided, disagree); p3-x alone
    assert (loo["frames_decided"], loo["agree"], loo["frames_tied"], loo["frames_alone"]) == \
        (12, 8, 0, 1)
    assert loo["agreement"] == pytest.approx(8 / 12)
    assert loo["flagged_stems"] == ["p1-c1.mp4-10", "p1-c1.mp4-9", "p2-c2.mp4-1", "p2-c2.mp4-2"]
    with pytest.raises(ValueError, match="clip threshold"):
        clip_consistency(items, NAMES, threshold=1.0)


def test_custom_clip_regex() -> None:
    items = [("train", "s1_v3_f1.png", 0), ("train", "s1_v3_f2.png", 1), ("train", "s1_v3_f3.png", 1)]
    assert clip_consistency(items, NAMES)["mixed_clips"] == 0  # default: each stem its own clip
    b = clip_consistency(items, NAMES, GroupPattern(patient=r"^(s\d+)_", clip=r"^(s\d+_v\d+)_"))
    assert b["mixed"][0]["clip"] == "s1_v3" and b["loo"]["flagged_stems"] == ["s1_v3_f1"]


def test_planted_flips_are_found(tmp_path: Path) -> None:
    """Synthetic clips of 5-9 frames with one view each, 10 % of the frames given another view:
    the audit's flags at the default threshold (strict majority of the other frames)."""
    from medmtl.data.synth import generate, plant_view_flips

    y = generate(tmp_path / "d", n_train=160, n_val=40, imgsz=32, seed=3, clip_frames=(5, 9))
    flipped = plant_view_flips(y, 0.10, seed=0)
    assert len(flipped) == 20
    res = CliRunner().invoke(app, ["audit", "--data", str(y), "--json", str(tmp_path / "a.json")],
                             env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    assert "View consistency within clips" in res.output and "agreement" in res.output
    c = json.loads((tmp_path / "a.json").read_text())["consistency"]
    flagged = set(c["loo"]["flagged_stems"])
    tp = len(flagged & set(flipped))
    recall, precision = tp / len(flipped), tp / len(flagged)
    # measured: 20 of 20 found, 21 flagged (the other frame of a clip whose two flips were the
    # same view): recall 1.0, precision 0.95
    assert recall >= 0.9 and precision >= 0.85, (tp, len(flipped), len(flagged))
    assert c["mixed_clips"] == len({r["clip"] for r in c["mixed"]}) >= 10
    # clean labels: no clip is mixed, agreement 1
    clean = audit_dataset(generate(tmp_path / "c", n_train=60, n_val=20, imgsz=32, seed=4,
                                   clip_frames=(3, 6)))["consistency"]
    assert clean["mixed_clips"] == 0 and clean["loo"]["agreement"] == 1.0


def test_real_data_mixed_clips(real_data: Path) -> None:
    rep = audit_dataset(real_data)
    c = rep["consistency"]
    assert (c["frames_with_view"], c["frames_without_view"]) == (1223, 2)
    assert (c["mixed_clips"], c["frames_in_mixed_clips"]) == (32, 453)
    assert c["mixed_within_split"] == {"train": 13, "val": 4}
    named = {r["clip"]: r["counts"] for r in c["mixed"]}
    assert named["ZmhmwqduY8KU-Mmode+2D+Doppler_Echo_color_1_1"] == {"PLAX": 6, "PSAX": 39}
    assert named["a2lrwqduZsKc-unnamed_1_2"] == {"A4C": 7, "PLAX": 18}
    loo = c["loo"]
    assert (loo["agree"], loo["frames_decided"]) == (1074, 1186)
    assert loo["agreement"] == pytest.approx(0.9056, abs=1e-4)
    buf = io.StringIO()
    Console(file=buf, width=160).print(render_audit(rep))
    out = buf.getvalue()
    assert "Clips with more than one view label (32" in out and "0.906 (1074 of 1186" in out
    assert np.isfinite(loo["agreement"])


def test_split_reports_clips_across_train_and_val(tmp_path: Path) -> None:
    from medmtl.data.synth import generate

    y = generate(tmp_path / "d", n_train=40, n_val=10, imgsz=32, seed=8)
    ok = CliRunner().invoke(app, ["split", "--data", str(y), "--out", str(tmp_path / "s1")])
    assert ok.exit_code == 0 and "warning" not in ok.output
    assert "clips in both (clip regex" in (tmp_path / "s1" / "data.yaml").read_text()
    assert "): 0\n" in (tmp_path / "s1" / "data.yaml").read_text().splitlines(True)[0]
    # a "patient" regex that makes every frame its own group splits clips
    bad = CliRunner().invoke(app, ["split", "--data", str(y), "--out", str(tmp_path / "s2"),
                                   "--group-regex", r"^(.+)\.jpg$"], env={"COLUMNS": "300"})
    assert bad.exit_code == 0 and "clip(s) have frames in both train and val" in bad.output
    n = int(bad.output.split("warning: ")[1].split(" clip(s)")[0])
    head = (tmp_path / "s2" / "data.yaml").read_text().splitlines()[0]
    assert n > 0 and head.endswith(f"): {n}")
