"""View-classification metrics, the metrics.json builder and the evaluation plots."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from medmtl.evaluation.coco import coco_ground_truth, coco_results, evaluate_coco, write_json
from medmtl.evaluation.metrics import (
    build_metrics_json,
    classification_metrics,
    detection_block,
    detection_confusion,
    detection_prf,
)
from medmtl.evaluation.plots import plot_confusion, plot_f1_confidence, plot_pr_curves

VIEWS = ["A4C", "PLAX", "PSAX"]
NAMES = ["AR", "MR", "PR", "TR"]


def test_classification_by_hand() -> None:
    y_true = [0, 0, 0, 0, 1, 1, 1, 2, 2, -1]  # the last image has no view label
    y_pred = [0, 0, 1, 2, 1, 1, 0, 2, 1, 0]
    out = classification_metrics(np.array(y_true), np.array(y_pred), 3, VIEWS)
    assert out["confusion"] == [[2, 1, 1], [1, 2, 0], [0, 1, 1]]
    assert out["n"] == 9
    assert out["accuracy"] == pytest.approx(5 / 9)
    # precision 2/3, 1/2, 1/2; recall 1/2, 2/3, 1/2 -> F1 4/7, 4/7, 1/2
    assert out["per_class"]["A4C"]["precision"] == pytest.approx(2 / 3)
    assert out["per_class"]["PLAX"]["recall"] == pytest.approx(2 / 3)
    assert out["per_class"]["A4C"]["f1"] == pytest.approx(4 / 7)
    assert out["per_class"]["PSAX"]["f1"] == pytest.approx(0.5)
    assert out["per_class"]["A4C"]["support"] == 4
    assert out["macro_f1"] == pytest.approx(23 / 42)


def reference(t: np.ndarray, p: np.ndarray, nc: int) -> tuple[float, float, list[float]]:
    """scikit-learn's accuracy_score and f1_score(average='macro', zero_division=0), written
    out from their definitions (labels = those present in y_true or y_pred)."""
    acc = float(np.mean(t == p))
    f1s = []
    for c in range(nc):
        tp = int(np.sum((t == c) & (p == c)))
        fp = int(np.sum((t != c) & (p == c)))
        fn = int(np.sum((t == c) & (p != c)))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    present = sorted(set(t.tolist()) | set(p.tolist()))
    return acc, float(np.mean([f1s[c] for c in present])), f1s


@pytest.mark.parametrize("seed", range(4))
def test_classification_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nc = 4
    t = rng.integers(0, 3, 200)  # class 3 never true ...
    p = np.where(
        rng.random(200) < 0.6, t, rng.integers(0, nc - (seed % 2), 200)
    )  # ... maybe predicted
    out = classification_metrics(t, p, nc, ["a", "b", "c", "d"])
    acc, macro, f1s = reference(t, p, nc)
    assert out["accuracy"] == pytest.approx(acc)
    assert out["macro_f1"] == pytest.approx(macro)
    assert [out["per_class"][n]["f1"] for n in "abcd"] == pytest.approx(f1s)
    cm = np.array(out["confusion"])
    assert cm.sum() == 200 and np.trace(cm) == int(np.sum(t == p))
    assert cm[1, 2] == int(np.sum((t == 1) & (p == 2)))  # rows true, columns predicted


def test_classification_edge_cases() -> None:
    out = classification_metrics(np.array([-1, -1]), np.array([0, 1]), 3, VIEWS)
    assert out["accuracy"] is None and out["macro_f1"] is None and out["n"] == 0
    with pytest.raises(ValueError):
        classification_metrics(np.array([0, 3]), np.array([0, 1]), 3, VIEWS)


def small_detection():
    records = [
        SimpleNamespace(
            image_id=i,
            path=f"img{i}.png",
            width=200,
            height=100,
            boxes=np.array(b, dtype=np.float32).reshape(-1, 4),
            classes=np.array(c, dtype=np.int64),
        )
        for i, (b, c) in enumerate(
            [
                ([[10, 10, 50, 50], [100, 20, 180, 90]], [0, 1]),
                ([[30, 30, 60, 70]], [3]),
                ([], []),
            ]
        )
    ]
    dets = [
        np.array([[12, 10, 50, 52, 0.9, 0], [100, 20, 170, 90, 0.6, 1], [0, 0, 5, 5, 0.4, 1]]),
        np.array([[30, 30, 60, 65, 0.7, 3], [120, 10, 150, 40, 0.3, 0]]),
        np.array([[10, 10, 20, 20, 0.5, 2]]),
    ]
    return records, dets


def test_build_metrics_json_schema(tmp_path) -> None:
    records, dets = small_detection()
    gt = coco_ground_truth(records, NAMES)
    coco = evaluate_coco(gt, coco_results([r.image_id for r in records], dets), NAMES)
    prf = detection_prf(records, dets, len(NAMES), names=NAMES)
    cls = classification_metrics([0, 1, 2, 2], [0, 1, 1, 2], 3, VIEWS)
    m = build_metrics_json("val", 3, detection_block(coco, prf), cls, {"epoch": 7})

    assert {"split", "images", "detection", "classification"} <= set(m)
    assert m["split"] == "val" and m["images"] == 3 and m["epoch"] == 7
    d = m["detection"]
    assert {"map50", "map50_95", "precision", "recall", "f1", "per_class"} <= set(d)
    assert set(d["per_class"]) == set(NAMES)
    for v in d["per_class"].values():
        assert {"ap50", "ap50_95", "precision", "recall", "f1"} <= set(v)
    assert d["per_class"]["PR"]["ap50"] is None  # no ground truth -> null, not 0
    assert d["map50"] == pytest.approx(coco["map50"])
    assert "curves" not in d and "pr_curve" not in d
    c = m["classification"]
    assert {"accuracy", "macro_f1", "confusion"} <= set(c)
    assert c["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    text = json.dumps(m, allow_nan=False)
    assert json.loads(text) == m
    assert all(type(x) is float for x in (d["map50"], d["precision"], c["accuracy"]))

    path = write_json(tmp_path / "run" / "metrics.json", m)
    assert json.loads(path.read_text()) == m

    # the raw pair is merged the same way, also when detection_prf got no class names
    unnamed = detection_prf(records, dets, len(NAMES))
    m2 = build_metrics_json("val", 3, {"coco": coco, "prf": unnamed}, cls, {"epoch": 7})
    assert m2 == m
    assert set(unnamed["pr_curves"]) == {"0", "1", "2", "3"}
    assert len(unnamed["recall_grid"]) == 101


def test_build_metrics_json_single_task_and_errors() -> None:
    cls = classification_metrics([0, 1], [0, 0], 3, VIEWS)
    m = build_metrics_json("test", 2, None, cls, None)
    assert m["detection"] is None and m["classification"]["accuracy"] == 0.5
    json.dumps(m, allow_nan=False)
    with pytest.raises(ValueError):
        build_metrics_json("val", 2, {"map50": 0.5}, None, None)  # raw, incomplete block
    with pytest.raises(ValueError):
        build_metrics_json("val", 2, None, cls, {"split": "x"})  # may not replace a key


def is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png(tmp_path) -> None:
    records, dets = small_detection()
    prf = detection_prf(records, dets, len(NAMES), names=NAMES)
    gt = coco_ground_truth(records, NAMES)
    coco = evaluate_coco(gt, coco_results([r.image_id for r in records], dets), NAMES)

    assert is_png(plot_pr_curves(prf["curves"]["pr"], NAMES, tmp_path / "pr.png"))
    assert is_png(plot_pr_curves(coco["pr_curve"], NAMES, tmp_path / "pr_coco.png"))
    assert is_png(plot_f1_confidence(prf["curves"]["f1_conf"], tmp_path / "f1.png"))
    assert is_png(plot_pr_curves(prf, NAMES, tmp_path / "pr_whole.png"))  # whole result
    assert is_png(plot_f1_confidence(prf, tmp_path / "f1_whole.png"))
    cm = detection_confusion(records, dets, len(NAMES))
    assert is_png(
        plot_confusion(cm, [*NAMES, "background"], tmp_path / "det_cm.png", "Detection confusion")
    )
    cls = classification_metrics([0, 1, 2, 2], [0, 1, 1, 2], 3, VIEWS)
    assert is_png(
        plot_confusion(
            cls["confusion"], VIEWS, tmp_path / "views.png", "View confusion", normalize=False
        )
    )
    empty = {"recall": np.linspace(0, 1, 101), "precision": np.full((4, 101), np.nan)}
    assert is_png(plot_pr_curves(empty, NAMES, tmp_path / "sub" / "empty.png"))
