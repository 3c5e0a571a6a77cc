"""Single-task training on synthetic echo data: learning, the run-directory contract, honest
re-scoring of the exported predictions, and step-exact resume."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medmtl.engine.loop import train_one_epoch
from medmtl.engine.trainer import Trainer
from medmtl.methods import build_config


def _history(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open() as f:
        return list(csv.DictReader(f))


def _fit(cfg: object) -> tuple[Path, dict]:
    """Train `cfg`; return the run folder and the scores of its untrained start (the reference
    the trained model is measured against: levels reached in a few epochs move between CPUs)."""
    t = Trainer(cfg, progress=False)
    try:
        before = t.validate()
        return t.fit(), before
    finally:
        t.close()


@pytest.fixture(scope="module")
def detector(synth_small: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("det") / "run"
    cfg = build_config("detect", {"data": str(synth_small), "out": str(out), "epochs": 6,
                                  "imgsz": 128, "batch": 16, "lr": 0.004, "workers": 0,
                                  "val_every": 3})
    return _fit(cfg)


@pytest.fixture(scope="module")
def detector_run(detector: tuple[Path, dict]) -> Path:
    return detector[0]


def test_detector_learns_and_writes_the_run_directory(detector: tuple[Path, dict]) -> None:
    run, before = detector
    for f in ("config.yaml", "history.csv", "metrics.json", "weights/best.pt", "weights/last.pt",
              "eval/predictions.json", "eval/ground_truth.json"):
        assert (run / f).is_file(), f
    rows = _history(run)
    assert len(rows) == 6
    for col in ("epoch", "loss/detect", "weight/detect", "grad_cos", "lr", "seconds", "val/map50"):
        assert col in rows[0]
    assert rows[0]["grad_cos"] == ""  # single task: nothing to measure
    losses = [float(r["loss/detect"]) for r in rows]
    assert losses[-1] < 0.8 * max(losses[:3])  # loss falls
    assert float(rows[5]["val/map50"]) > float(rows[2]["val/map50"])  # metric rises
    m = json.loads((run / "metrics.json").read_text())
    assert m["split"] == "val" and m["images"] == 60 and m["classification"] is None
    det = m["detection"]
    # better than its untrained start (which finds nothing: 0.0), not a level that a CPU's
    # rounding moves
    assert det["map50"] > before["detection"]["map50"], (before["detection"], det)
    assert det["map50_95"] > before["detection"]["map50_95"]
    assert 0 < det["map50_95"] < det["map50"]
    assert set(det["per_class"]) == {"AR", "MR", "PR", "TR"}
    for k in ("precision", "recall", "f1"):
        assert 0.0 < det[k] <= 1.0
    eff = m["efficiency"]  # forward only, and end to end (decode, letterbox, forward, NMS)
    assert eff["ms_per_image"] > 0 and eff["latency_e2e_ms"] > 0
    inc = eff["latency_e2e_includes"]
    assert "NMS" in inc and "view softmax" not in inc  # a detect-only model
    assert "--retime" in eff["latency_e2e_ort_skipped"]  # ONNX Runtime: after a comparison


def test_predictions_rescore_with_pycocotools(detector_run: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(detector_run / "eval/ground_truth.json"))
    dt = gt.loadRes(str(detector_run / "eval/predictions.json"))
    ev = COCOeval(gt, dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    m = json.loads((detector_run / "metrics.json").read_text())["detection"]
    assert abs(ev.stats[1] - m["map50"]) < 1e-4
    assert abs(ev.stats[0] - m["map50_95"]) < 1e-4


def test_val_maps_boxes_back_to_original_pixels(detector_run: Path, synth_small: Path,
                                                tmp_path: Path) -> None:
    """The same frames stored at another size and aspect (192x144): predictions come back in
    those images' own pixels, so the mAP stays; a wrong inverse letterbox would collapse it."""
    from medmtl.engine.validate import validate_checkpoint

    root = tmp_path / "resized"
    src = synth_small.parent
    shutil.copytree(src / "valid" / "labels", root / "valid" / "labels")
    (root / "valid" / "images").mkdir(parents=True)
    for p in sorted((src / "valid" / "images").iterdir()):
        Image.open(p).convert("RGB").resize((192, 144), Image.BILINEAR).save(
            root / "valid" / "images" / (p.stem + ".png"))
    text = (src / "data.yaml").read_text().replace("train: train/images",
                                                   f"train: {src / 'train' / 'images'}")
    (root / "data.yaml").write_text(text)
    base = validate_checkpoint(detector_run / "weights/best.pt", synth_small, out=tmp_path / "a",
                               device="cpu", workers=0, plots=False)
    moved = validate_checkpoint(detector_run / "weights/best.pt", root / "data.yaml",
                                out=tmp_path / "b", device="cpu", workers=0, plots=False)
    gt = json.loads((tmp_path / "b" / "ground_truth.json").read_text())
    assert {(im["width"], im["height"]) for im in gt["images"]} == {(192, 144)}
    preds = json.loads((tmp_path / "b" / "predictions.json").read_text())
    assert preds and max(p["bbox"][0] + p["bbox"][2] for p in preds) <= 192 + 1e-3
    assert moved["detection"]["map50"] > 0.8 * base["detection"]["map50"]


def test_view_classifier_learns(synth_tiny: Path, tmp_path: Path, one_thread: None) -> None:
    """The view is learnt from 64 px frames (tests/test_synth.py: it is visible at 16 px)."""
    cfg = build_config("classify", {"data": str(synth_tiny), "out": str(tmp_path / "cls"),
                                    "epochs": 6, "imgsz": 64, "batch": 16, "lr": 0.004,
                                    "workers": 0, "val_every": 3})
    run, before = _fit(cfg)
    rows = _history(run)
    assert float(rows[-1]["loss/classify"]) < float(rows[0]["loss/classify"])
    m = json.loads((run / "metrics.json").read_text())
    assert m["detection"] is None
    c = m["classification"]
    confusion = np.asarray(c["confusion"])
    assert confusion.sum() == 32
    # against references, not a level: its untrained start, and always naming the most frequent
    # view (the confusion matrix's rows are the true views)
    majority = confusion.sum(axis=1).max() / confusion.sum()
    assert c["accuracy"] > max(majority, before["classification"]["accuracy"]), \
        (majority, before["classification"], c)


def _tiny_cfg(data: Path, out: Path, method: str = "gradnorm") -> object:
    return build_config(method, {"data": str(data), "out": str(out), "epochs": 2, "imgsz": 64,
                                 "batch": 16, "workers": 0, "deterministic": True,
                                 "val_every": 2, "seed": 3})


@pytest.mark.parametrize(("method", "sig"), [
    ("gradnorm", signal.SIGINT),
    # SIGTERM's save-and-exit is also test_reliability_run's process-group test (CI's budget)
    pytest.param("pcgrad", signal.SIGTERM, marks=pytest.mark.heavy)])
def test_interrupted_run_resumes_to_identical_weights(synth_tiny: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     method: str, sig: int) -> None:
    """A real Ctrl-C (SIGINT), or a scheduler's SIGTERM, stops at a step boundary and saves;
    --resume then ends with the uninterrupted run's exact weights."""
    full = Trainer(_tiny_cfg(synth_tiny, tmp_path / "full", method), progress=False)
    full.fit()

    real_step = Trainer.optimizer_step
    calls = {"n": 0}

    def flaky(self: Trainer, n_micro: int, losses: list | None = None) -> bool:
        calls["n"] += 1
        if calls["n"] == 7:  # epoch 2 (6 steps per epoch), mid-step: a real signal
            os.kill(os.getpid(), sig)
        return real_step(self, n_micro, losses)

    monkeypatch.setattr(Trainer, "optimizer_step", flaky)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_tiny_cfg(synth_tiny, tmp_path / "cut", method), progress=False).fit()
    monkeypatch.setattr(Trainer, "optimizer_step", real_step)
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(_tiny_cfg(synth_tiny, tmp_path / "cut", method), progress=False)
    resumed = Trainer(_tiny_cfg(synth_tiny, tmp_path / "cut", method), resume=True,
                      progress=False)
    assert (resumed.state.epoch, resumed.state.step_in_epoch) == (1, 1)
    resumed.fit()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full.balancer.weights() == pytest.approx(resumed.balancer.weights(), abs=0)
    ha, hb = _history(tmp_path / "full"), _history(tmp_path / "cut")
    for ra, rb in zip(ha, hb, strict=True):
        for col in ("loss/detect", "loss/classify", "weight/detect", "val/map50"):
            assert ra[col] == rb[col], col


def test_checkpoints_load_safely_and_reject_code(tmp_path: Path) -> None:
    import pickle

    from medmtl.models.checkpoint import load_checkpoint

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    with bad.open("wb") as f:
        pickle.dump({"model": Evil(), "config": {}}, f)
    with pytest.raises(ValueError, match="evil.pt: not a loadable medmtl checkpoint"):
        load_checkpoint(bad)


def test_persistent_workers_give_the_main_process_batches(synth_tiny: Path, tmp_path: Path,
                                                          one_thread: None) -> None:
    """Loader workers start once per run and persist across epochs; they must still see each
    epoch's order and augmentation: 2 workers train to the same weights as none."""
    states = []
    for w in (0, 2):
        cfg = build_config("fixed", {"data": str(synth_tiny), "out": str(tmp_path / f"w{w}"),
                                     "epochs": 2, "imgsz": 64, "batch": 32, "workers": w,
                                     "deterministic": True, "ema": False, "diag_steps": 0})
        t = Trainer(cfg, progress=False)
        for _ in range(2):
            train_one_epoch(t)
            t.state.epoch += 1
            t.state.step_in_epoch = 0
        if w:
            loader = t.data._loaders["train"]
            assert loader.persistent_workers and loader._iterator is not None  # reused
        states.append(t.model.state_dict())
    for k, v in states[0].items():  # exact: same batches, same ops, deterministic, one process
        torch.testing.assert_close(states[1][k], v, rtol=0, atol=0, msg=k)
