"""Joint training: every balancer with every architecture learns both tasks on synthetic data,
and the history of a shared model logs task weights and gradient interference."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from medmtl.balancing import BALANCERS
from medmtl.engine.trainer import Trainer
from medmtl.methods import build_config


def _cfg(data: Path, out: Path, arch: str, balancer: str, epochs: int = 6) -> object:
    return build_config("fixed", {"data": str(data), "out": str(out), "epochs": epochs,
                                  "imgsz": 64, "batch": 16, "lr": 0.01, "warmup_epochs": 0.5,
                                  "workers": 0,
                                  "val_every": epochs, "diag_steps": 2,
                                  "model": {"arch": arch}, "balancer": {"name": balancer}})


@pytest.fixture
def learning_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The matrix below asserts learning (the val scores and the history), 15 runs of it: each
    run leaves out what the run folder holds besides (weights/last.pt after every epoch, the
    PR and confusion plots, the latency timing and the view-abstention threshold that
    metrics.json and best.pt record), a quarter of a run's time here. test_train.py and
    test_leakage_abstention.py check those on full runs."""
    import medmtl.engine.abstention as abstention
    import medmtl.evaluation.plots as plots
    import medmtl.inference.efficiency as latency
    from medmtl.engine import evaluate

    monkeypatch.setattr(Trainer, "save_last", lambda self: None)
    monkeypatch.setattr(abstention, "record_abstention", lambda *args, **kwargs: None)
    monkeypatch.setattr(evaluate, "_detection_plots", lambda *args, **kwargs: None)
    monkeypatch.setattr(plots, "plot_confusion", lambda *args, **kwargs: None)
    monkeypatch.setattr(latency, "efficiency", lambda *args, **kwargs: {})


# every balancer on the shared backbone, where it acts on shared gradients; the partially
# shared and the dual architectures with one balancer of each kind between them in make test:
# fixed weights and a re-forward after the step (FAMO) on dual, learned weights from per-task
# gradient norms (GradNorm) and gradient surgery (PCGrad) on split2, the other four cells heavy
# (CI's 15 minutes). (All 21 cells ran until issue 23's CI budget; uncertainty, DWA and CAGrad
# on dual and split2 learned there as everywhere else.)
IN_CI = {("fixed", "dual"), ("famo", "dual"), ("gradnorm", "split2"), ("pcgrad", "split2")}
MATRIX = [(b, "shared") for b in BALANCERS.names()] + [
    (b, arch) if (b, arch) in IN_CI else pytest.param(b, arch, marks=pytest.mark.heavy)
    for arch in ("dual", "split2") for b in ("fixed", "gradnorm", "pcgrad", "famo")]


@pytest.mark.parametrize(("balancer", "arch"), MATRIX)
def test_every_balancer_trains_every_arch(synth_tiny: Path, tmp_path: Path, arch: str,
                                          balancer: str, learning_only: None) -> None:
    tr = Trainer(_cfg(synth_tiny, tmp_path / "run", arch, balancer), progress=False)
    before = tr.validate()
    tr.fit()
    after = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # a relation, not a margin: uncertainty-dual reached 0.0095 from 0.0 on one machine and more
    # elsewhere (CPU rounding moves a few-epoch mAP by that much)
    assert after["detection"]["map50"] > before["detection"]["map50"], (before, after)
    assert after["classification"]["accuracy"] > before["classification"]["accuracy"], \
        (before["classification"], after["classification"])
    with (tmp_path / "run" / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    # (the detection loss first rises as the assigner finds positives; test_train shows it fall
    # over a longer run, so here only the metrics and the view loss are asserted)
    assert float(rows[-1]["loss/classify"]) < float(rows[0]["loss/classify"])
    # the interference diagnostics (2 steps an epoch): dual shares no parameter, so its column
    # stays empty where nothing was measured, never a made-up number
    if arch == "dual":
        assert {r["grad_cos"] for r in rows} == {""}
    if (balancer, arch) == ("gradnorm", "shared"):  # GradNorm's history on a shared model
        assert len(rows) == 6
        for r in rows:
            w = float(r["weight/detect"]) + float(r["weight/classify"])
            assert w == pytest.approx(2.0, abs=1e-4)
            cos = float(r["grad_cos"])
            assert -1.0 <= cos <= 1.0 and math.isfinite(cos)
            assert float(r["grad_norm_ratio"]) > 0
            assert float(r["backward_passes"]) > 1  # its extra partial backwards are counted
        assert sum(after["training"]["final_weights"].values()) == pytest.approx(2.0, abs=1e-4)


def test_partial_labels_mask_each_task(tmp_path: Path) -> None:
    """Images without a view line train detection only; the view metrics count only labelled
    images."""
    from medmtl.data.synth import generate

    data = generate(tmp_path / "d", n_train=48, n_val=24, imgsz=64, seed=5)
    val_labels = sorted((data.parent / "valid" / "labels").glob("*.txt"))
    for p in val_labels[:4]:  # drop the view line of 4 validation images
        text = p.read_text().rstrip("\n").split("\n")
        p.write_text("\n".join(text[:-2]) + "\n")
    tr = Trainer(_cfg(data, tmp_path / "run", "shared", "fixed", epochs=1), progress=False)
    assert tr.val_index.summary["images_view_masked"] == 4
    tr.fit()
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["images"] == 24
    assert sum(map(sum, m["classification"]["confusion"])) == 20
