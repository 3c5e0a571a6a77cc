"""Issue #15.1 and the Python-API parts of #15.7: colour order (``channels``), `load_model`'s
device, `predict_video`, the predictor's repr."""

from __future__ import annotations

import re
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


# --- #15.7: what `medmtl predict` says and draws -----------------------------------------------
def _result(view: str, jets: list[tuple[str, float]], probs: dict[str, float] | None = None,
            source: str = "clip.mp4") -> FrameResult:
    from medmtl.inference.results import Detection

    probs = probs or {v: (0.8 if v == view else 0.1) for v in VIEWS}
    dets = [Detection((10.0, 10.0, 40.0, 40.0), s, NAMES.index(n), n) for n, s in jets]
    return FrameResult(dets, VIEWS.index(view), view, probs, (64, 64), source)


def test_clip_summary_says_view_share_tie_and_jets() -> None:
    from medmtl.inference.app import _Tally

    t = _Tally(VIEWS)
    for view, jets in [("PLAX", [("MR", 0.9)]), ("PLAX", [("MR", 0.7), ("TR", 0.4)]),
                       ("PLAX", []), ("A4C", [("MR", 0.5)])]:
        t.add(_result(view, jets))
    d = t.to_dict()
    assert d["view"]["text"] == "view PLAX (3/4 frames, 75 %)" and d["view"]["tie"] is None
    assert d["jets_text"] == "jets MR in 3/4 frames (max 0.90), TR in 1/4 frames (max 0.40)"
    tie = _Tally(VIEWS)
    tie.add(_result("A4C", [], {"A4C": 0.5, "PLAX": 0.4, "PSAX": 0.1}))
    tie.add(_result("PLAX", [], {"A4C": 0.3, "PLAX": 0.6, "PSAX": 0.1}))
    v = tie.to_dict()["view"]
    assert v["tie"] == ["A4C", "PLAX"] and v["name"] == "PLAX"  # mean 0.50 against 0.40
    assert v["text"] == ("view tied between A4C and PLAX (1/2 frames each); PLAX has the higher "
                         "mean probability (0.50)")
    assert tie.to_dict()["jets_text"] == "no jets found"


def test_predict_prints_per_image_views_and_clip_codec(ckpt: Path, tmp_path: Path) -> None:
    from medmtl.cli.deploy_cmds import summary_lines
    from medmtl.inference import predict_command

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(frame(seed=10 + i)).save(src / f"img{i}.png")
    w = cv2.VideoWriter(str(src / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 64))
    for i in range(4):
        w.write(frame(64, 96, seed=i)[:, :, ::-1])
    w.release()
    summary = predict_command(ckpt, src, tmp_path / "out", device="cpu")
    lines = summary_lines(summary)
    per_image = [ln for ln in lines if ".png: " in ln]
    assert len(per_image) == 3 and len(summary["per_image"]) == 3
    for ln, im in zip(per_image, summary["per_image"], strict=True):
        assert re.fullmatch(rf".*img\d\.png: view ({'|'.join(VIEWS)}) \d\.\d\d; "
                            r"(jets (AR|MR|PR|TR) \d\.\d\d(, (AR|MR|PR|TR) \d\.\d\d)*|no jets found)",
                            ln), ln
        assert im["view"] in VIEWS and 0 < im["view_prob"] <= 1
    clip = [ln for ln in lines if "clip.avi: " in ln]
    assert len(clip) == 1
    assert re.search(r"clip\.avi: view (\w+ \([1-4]/4 frames, \d+ %\)|tied between .+ each\)); "
                     r"(jets \w\w in [1-4]/4 frames|no jets found)", clip[0]), clip[0]
    codec = summary["per_clip"][0]["codec"]
    assert codec in ("avc1", "mp4v")
    assert ("(H.264)" if codec == "avc1" else
            "(mp4v: this OpenCV build has no H.264 encoder)") in clip[0]
    assert lines[-1] == f"7 frames (3 images, 1 clips); wrote {tmp_path / 'out'}"


def test_writer_falls_back_and_says_which_codec(tmp_path: Path) -> None:
    from medmtl.inference.writers import MediaWriter

    w = MediaWriter(tmp_path / "x.mp4", True, 10.0, codecs=("zzzz", "mp4v"))
    for _ in range(3):
        w.write(np.zeros((64, 96, 3), np.uint8))
    w.close()
    assert w.codec == "mp4v"
    cap = cv2.VideoCapture(str(tmp_path / "x.mp4"))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    cap.release()


def test_labels_of_overlapping_boxes_do_not_cover_each_other() -> None:
    from PIL import ImageDraw

    from medmtl.inference.draw import _font, _label, _overlaps, annotate

    im = Image.new("RGB", (200, 120))
    draw, font, taken = ImageDraw.Draw(im), _font(12), []
    rects = [_label(draw, (50, 40), f"MR 0.{9 - k}0", (255, 0, 0), font, (120, 200), taken=taken)
             for k in range(4)]  # four boxes with the same corner
    for i, a in enumerate(rects):
        assert 0 <= a[0] and a[2] <= 200 and 0 <= a[1] and a[3] <= 120, a
        assert not any(_overlaps(a, b) for b in rects[i + 1:]), rects
    r = _result("PLAX", [("MR", 0.9), ("TR", 0.8)])
    out = annotate(np.zeros((64, 64, 3), np.uint8), r)
    assert out.shape == (64, 64, 3) and out.any()
