"""Frames with no jet: a label file's "none" line says "looked at, no jet here"; such a frame
trains detection as background (its detection loss pushes every score down), is counted apart
from unlabelled frames, and is scored for false positives per jet-free frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medmtl.data import parse_label_text
from medmtl.data.labels import ImageRecord
from medmtl.evaluation.metrics import negative_frames


def _parse(text: str):
    return parse_label_text(text, "f.txt", 100, 100, num_classes=4, num_views=3)


def test_none_line_is_a_negative_not_a_masked_frame() -> None:
    p = _parse("none\n\n1 0 0\n")
    assert p.no_jet and len(p.boxes) == 0 and p.view == 0 and not p.problems
    assert _parse("NONE\n").no_jet  # case-insensitive, no view line needed
    masked = _parse("0 1 0\n")  # only a view: detection unlabelled, as before
    assert not masked.no_jet and len(masked.boxes) == 0 and masked.view == 1
    both = _parse("none\n2 0.5 0.5 0.2 0.2\n\n0 0 1\n")
    assert not both.no_jet and len(both.boxes) == 1
    assert [q.kind for q in both.problems] == ["no_jet_conflict"]
    assert both.problems[0].line == 1 and "boxes are kept" in both.problems[0].message


def test_synthetic_jet_free_frames_are_scanned_as_negatives(tmp_path: Path) -> None:
    from medmtl.data import load_data_yaml, scan_split
    from medmtl.data.synth import generate

    y = generate(tmp_path / "d", n_train=30, n_val=10, imgsz=64, seed=3, no_jet=0.3)
    idx = scan_split(load_data_yaml(y), "train")
    s = idx.summary
    neg = [r for r in idx.records if r.no_jet]
    assert s["images_no_jet"] == len(neg) > 0 and s["images_det_masked"] == 0
    assert all(r.det_labelled and not r.has_boxes for r in neg)
    assert not any(p.kind == "no_boxes" for p in idx.problems)
    assert s["boxes"] == 30 - len(neg)


def test_negative_frame_metrics_by_hand() -> None:
    def rec(i: int, no_jet: bool) -> ImageRecord:
        return ImageRecord(Path(f"{i}.jpg"), i, 10, 10, np.zeros((0, 4), np.float32),
                           np.zeros(0, np.int64), None, True, None, no_jet)

    records = [rec(0, True), rec(1, True), rec(2, False)]
    det = [np.array([[0, 0, 1, 1, 0.9, 0], [0, 0, 2, 2, 0.3, 1]], np.float32),
           np.zeros((0, 6), np.float32),
           np.array([[0, 0, 1, 1, 0.99, 0]], np.float32)]  # not a negative frame: not counted
    m = negative_frames(records, det)
    assert m["images"] == 2
    assert m["fp_per_image"] == {"0.25": 1.0, "0.5": 0.5}
    assert m["images_with_fp"] == {"0.25": 0.5, "0.5": 0.5}
    assert m["mean_top_score"] == pytest.approx((0.9 + 0.0) / 2)
    assert negative_frames(records[2:], det[2:]) is None


def test_a_negative_frame_trains_scores_down(one_thread: None) -> None:
    """One image with no boxes: with det_mask True (a "none" frame) the detection loss is
    positive and a gradient step lowers the top class score; masked, it gives no loss."""
    from medmtl.config import LossConfig, ModelConfig
    from medmtl.losses import DetectionLoss
    from medmtl.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(tasks=("detect",), arch="single")).train()
    for cls in model.detect_head.cls:  # start from scores near 0.5, not the prior's 0.003
        torch.nn.init.zeros_(cls[-1].bias)
    x = torch.rand(2, 3, 64, 64)
    batch = {"boxes": torch.zeros(2, 1, 4), "box_classes": torch.zeros(2, 1, dtype=torch.long),
             "box_mask": torch.zeros(2, 1, dtype=torch.bool)}
    loss_fn = DetectionLoss(4, 16, list(model.strides), LossConfig())

    def top_score() -> float:
        model.eval()
        with torch.no_grad():
            out = model(x)["detect"]
        model.train()
        return max(float(o[:, -4:].sigmoid().max()) for o in out)

    before = top_score()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    for _ in range(5):
        loss = loss_fn([o.float() for o in model(x)["detect"]],
                       {**batch, "det_mask": torch.ones(2, dtype=torch.bool)})[0]
        assert float(loss.detach()) > 0
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = top_score()
    assert before > 0.3 and after < before - 0.05, (before, after)
    masked = loss_fn([o.float() for o in model(x)["detect"]],
                     {**batch, "det_mask": torch.zeros(2, dtype=torch.bool)})[0]
    assert float(masked.detach()) == 0.0
