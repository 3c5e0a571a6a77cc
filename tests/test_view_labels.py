"""Noisy view labels (issue #17): planted flips in the synthetic data, the training policies
(as-is / clip-majority / drop-inconsistent), clip-level view metrics, method specs with a policy,
and the agreement line of `predict` on a clip."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from medmtl.data import clip_of, load_data_yaml, scan_split
from medmtl.data.view_labels import apply_view_policy, majority_labels, view_label_stats
from medmtl.evaluation.clip_views import clip_view_metrics, clip_votes

VIEWS = ["A4C", "PLAX", "PSAX"]


@pytest.fixture(scope="module")
def clean_and_noisy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from medmtl.data.synth import generate

    root = tmp_path_factory.mktemp("flips")
    kw = {"n_train": 40, "n_val": 8, "imgsz": 64, "seed": 5}
    return generate(root / "clean", **kw), generate(root / "noisy", view_flips=0.5, **kw)


def test_planted_flips_are_a_minority_of_each_clip(clean_and_noisy: tuple[Path, Path]) -> None:
    clean, noisy = (scan_split(load_data_yaml(p), "train").records for p in clean_and_noisy)
    assert [r.path.name for r in clean] == [r.path.name for r in noisy]
    for a, b in zip(clean, noisy, strict=True):  # same pictures and boxes, only views differ
        assert a.path.read_bytes() == b.path.read_bytes()
        np.testing.assert_array_equal(a.boxes, b.boxes)
    flipped = [b.view != a.view for a, b in zip(clean, noisy, strict=True)]
    assert sum(flipped) >= 4
    frames = Counter(clip_of(r.path) for r in clean)
    flips = Counter(clip_of(r.path) for r, f in zip(clean, flipped, strict=True) if f)
    assert all(n <= (frames[c] - 1) // 2 for c, n in flips.items())
    assert all(len({r.view for r in clean if clip_of(r.path) == c}) == 1 for c in frames)
    # the clean set is what the generator always wrote: no flips, no draw changed
    assert "view_flips" not in clean_and_noisy[0].read_text()


def test_policies_recover_or_mask_exactly_the_flips(clean_and_noisy: tuple[Path, Path]) -> None:
    clean, noisy = (scan_split(load_data_yaml(p), "train").records for p in clean_and_noisy)
    truth = [r.view for r in clean]
    flipped = sum(a != b.view for a, b in zip(truth, noisy, strict=True))
    same, stats = apply_view_policy(noisy, "as-is")
    assert [r.view for r in same] == [r.view for r in noisy] and stats["frames_relabelled"] == 0
    assert stats["frames_disagreeing"] == flipped
    fixed, stats = apply_view_policy(noisy, "clip-majority")
    assert [r.view for r in fixed] == truth and stats["frames_relabelled"] == flipped
    dropped, stats = apply_view_policy(noisy, "drop-inconsistent")
    assert stats["frames_masked"] == flipped
    assert [r.view for r in dropped] == [None if t != r.view else t
                                         for t, r in zip(truth, noisy, strict=True)]
    assert [r.view for r in noisy] != truth  # the split's own records are left alone
    with pytest.raises(ValueError, match="expected one of as-is, clip-majority"):
        apply_view_policy(noisy, "majority")


def _recs(spec: list[tuple[str, int | None]]) -> list[SimpleNamespace]:
    return [SimpleNamespace(path=Path(f"{name}.jpg"), view=v, image_id=i)
            for i, (name, v) in enumerate(spec)]


def test_ties_keep_own_labels_and_unlabelled_frames_stay_unlabelled() -> None:
    recs = _recs([("p-a.mp4-1", 0), ("p-a.mp4-2", 1),  # tie 1:1
                  ("p-b.mp4-1", 2), ("p-b.mp4-2", 2), ("p-b.mp4-3", 1), ("p-b.mp4-4", None)])
    assert majority_labels(recs) == [0, 1, 2, 2, 2, None]
    stats = view_label_stats(recs)
    assert stats == {"clips": 2, "clips_labelled": 2, "clips_mixed": 2, "clips_tied": 1,
                     "frames_disagreeing": 1}
    out, st = apply_view_policy(recs, "drop-inconsistent")
    assert [r.view for r in out] == [0, 1, 2, 2, None, None] and st["frames_masked"] == 1


def test_clip_metrics_by_hand() -> None:
    # clip a: labels A4C x3 + PLAX (majority A4C); predictions A4C, A4C, PLAX, PLAX -> vote tie,
    # broken by summed probability (A4C 0.9+0.8 vs PLAX ...): see probs below
    # clip b: labels PSAX, PSAX; predicted PSAX, A4C -> tie broken towards PSAX (more mass)
    # clip c: labels A4C, PLAX (tied): not scored per clip
    recs = _recs([("p-a.mp4-1", 0), ("p-a.mp4-2", 0), ("p-a.mp4-3", 0), ("p-a.mp4-4", 1),
                  ("p-b.mp4-1", 2), ("p-b.mp4-2", 2), ("p-c.mp4-1", 0), ("p-c.mp4-2", 1)])
    probs = {0: [0.9, 0.05, 0.05], 1: [0.8, 0.1, 0.1], 2: [0.3, 0.6, 0.1], 3: [0.2, 0.7, 0.1],
             4: [0.1, 0.1, 0.8], 5: [0.5, 0.1, 0.4], 6: [0.2, 0.7, 0.1], 7: [0.2, 0.7, 0.1]}
    probs = {k: np.array(v) for k, v in probs.items()}
    m = clip_view_metrics(recs, probs, VIEWS)
    # frames vs clip-majority labels: a -> 0,0,0,0 (preds 0,0,1,1: 2 right); b -> 2,2 (preds 2,0:
    # 1 right); c tied keeps 0,1 (preds 1,1: 1 right) => 4 / 8
    assert m["accuracy_clip_majority_labels"] == pytest.approx(4 / 8, abs=1e-12)
    # votes: a tie 2:2, mass A4C 2.2 > PLAX 1.45 -> A4C right; b tie 1:1, mass PSAX 1.2 > A4C 0.6
    # -> right; c tied labels: left out
    assert m["clip_accuracy"] == pytest.approx(1.0, abs=1e-12)
    assert (m["clips"], m["clips_tied"], m["clips_mixed"]) == (2, 1, 2)
    assert m["frames_disagreeing_clip_majority"] == 1
    assert clip_votes(["x", "x", "x"], [probs[2], probs[3], probs[0]]) == {"x": 1}


def test_specs_with_a_view_policy_get_their_own_runs(tmp_path: Path, synth_tiny: Path) -> None:
    from medmtl.experiments.compare import plan_runs
    from medmtl.methods import build_config, split_methods

    text = ("original,original:view_labels=clip-majority,fixed:view_labels=drop-inconsistent,"
            "shared:fixed:w_classify=0.3,view_labels=clip-majority,classify:view_labels=clip-majority")
    methods = split_methods(text)
    assert len(methods) == 5
    plan = plan_runs(str(synth_tiny), methods, [0], tmp_path,
                     {"corrections": "c.csv", "epochs": 1})
    names = [p.name for p in plan]
    assert len(set(names)) == 5 and names[1] == "original_view_labels=clip-majority-s0"
    assert [p.cfg.view_labels for p in plan] == ["as-is", "clip-majority", "drop-inconsistent",
                                                 "clip-majority", "clip-majority"]
    assert plan[1].cfg.model.view_source == "neck8"  # the rest of the preset is kept
    assert plan[1].cfg.balancer.weights == {"detect": 1.0, "classify": 0.1}
    assert plan[3].cfg.balancer.weights["classify"] == pytest.approx(0.3)
    assert Path(plan[0].cfg.corrections).is_absolute()
    assert build_config("split2:gradnorm:view_labels=clip-majority").view_labels == "clip-majority"
    with pytest.raises(ValueError, match="view_labels='x'; expected one of"):
        build_config("original:view_labels=x")
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        build_config("nope:view_labels=as-is")


def test_predict_summary_says_how_unanimous_the_frames_were() -> None:
    from medmtl.inference.app import _Tally

    t = _Tally(["A4C", "PLAX", "PSAX"])
    for i in range(45):
        name = "PLAX" if i < 41 else "A4C"
        t.add(SimpleNamespace(view_probs={"A4C": 0.1, "PLAX": 0.8, "PSAX": 0.1}, view_name=name,
                              detections=[]))
    view = t.to_dict()["view"]
    assert view["text"] == "view PLAX (41/45 frames, 91 %)"
    assert view["agreement"] == pytest.approx(41 / 45, abs=1e-5)
