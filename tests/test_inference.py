"""Inference API (load_model / Predictor), frame sources and `predict_command` outputs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from medmtl.config import ModelConfig, TrainConfig
from medmtl.engine.checkpoint import save_checkpoint
from medmtl.inference import FrameResult, checkpoint_dict, load_model, predict_command
from medmtl.inference.sources import iter_frames, resolve_sources
from medmtl.models import build_model

NAMES, VIEWS = ["AR", "MR", "PR", "TR"], ["A4C", "PLAX", "PSAX"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_checkpoint(path: Path, arch: str = "shared", **model_kw) -> Path:
    """Random tiny model at imgsz 64; class bias raised so that some boxes pass conf 0.25."""
    torch.manual_seed(0)
    cfg = TrainConfig(imgsz=64, model=ModelConfig(arch=arch, size="n", **model_kw))
    model = build_model(cfg.model)
    if model.detect_head is not None:
        with torch.no_grad():
            for b, c in zip(model.detect_head.box, model.detect_head.cls, strict=True):
                c[-1].bias.fill_(0.0)  # scores ~0.5
                b[-1].bias.copy_(-0.4 * torch.arange(cfg.model.reg_max).repeat(4))  # short sides
    save_checkpoint(checkpoint_dict(model, cfg, NAMES, VIEWS), path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("w") / "best.pt")


def frame(h: int = 90, w: int = 150, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = (rng.random((h, w, 3)) * 80).astype(np.uint8)
    a[h // 4: h // 2, w // 3: 2 * w // 3] = (230, 40, 30)
    return a


def same(a: FrameResult, b: FrameResult) -> None:
    assert a.image_size == b.image_size and a.view == b.view
    assert [(d.cls, d.name) for d in a.detections] == [(d.cls, d.name) for d in b.detections]
    for x, y in zip(a.detections, b.detections, strict=True):
        assert np.allclose(x.box, y.box, atol=1e-3) and abs(x.score - y.score) < 1e-6


def test_path_array_pil_agree_and_original_pixels(ckpt, tmp_path) -> None:
    model = load_model(ckpt, device="cpu")
    img = frame()
    Image.fromarray(img).save(tmp_path / "f.png")
    r_path = model.predict(tmp_path / "f.png")
    r_arr = model.predict(img)
    r_pil = model.predict(Image.open(tmp_path / "f.png"))
    same(r_path, r_arr)
    same(r_path, r_pil)
    assert r_path.image_size == (90, 150) and r_path.source.endswith("f.png")
    assert r_path.detections, "the biased head should give detections"
    for d in r_path.detections:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 <= x2 <= 150 and 0 <= y1 <= y2 <= 90 and d.name in NAMES
    assert r_path.view_name in VIEWS and abs(sum(r_path.view_probs.values()) - 1) < 1e-5
    d = json.loads(json.dumps(r_path.to_dict()))
    assert d["image_size"] == [90, 150] and len(d["detections"]) == len(r_path.detections)
    batch = model.predict_batch([img, tmp_path / "f.png"])
    same(batch[0], r_arr)
    same(batch[1], r_path)


def test_grey_and_16bit_inputs(ckpt) -> None:
    model = load_model(ckpt)
    grey = frame()[:, :, 0]
    ref = model.predict(np.repeat(grey[:, :, None], 3, axis=2))
    same(model.predict(grey), ref)
    same(model.predict(grey.astype(np.uint16) * 257), ref)  # 16-bit scaled like the data layer
    same(model.predict(Image.fromarray(grey)), ref)
    assert model.predict(grey, view_min_prob=1.01).view is None  # below the view threshold


def test_single_task_checkpoints(tmp_path) -> None:
    det = load_model(make_checkpoint(tmp_path / "d.pt", "single", tasks=("detect",)))
    r = det.predict(frame())
    assert r.view is None and r.view_probs == {} and r.detections
    cls = load_model(make_checkpoint(tmp_path / "c.pt", "single", tasks=("classify",)))
    r = cls.predict(frame())
    assert r.detections == [] and r.view_name in VIEWS


def test_folder_with_corrupt_file(ckpt, tmp_path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(frame(seed=1)).save(src / "a.png")
    Image.fromarray(frame(70, 60, seed=2)).save(src / "c.jpg")
    (src / "b.png").write_bytes(b"not an image at all")
    (src / "notes.txt").write_text("ignored")
    assert [p.name for p in resolve_sources(src)] == ["a.png", "b.png", "c.jpg"]
    assert [p.name for p in resolve_sources(str(src / "*.png"))] == ["a.png", "b.png"]
    out = tmp_path / "out"
    summary = predict_command(ckpt, src, out, conf=0.25, iou=0.6, max_det=100, imgsz=None,
                              device="cpu", save_media=True, view_min_prob=0.0)
    assert summary["skipped"] == 1 and summary["problems"][0]["file"].endswith("b.png")
    assert summary["images"] == 2 and summary["frames"] == 2
    assert "b.png" in capsys.readouterr().err
    lines = [json.loads(s) for s in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(x["source"]).name for x in lines] == ["a.png", "c.jpg"]
    assert lines[1]["image_size"] == [70, 60]
    assert (out / "a.png").is_file() and (out / "c.jpg").is_file()
    assert Image.open(out / "c.jpg").size == (60, 70)
    assert json.loads((out / "summary.json").read_text())["thresholds"]["conf"] == 0.25


def test_video(ckpt, tmp_path) -> None:
    vid = tmp_path / "clip.mp4"
    w = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (96, 96))
    for i in range(10):
        w.write(np.ascontiguousarray(frame(96, 96, seed=i)[:, :, ::-1]))
    w.release()
    (tmp_path / "broken.mp4").write_bytes(b"\x00moov" * 50)
    out = tmp_path / "out"
    summary = predict_command(ckpt, str(tmp_path / "*.mp4"), out, conf=0.25, device="cpu")
    assert summary["skipped"] == 1 and "broken.mp4" in summary["problems"][0]["file"]
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 10 and [json.loads(s)["frame"] for s in lines] == list(range(10))
    clip = summary["per_clip"][0]
    assert clip["frames"] == 10 and abs(clip["fps"] - 12.0) < 0.1
    assert clip["view"]["name"] in VIEWS and sum(clip["view"]["vote_counts"].values()) == 10
    for jet in clip["jets"].values():
        assert 1 <= jet["frames"] <= 10 and 0 < jet["max_score"] <= 1
    assert json.loads((out / "summary.json").read_text())["clips"] == 1
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 10


def write_dicom(path: Path, pixels: np.ndarray, photometric: str, bits: int = 8,
                **extra: object) -> Path:
    """A minimal ultrasound DICOM file: pixels (F, H, W[, 3]) stored natively (little endian)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # US multi-frame image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = pixels.shape[1:3]
    if pixels.shape[0] > 1:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel = 3 if pixels.ndim == 4 else 1
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 4:
        ds.PlanarConfiguration = 0
    alloc = 8 if bits <= 8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = alloc, bits, bits - 1, 0
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.uint8 if alloc == 8 else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom(ckpt, tmp_path) -> None:
    pytest.importorskip("pydicom", reason="pydicom not installed (pip install medmtl[dicom]): "
                        "DICOM reading not tested")
    from pydicom.pixels import convert_color_space

    frames = np.stack([frame(48, 64, seed=i) for i in range(3)])
    cine = write_dicom(tmp_path / "cine.dcm", frames, "RGB", FrameTime=40.0)  # 25 fps
    got = list(iter_frames(cine))
    assert len(got) == 3 and all(np.array_equal(g.image, f) for g, f in zip(got, frames, strict=True))
    ybr = convert_color_space(frames[:1], "RGB", "YBR_FULL")
    (g,) = iter_frames(write_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL"))
    assert np.abs(g.image.astype(int) - frames[0]).max() <= 3  # back to RGB
    grey12 = (frames[:1, :, :, 0].astype(np.uint16) * 16)  # 12-bit data
    (g,) = iter_frames(write_dicom(tmp_path / "m1.dcm", grey12, "MONOCHROME1", bits=12))
    expect = 255 - np.rint(grey12[0] * 255.0 / 4095).astype(int)
    assert np.abs(g.image[:, :, 0].astype(int) - expect).max() <= 1 and g.image.shape == (48, 64, 3)
    summary = predict_command(ckpt, cine, tmp_path / "out", device="cpu")
    assert summary["per_clip"][0]["frames"] == 3 and summary["per_clip"][0]["fps"] == 25.0
    assert (tmp_path / "out" / "cine.mp4").is_file()


def test_top_level_import() -> None:
    from medmtl import load_model as top

    assert top is load_model


def test_val_prints_per_class_ap_and_forward_latency(ckpt, synth_tiny: Path, tmp_path,
                                                     capsys) -> None:
    """#24.14e: `medmtl val` prints AP@0.5 per class (metrics.json detection.per_class) and the
    forward pass's mean ms per image, labelled with device, batch and threads, also recorded as
    metrics.json val_latency (32 val images at batch 8: the first batch left out, 24 timed)."""
    from medmtl.cli import main

    with pytest.raises(SystemExit) as e:
        main(["val", "--weights", str(ckpt), "--data", str(synth_tiny), "--out",
              str(tmp_path / "v"), "--batch", "8", "--workers", "0", "--device", "cpu"])
    out = capsys.readouterr().out
    assert e.value.code == 0, out
    m = json.loads((tmp_path / "v" / "metrics.json").read_text())
    pc = m["detection"]["per_class"]
    assert list(pc) == NAMES and sum(c["n_gt"] for c in pc.values()) > 0
    expected = "AP@0.5 per class: " + "  ".join(
        f"{n} {'n/a' if c['ap50'] is None else format(c['ap50'], '.3f')} ({c['n_gt']} boxes)"
        for n, c in pc.items())
    lat = m["val_latency"]
    assert {k: lat[k] for k in ("device", "batch", "images_timed", "warmup_batches_left_out",
                                "threads")} == {"device": "cpu", "batch": 8, "images_timed": 24,
                                                "warmup_batches_left_out": 1,
                                                "threads": torch.get_num_threads()}
    assert 0 < lat["forward_ms_per_image"] < 60_000
    lines = out.splitlines()
    assert lines[lines.index(expected) + 1] == (
        f"forward pass: {lat['forward_ms_per_image']:.2f} ms/image (cpu, batch 8, "
        f"{torch.get_num_threads()} threads; mean over 24 images, first batch left out)")
    # the line's format with numbers a random model does not reach
    from medmtl.cli.deploy_cmds import val_lines

    assert val_lines({"detection": {"per_class": {"AR": {"ap50": 0.41249, "n_gt": 23},
                                                  "PR": {"ap50": None, "n_gt": 0}}},
                      "val_latency": {"forward_ms_per_image": 3.456, "device": "cuda:0",
                                      "batch": 16, "threads": None, "images_timed": 16,
                                      "warmup_batches_left_out": 0}}) == [
        "AP@0.5 per class: AR 0.412 (23 boxes)  PR n/a (0 boxes)",
        "forward pass: 3.46 ms/image (cuda:0, batch 16; mean over 16 images)"]
