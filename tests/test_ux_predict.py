"""Issue #15.1 and the Python-API parts of #15.7: colour order (``channels``), `load_model`'s
device, `predict_video`, the predictor's repr."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from test_inference import NAMES, VIEWS, frame, make_checkpoint, same

from medmtl.errors import InputError
from medmtl.inference import FrameResult, load_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("w") / "best.pt")


def _probs(r: FrameResult) -> np.ndarray:
    return np.array([r.view_probs[v] for v in VIEWS])


def test_path_pil_rgb_and_bgr_arrays_agree(ckpt: Path, tmp_path: Path) -> None:
    model = load_model(ckpt, device="cpu")
    rgb = frame(seed=3)
    rgb[10:30, 20:60] = (40, 60, 235)  # a blue jet next to the red one: the order matters
    png = tmp_path / "f.png"
    Image.fromarray(rgb).save(png)
    bgr = cv2.imread(str(png))  # what an OpenCV user has
    assert np.array_equal(bgr, rgb[:, :, ::-1])
    ref = model.predict(png)
    assert ref.detections
    for r in (model.predict(Image.open(png)), model.predict(rgb),
              model.predict(rgb, channels="rgb"), model.predict(bgr, channels="bgr"),
              model.predict(np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)]),
                            channels="bgr"),  # BGRA
              model.predict_batch([bgr], channels="bgr")[0]):
        same(r, ref)
        assert np.allclose(_probs(r), _probs(ref), atol=1e-6)
    # the mistake the issue saw: a BGR frame read as RGB gives another answer
    wrong = model.predict(bgr)
    got = sorted((d.cls, *np.round(d.box)) for d in wrong.detections)
    want = sorted((d.cls, *np.round(d.box)) for d in ref.detections)
    assert got != want
    with pytest.raises(InputError, match='channels must be "rgb" or "bgr"'):
        model.predict(rgb, channels="BGR")  # type: ignore[arg-type]


def test_load_model_device_is_auto_like_the_cli(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from medmtl.devices import select_device

    model = load_model(ckpt)
    assert model.device == select_device("auto")  # type: ignore[attr-defined]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match=r"--device cuda: CUDA is not available.*use --device cpu"):
        load_model(ckpt, device="cuda")


def test_predict_video_yields_every_frame_in_rgb(ckpt: Path, tmp_path: Path) -> None:
    model = load_model(ckpt, device="cpu", max_batch=4)
    vid = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 64))
    assert w.isOpened()
    for i in range(6):
        w.write(frame(64, 96, seed=i)[:, :, ::-1])  # OpenCV writes BGR
    w.release()
    results = list(model.predict_video(vid))
    assert [r.frame for r in results] == list(range(6))
    assert all(r.source == str(vid) and r.image_size == (64, 96) for r in results)
    cap = cv2.VideoCapture(str(vid))
    decoded = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        decoded.append(bgr)
    cap.release()
    same(results[4], model.predict(decoded[4], channels="bgr", source=str(vid), frame=4))


def test_repr_says_what_the_model_is(ckpt: Path) -> None:
    text = repr(load_model(ckpt, device="cpu"))
    assert text.startswith("Predictor(") and str(ckpt) in text
    for part in ("tasks=detect+classify", "imgsz=64", "device=cpu", *NAMES, *VIEWS):
        assert part in text, (part, text)
