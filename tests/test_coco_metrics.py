"""COCO export + scoring (faster-coco-eval) checked against pycocotools, and detection P/R/F1."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest

from medmtl.evaluation.coco import (
    coco_ground_truth,
    coco_results,
    evaluate_coco,
    write_json,
)
from medmtl.evaluation.metrics import detection_confusion, detection_prf, match_detections

NAMES = ["AR", "MR", "PR", "TR"]


def rec(image_id: int, boxes, classes, w: int = 640, h: int = 480) -> SimpleNamespace:
    return SimpleNamespace(
        image_id=image_id,
        path=f"/data/val/images/img_{image_id:03d}.png",
        width=w,
        height=h,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        classes=np.asarray(classes, dtype=np.int64).reshape(-1),
    )


def det(*rows) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).reshape(-1, 6)


def pycoco(gt: dict, results: list[dict]):
    """Reference: pycocotools' own COCOeval on the very same dicts."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = copy.deepcopy(gt)
        cg.createIndex()
        cd = cg.loadRes(copy.deepcopy(results))
        ev = COCOeval(cg, cd, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def assert_matches_pycocotools(gt: dict, results: list[dict], names=NAMES) -> dict:
    ours = evaluate_coco(gt, results, names)
    ref = pycoco(gt, results)
    assert ours["map50_95"] == pytest.approx(ref.stats[0], abs=1e-6)
    assert ours["map50"] == pytest.approx(ref.stats[1], abs=1e-6)
    prec = ref.eval["precision"][:, :, :, 0, -1]  # T, R, K  (area all, maxDets 100)
    cat_ids = list(ref.params.catIds)
    for k, name in enumerate(names):
        pk = prec[:, :, cat_ids.index(k + 1)]
        if (pk > -1).all():
            assert ours["per_class"][name]["ap50"] == pytest.approx(pk[0].mean(), abs=1e-6)
            assert ours["per_class"][name]["ap50_95"] == pytest.approx(pk.mean(), abs=1e-6)
        else:
            assert ours["per_class"][name]["ap50"] is None
            assert ours["per_class"][name]["ap50_95"] is None
    return ours


# --------------------------------------------------------------------------- hand-made case
def hand_case():
    records = [
        # large AR + small MR
        rec(0, [[100, 100, 300, 260], [400, 50, 420, 70]], [0, 1]),
        # medium AR, large TR (TR never predicted)
        rec(1, [[50, 60, 110, 120], [200, 150, 500, 450]], [0, 3]),
        # two MR close together, one AR that nobody finds
        rec(2, [[10, 10, 90, 90], [100, 10, 180, 90], [300, 300, 340, 330]], [1, 1, 0], 800, 600),
        rec(3, [], []),  # no ground truth: anything predicted here is a false positive
        rec(4, [[20, 20, 620, 460]], [1]),
    ]
    dets = [
        det(
            [102, 98, 298, 262, 0.95, 0],  # AR, IoU ~0.96
            [110, 110, 290, 250, 0.60, 0],  # duplicate of the same AR
            [401, 52, 421, 72, 0.70, 1],  # small MR, IoU ~0.68
            [150, 150, 250, 250, 0.40, 2],  # PR has no ground truth anywhere
        ),
        det(
            [60, 70, 120, 130, 0.80, 0],  # AR, IoU ~0.53
            [500, 20, 600, 90, 0.85, 0],  # false positive, higher score
        ),
        det(
            [15, 12, 95, 92, 0.90, 1],  # MR, IoU ~0.83
            [140, 10, 220, 90, 0.75, 1],  # shifted by half: IoU 1/3, no match
            [60, 10, 140, 90, 0.30, 1],  # straddles both MR
        ),
        det([5, 5, 50, 50, 0.50, 3]),  # TR false positive on an empty image
        det([20, 20, 620, 460, 0.65, 1], [30, 30, 600, 440, 0.20, 1]),
    ]
    return records, dets


def test_hand_case_matches_pycocotools() -> None:
    records, dets = hand_case()
    gt = coco_ground_truth(records, NAMES)
    res = coco_results([r.image_id for r in records], dets)
    ours = assert_matches_pycocotools(gt, res)
    assert ours["per_class"]["PR"]["ap50"] is None  # detections but no ground truth
    assert ours["per_class"]["TR"]["ap50"] == 0.0  # ground truth but no correct detection
    assert 0.0 < ours["map50_95"] < ours["map50"] < 1.0
    assert ours["per_class"]["MR"]["n_gt"] == 4


def test_ground_truth_export_contract(tmp_path) -> None:
    records, _ = hand_case()
    gt = coco_ground_truth(records, NAMES)
    assert [c["id"] for c in gt["categories"]] == [1, 2, 3, 4]
    assert [c["name"] for c in gt["categories"]] == NAMES
    assert [im["id"] for im in gt["images"]] == [0, 1, 2, 3, 4]
    assert gt["images"][2] == {"id": 2, "file_name": "img_002.png", "width": 800, "height": 600}
    ids = [a["id"] for a in gt["annotations"]]
    assert ids == list(range(1, len(ids) + 1))
    first = gt["annotations"][0]
    assert first["bbox"] == [100.0, 100.0, 200.0, 160.0]
    assert first["area"] == 200.0 * 160.0 and first["category_id"] == 1 and first["iscrowd"] == 0
    path = write_json(tmp_path / "ground_truth.json", gt)
    assert json.loads(path.read_text()) == gt
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_evaluate_does_not_modify_inputs() -> None:
    records, dets = hand_case()
    gt = coco_ground_truth(records, NAMES)
    res = coco_results([r.image_id for r in records], dets)
    gt0, res0 = copy.deepcopy(gt), copy.deepcopy(res)
    evaluate_coco(gt, res, NAMES)
    assert gt == gt0 and res == res0


def random_case(seed: int, n_images: int = 50):
    rng = np.random.default_rng(seed)
    records, dets = [], []
    for i in range(n_images):
        w, h = int(rng.integers(320, 1024)), int(rng.integers(240, 768))
        m = int(rng.integers(0, 5))
        size = np.exp(rng.uniform(np.log(8), np.log(min(w, h) * 0.6), size=(m, 2)))
        x1 = rng.uniform(0, w - size[:, 0])
        y1 = rng.uniform(0, h - size[:, 1])
        boxes = np.stack([x1, y1, x1 + size[:, 0], y1 + size[:, 1]], axis=1)
        cls = rng.integers(0, 3, size=m)  # class 3 (TR) never has ground truth
        records.append(rec(i, boxes, cls, w, h))
        rows = []
        for b, c in zip(boxes, cls, strict=True):
            bw, bh = b[2] - b[0], b[3] - b[1]
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):  # missed, found, duplicated
                jit = rng.normal(0, 0.12, 4) * [bw, bh, bw, bh]
                c_pred = c if rng.random() < 0.9 else rng.integers(0, 4)
                rows.append([*(b + jit), rng.random(), c_pred])
        for _ in range(int(rng.integers(0, 4))):  # background false positives
            x, y = rng.uniform(0, w - 40), rng.uniform(0, h - 40)
            s = rng.uniform(10, 120)
            rows.append([x, y, x + s, y + s, rng.random() * 0.7, rng.integers(0, 4)])
        dets.append(np.asarray(rows, dtype=np.float64).reshape(-1, 6))
    return records, dets


@pytest.mark.parametrize("seed", [0, 1])
def test_random_case_matches_pycocotools(seed: int) -> None:
    records, dets = random_case(seed)
    gt = coco_ground_truth(records, NAMES)
    res = coco_results([r.image_id for r in records], dets)
    ours = assert_matches_pycocotools(gt, res)
    assert ours["per_class"]["TR"]["ap50"] is None
    assert 0.2 < ours["map50"] < 0.95

    # Our own IoU-0.5 matching (used for P/R/F1) rebuilds COCO's AP@0.5 exactly.
    back = [
        np.asarray(
            [
                [
                    *a["bbox"][:2],
                    a["bbox"][0] + a["bbox"][2],
                    a["bbox"][1] + a["bbox"][3],
                    a["score"],
                    a["category_id"] - 1,
                ]
                for a in res
                if a["image_id"] == r.image_id
            ]
        ).reshape(-1, 6)
        for r in records
    ]
    prf = detection_prf(records, back, len(NAMES), names=NAMES)
    for k, name in enumerate(NAMES):
        ap = prf["curves"]["pr"]["ap"][k]
        if ours["per_class"][name]["ap50"] is None:
            assert np.isnan(ap)
        else:
            assert ap == pytest.approx(ours["per_class"][name]["ap50"], abs=1e-6)


def test_empty_results_are_zero() -> None:
    records, _ = hand_case()
    gt = coco_ground_truth(records, NAMES)
    out = evaluate_coco(gt, [], NAMES)
    assert out["map50"] == 0.0 and out["map50_95"] == 0.0
    assert out["per_class"]["AR"] == {"ap50": 0.0, "ap50_95": 0.0, "n_gt": 3}
    assert out["per_class"]["PR"]["ap50"] is None
    prf = detection_prf(records, [det() for _ in records], len(NAMES), names=NAMES)
    assert prf["precision"] == prf["recall"] == prf["f1"] == 0.0
    assert prf["conf_threshold"] is None


def test_no_ground_truth_at_all_is_undefined_not_zero() -> None:
    records = [rec(0, [], []), rec(1, [], [])]
    gt = coco_ground_truth(records, NAMES)
    res = coco_results([0, 1], [det([1, 1, 9, 9, 0.5, 0]), det()])
    out = evaluate_coco(gt, res, NAMES)
    assert out["map50"] is None and out["map50_95"] is None


def test_perfect_predictions_score_one() -> None:
    records, _ = random_case(3, n_images=20)
    dets = [as_dets(r) for r in records]
    gt = coco_ground_truth(records, NAMES)
    res = coco_results([r.image_id for r in records], dets)
    out = assert_matches_pycocotools(gt, res)
    assert out["map50"] == pytest.approx(1.0) and out["map50_95"] == pytest.approx(1.0)
    prf = detection_prf(records, dets, len(NAMES), names=NAMES)
    assert prf["precision"] == prf["recall"] == prf["f1"] == pytest.approx(1.0)


def as_dets(r: SimpleNamespace) -> np.ndarray:
    n = len(r.classes)
    scores = np.linspace(0.9, 0.5, n) if n else np.zeros(0)
    return np.concatenate([r.boxes, scores[:, None], r.classes[:, None]], axis=1)


def test_coco_results_round_trip() -> None:
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 500, size=(30, 2))
    wh = rng.uniform(1, 200, size=(30, 2))
    d = np.concatenate([xy, xy + wh, rng.random((30, 1)), rng.integers(0, 4, (30, 1))], axis=1)
    out = coco_results([11, 12], [d[:20], d[20:]])
    assert [o["image_id"] for o in out] == [11] * 20 + [12] * 10
    for o, row in zip(out, d, strict=True):
        x, y, w, h = o["bbox"]
        np.testing.assert_allclose([x, y, x + w, y + h], row[:4], atol=2e-3)
        assert o["score"] == pytest.approx(row[4], abs=1e-5)
        assert o["category_id"] == int(row[5]) + 1
        assert all(round(v, 3) == v for v in o["bbox"])
    assert coco_results([1], [np.zeros((0, 6))]) == []


# --------------------------------------------------------------------------- P / R / F1
def prf_case():
    """Two classes with ground truth, class 2 with a false positive only (see the test)."""
    records = [
        rec(0, [[0, 0, 10, 10], [20, 0, 30, 10]], [0, 0]),
        rec(1, [[0, 0, 10, 10], [50, 50, 70, 70]], [0, 1]),
    ]
    dets = [
        det(
            [0, 0, 10, 10, 0.90, 0],  # TP (first AR)
            [0, 0, 10, 11, 0.80, 0],  # duplicate of the first AR -> FP
            [19, 0, 30, 10, 0.70, 0],  # TP (second AR)
            [100, 100, 110, 110, 0.30, 0],  # FP
            [0, 0, 10, 10, 0.95, 2],  # class 2 has no ground truth: must not count
        ),
        det(
            [0, 0, 10, 10, 0.60, 0],  # TP
            [50, 50, 70, 70, 0.85, 1],  # TP
            [50, 52, 70, 72, 0.65, 1],  # duplicate -> FP
        ),
    ]
    return records, dets


def test_detection_prf_by_hand() -> None:
    records, dets = prf_case()
    out = detection_prf(records, dets, 3, names=["a", "b", "c"])
    # Mean F1 over classes a, b at each candidate threshold (worked by hand):
    # .95: 0/0 -> 0 | .90: (.5+0)/2 | .85: (.5+1)/2 | .80: (.4+1)/2 | .70: (2/3+1)/2 = .8333
    # .65: (2/3+2/3)/2 | .60: (6/7+2/3)/2 = .7619 | .30: (.75+2/3)/2  -> best at 0.70
    assert out["conf_threshold"] == pytest.approx(0.70)
    assert out["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
    assert out["per_class"]["a"]["recall"] == pytest.approx(2 / 3)
    assert out["per_class"]["b"]["precision"] == pytest.approx(1.0)
    assert out["per_class"]["b"]["f1"] == pytest.approx(1.0)
    assert out["precision"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["recall"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["per_class"]["c"]["precision"] is None
    assert out["per_class"]["a"]["n_pred"] == 3 and out["per_class"]["c"]["n_pred"] == 1
    f1c = out["curves"]["f1_conf"]
    assert f1c["f1"].shape == (3, 1001) and f1c["mean_f1"].max() == pytest.approx(5 / 6)
    # the same detections given as a mapping image_id -> array
    by_id = detection_prf(records, {0: dets[0], 1: dets[1]}, 3, names=["a", "b", "c"])
    assert by_id["f1"] == pytest.approx(out["f1"])


def test_match_detections_greedy() -> None:
    records, dets = prf_case()
    m = match_detections(records, dets, 3)
    assert m["tp"].tolist() == [True, False, True, False, False, True, True, False]
    assert m["n_gt"].tolist() == [3, 1, 0]


def test_detection_confusion() -> None:
    records = [rec(0, [[0, 0, 10, 10], [20, 0, 30, 10], [40, 40, 50, 50]], [0, 1, 1])]
    dets = [
        det(
            [0, 0, 10, 10, 0.9, 0],  # correct
            [20, 0, 30, 10, 0.8, 0],  # right place, wrong class: true 1 predicted 0
            [80, 80, 90, 90, 0.7, 1],  # false alarm
            [40, 40, 50, 50, 0.1, 1],  # below conf: ignored, so that GT is missed
        )
    ]
    m = detection_confusion(records, dets, 2, conf=0.25)
    expected = np.array([[1, 0, 0], [1, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(m, expected)
