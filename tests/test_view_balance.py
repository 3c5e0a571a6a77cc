"""The view task's class imbalance (--view-balance): class weights from the training counts,
logit adjustment (Menon et al. 2021) and a class-balanced sampler, checked against their
definitions; a short run records the remedy and its counts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medmtl.config import LossConfig
from medmtl.engine.data_setup import balanced_order
from medmtl.losses.classify import ViewLoss, view_balance_terms

COUNTS = [85, 413, 275]  # A4C, PLAX, PSAX of the real training split of docs/study


def test_weighted_is_inverse_frequency() -> None:
    w, prior = view_balance_terms(LossConfig(view_balance="weighted"), 3, COUNTS)
    n = sum(COUNTS)
    assert prior is None
    assert w == pytest.approx([n / (3 * c) for c in COUNTS], rel=1e-12)
    # the weighted mean over the training set gives every class the same total weight
    assert [wi * c for wi, c in zip(w, COUNTS, strict=True)] == pytest.approx([n / 3] * 3)
    # explicit weights win over the computed ones
    explicit = LossConfig(view_balance="weighted", view_class_weights=[1.0, 2.0, 3.0])
    assert view_balance_terms(explicit, 3, COUNTS)[0] == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="needs the training split's view counts"):
        view_balance_terms(LossConfig(view_balance="weighted"), 3, None)


def test_logit_adjusted_loss_is_cross_entropy_of_shifted_logits() -> None:
    torch.manual_seed(0)
    logits, view = torch.randn(8, 3), torch.randint(0, 3, (8,))
    mask = torch.ones(8, dtype=torch.bool)
    loss = ViewLoss(3, LossConfig(view_balance="logit-adjust"), COUNTS)(logits, view, mask)
    prior = torch.tensor(COUNTS, dtype=torch.float32) / sum(COUNTS)
    want = F.cross_entropy(logits + prior.log(), view)
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    # the optimum of the adjusted loss on data with the training prior is a flat plain logit
    z = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([z], lr=1.0)
    y = torch.tensor([0] * 85 + [1] * 413 + [2] * 275)
    for _ in range(300):
        opt.zero_grad()
        ViewLoss(3, LossConfig(view_balance="logit-adjust"), COUNTS)(
            z.expand(len(y), 3), y, torch.ones(len(y), dtype=torch.bool)).backward()
        opt.step()
    assert float(z.detach().max() - z.detach().min()) < 1e-3


def test_sampler_draws_classes_equally() -> None:
    views: list[int | None] = [0] * 85 + [1] * 413 + [2] * 275 + [None] * 2
    g = torch.Generator().manual_seed(3)
    draws = [i for _ in range(20) for i in balanced_order(views, 3, g)]
    n = len(draws)
    labelled = [views[i] for i in draws if views[i] is not None]
    for c in range(3):
        share = labelled.count(c) / len(labelled)
        assert abs(share - 1 / 3) < 4 * math.sqrt((1 / 3) * (2 / 3) / len(labelled)), (c, share)
    assert sum(views[i] is None for i in draws) > 0 and n == 20 * len(views)
    # seeded: the same generator seed gives the same order
    assert balanced_order(views, 3, torch.Generator().manual_seed(5)) == \
        balanced_order(views, 3, torch.Generator().manual_seed(5))


@pytest.mark.parametrize("policy", ["sampler", "logit-adjust"])
def test_run_records_the_remedy(policy: str, synth_tiny: Path, tmp_path: Path,
                                one_thread: None) -> None:
    from medmtl.engine.trainer import train
    from medmtl.methods import build_config

    cfg = build_config("fixed", {"data": str(synth_tiny), "out": str(tmp_path / "r"),
                                 "epochs": 1, "imgsz": 64, "batch": 16, "workers": 0,
                                 "diag_steps": 0, "loss": {"view_balance": policy}})
    run = train(cfg, progress=False)
    rec = json.loads((run / "metrics.json").read_text())["data"]["view_balance"]
    assert rec["policy"] == policy and sum(rec["train_view_counts"].values()) > 0
