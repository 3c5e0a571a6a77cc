"""Issue #14.8 and #14.2 (predict): checkpoint integrity (SHA-256, header, named mismatches),
backbone paths from a checkpoint's config, non-finite weights and outputs, and a predict run in
which no input could be read."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from _cli import run_main as _cli

from medmtl.engine.checkpoint import save_checkpoint
from medmtl.errors import CheckpointError, NonFiniteError
from medmtl.inference import load_model
from medmtl.inference.torch_predictor import Predictor
from medmtl.methods import build_config
from medmtl.models import build_model
from medmtl.models.checkpoint import (
    checkpoint_dict,
    checkpoint_digest,
    load_checkpoint,
    model_from_checkpoint,
)

NAMES, VIEWS = ["AR", "MR"], ["A4C", "PLAX", "PSAX"]


@pytest.fixture(scope="module")
def packed() -> dict:
    """A classify-only size-n model packed as a checkpoint (built, not trained)."""
    torch.manual_seed(0)
    cfg = build_config("classify", {"imgsz": 64})
    cfg.model.num_classes, cfg.model.num_views = len(NAMES), len(VIEWS)
    return checkpoint_dict(build_model(cfg.model), cfg, NAMES, VIEWS)


def _copy(ck: dict) -> dict:
    import copy

    return copy.deepcopy(ck)



def test_flipped_bytes_are_caught(packed: dict, tmp_path: Path) -> None:
    """#14.8: before, a checkpoint with 64 flipped bytes loaded silently."""
    p = tmp_path / "best.pt"
    save_checkpoint(packed, p)
    assert load_checkpoint(p)["sha256"] == checkpoint_digest(load_checkpoint(p))
    data = bytearray(p.read_bytes())
    mid = int(len(data) * 0.6)
    data[mid: mid + 64] = bytes(b ^ 0xFF for b in data[mid: mid + 64])
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{bad}: (corrupted|not a loadable)"):
        load_checkpoint(bad)


def test_old_checkpoints_load_unverified(packed: dict, tmp_path: Path) -> None:
    old = {k: v for k, v in _copy(packed).items() if k not in ("sha256", "header")}
    p = tmp_path / "old.pt"
    torch.save(old, p)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        model, cfg, ck = model_from_checkpoint(p)
    assert any("unverified" in str(x.message) and str(p) in str(x.message) for x in w)
    assert cfg.model.size == "n" and model.num_views == 3


def test_header_and_shape_mismatch_name_file_and_fields(packed: dict, tmp_path: Path) -> None:
    """#14.8: before, another size/arch failed with a long state-dict key list, no file name."""
    ck = _copy(packed)
    ck["config"]["model"]["size"] = "s"
    ck["sha256"] = checkpoint_digest(ck)
    p = tmp_path / "header.pt"
    torch.save(ck, p)
    with pytest.raises(CheckpointError, match=rf"{p}: header and config disagree \(size: header "
                                              r"n vs config s\)"):
        model_from_checkpoint(p)
    old = {k: v for k, v in ck.items() if k not in ("sha256", "header")}  # no header to check
    p2 = tmp_path / "shape.pt"
    torch.save(old, p2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError) as e:
            model_from_checkpoint(p2)
    msg = str(e.value)
    assert msg.startswith(f"{p2}: weights do not fit the single/s model") and "of another shape" in msg
    assert "\n" not in msg and len(msg) < 400


@pytest.mark.parametrize("backbone", ["/tmp/evil_folder", "local-dir:/tmp/x", "hf-hub:me/mine"])
def test_backbone_path_in_a_checkpoint_needs_the_flag(packed: dict, tmp_path: Path,
                                                     backbone: str) -> None:
    ck = _copy(packed)
    ck["config"]["model"]["backbone"] = backbone
    p = tmp_path / "bb.pt"
    save_checkpoint(ck, p)
    with pytest.raises(CheckpointError, match="--allow-backbone-path"):
        model_from_checkpoint(p)


def test_nan_weights_and_outputs_are_errors(packed: dict, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """#14.2: predict with NaN weights exited 0 with "no detections" and NaN in its JSON."""
    import numpy as np
    from PIL import Image

    ck = _copy(packed)
    key = next(k for k, v in ck["model"].items() if v.is_floating_point() and v.ndim > 1)
    ck["model"][key] = torch.full_like(ck["model"][key], float("nan"))
    p = tmp_path / "nan.pt"
    save_checkpoint(ck, p)
    with pytest.raises(CheckpointError, match=rf"{p}: 1 weight tensor\(s\) hold NaN/inf"):
        load_model(p)
    img = tmp_path / "in" / "a.png"
    img.parent.mkdir()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(img)
    code, err = _cli(["predict", "--weights", str(p), "--source", str(img.parent), "--out",
                      str(tmp_path / "pred"), "--device", "cpu"], capsys)
    assert code == 2 and "NaN/inf" in err
    # weights that pass the load check but produce non-finite outputs
    good = tmp_path / "good.pt"
    save_checkpoint(packed, good)
    pred = load_model(good)
    assert isinstance(pred, Predictor)
    with torch.no_grad():
        for prm in pred.model.parameters():
            prm.mul_(1e30)
    with pytest.raises(NonFiniteError, match="non-finite"):
        pred.predict(str(img))


def test_predict_exits_nonzero_when_no_input_is_readable(packed: dict, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(packed, good)
    src = tmp_path / "in"
    src.mkdir()
    for n in ("a.png", "b.jpg", "c.png"):
        (src / n).write_bytes(b"not an image at all")
    code, err = _cli(["predict", "--weights", str(good), "--source", str(src), "--out",
                      str(tmp_path / "pred"), "--device", "cpu"], capsys)
    assert code == 2 and "none of the 3 input file(s) could be read (3 failed" in err
    assert (tmp_path / "pred" / "summary.json").exists()
