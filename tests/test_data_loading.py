"""Decoding, letterbox geometry, MTLDataset + collate, augmentation keeping boxes on their content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from medmtl.config import AugmentConfig
from medmtl.data import (
    MTLDataset,
    build_dataloader,
    collate,
    letterbox,
    letterbox_boxes,
    load_data_yaml,
    load_image,
    scan_split,
    unletterbox_boxes,
)
from medmtl.data.transforms import PAD_VALUE

NO_COLOUR = {"hsv_s": 0.0, "hsv_v": 0.0, "brightness": 0.0, "contrast": 0.0}


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 900), w=st.integers(1, 900), imgsz=st.integers(16, 1024),
       raw=st.lists(st.tuples(*[st.floats(0, 1, allow_subnormal=False)] * 4), min_size=1,
                    max_size=5))
def test_letterbox_box_round_trip(h: int, w: int, imgsz: int, raw: list) -> None:
    img = np.zeros((h, w, 3), np.uint8)
    out, scale, px, py = letterbox(img, imgsz)
    assert out.shape == (imgsz, imgsz, 3)
    r = np.asarray(raw, np.float64)
    boxes = np.stack([np.minimum(r[:, 0], r[:, 2]) * w, np.minimum(r[:, 1], r[:, 3]) * h,
                      np.maximum(r[:, 0], r[:, 2]) * w, np.maximum(r[:, 1], r[:, 3]) * h], 1)
    lb = letterbox_boxes(boxes, scale, px, py)
    assert lb.min() >= -1e-6 and lb.max() <= imgsz + 1e-6
    back = unletterbox_boxes(lb, scale, px, py, (h, w))
    np.testing.assert_allclose(back, boxes, atol=1e-3)
    t = unletterbox_boxes(letterbox_boxes(torch.from_numpy(boxes), scale, px, py), scale, px, py, (h, w))
    np.testing.assert_allclose(t.numpy(), boxes, atol=1e-3)


@pytest.mark.parametrize(("h", "w", "imgsz"), [(320, 430, 320), (556, 800, 256), (30, 20, 64)])
def test_letterbox_image_matches_box_mapping(h: int, w: int, imgsz: int) -> None:
    img = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = w // 4, h // 3, w // 4 + w // 3, h // 3 + h // 3
    img[y1:y2, x1:x2] = 255
    out, scale, px, py = letterbox(img, imgsz)
    assert (out[: int(py), :] == PAD_VALUE).all() and (out[:, : int(px)] == PAD_VALUE).all()
    bx = letterbox_boxes(np.array([[x1, y1, x2, y2]], np.float64), scale, px, py)[0]
    mass = out[..., 0].astype(np.float64) / 255.0
    mass[out[..., 0] == PAD_VALUE] = 0
    ys, xs = np.mgrid[0:imgsz, 0:imgsz] + 0.5  # pixel centres, corner-origin coordinates
    cx, cy = (mass * xs).sum() / mass.sum(), (mass * ys).sum() / mass.sum()
    assert abs(cx - (bx[0] + bx[2]) / 2) < 0.2 and abs(cy - (bx[1] + bx[3]) / 2) < 0.2
    assert abs(mass.sum() - (bx[2] - bx[0]) * (bx[3] - bx[1])) < 0.02 * mass.sum() + 2


def test_decode_16bit_grey_8bit_grey_and_colour(tmp_path: Path) -> None:
    v16 = np.array([[0, 257, 32896], [65535, 65280, 128]], np.uint16)
    Image.fromarray(v16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    a = load_image(tmp_path / "g16.png")
    assert a.shape == (2, 3, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a[..., 0], [[0, 1, 128], [255, 254, 0]])
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    v8 = np.array([[0, 7, 200]], np.uint8)
    for ext in ("png", "bmp"):
        Image.fromarray(v8, "L").save(tmp_path / f"g8.{ext}")
        np.testing.assert_array_equal(load_image(tmp_path / f"g8.{ext}"), np.repeat(v8[..., None], 3, 2))
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    assert load_image(tmp_path / "c.png")[0, 0].tolist() == [200, 0, 0]


# --- MTLDataset ----------------------------------------------------------------------------------

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def _dataset_yaml(root: Path, n: int = 6) -> Path:
    """n images of varying size, each with a coloured rectangle (colour = class) and its box;
    image 1 has no view line, image 2 no box."""
    for s in ("train", "val"):
        (root / s / "images").mkdir(parents=True, exist_ok=True)
        (root / s / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = (96, 64) if i % 2 else (50, 80)
        img = np.zeros((h, w, 3), np.uint8)
        c = i % 4
        x1, y1 = int(rng.integers(5, w // 2)), int(rng.integers(5, h // 2))
        x2, y2 = x1 + int(rng.integers(10, w // 2 - 2)), y1 + int(rng.integers(10, h // 2 - 2))
        img[y1:y2, x1:x2] = COLOURS[c]
        Image.fromarray(img).save(root / "train" / "images" / f"p{i}-x.png")
        box = f"{c} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}\n"
        view = "" if i == 1 else f"\n{' '.join('1' if k == i % 3 else '0' for k in range(3))}\n"
        (root / "train" / "labels" / f"p{i}-x.txt").write_text(("" if i == 2 else box) + view)
    y = root / "data.yaml"
    y.write_text(yaml.safe_dump({"path": ".", "train": "train/images", "val": "val/images",
                                 "names": ["a", "b", "c", "d"], "cls_names": ["u", "v", "w"]}))
    return y


def _records(root: Path, n: int = 6) -> list:
    return scan_split(load_data_yaml(_dataset_yaml(root, n)), "train").records


def test_dataset_collate_val(tmp_path: Path) -> None:
    recs = _records(tmp_path)
    ds = MTLDataset(recs, 64, train=False, augment=AugmentConfig(), cache=False)
    batch = collate([ds[i] for i in range(4)])
    assert batch["images"].shape == (4, 3, 64, 64) and batch["images"].dtype == torch.uint8
    assert batch["boxes"].shape == (4, 1, 4) and batch["boxes"].dtype == torch.float32
    assert batch["box_classes"].dtype == torch.int64 and batch["box_mask"].dtype == torch.bool
    assert batch["box_mask"][:, 0].tolist() == [True, True, False, True]
    assert batch["det_mask"].tolist() == [True, True, False, True]
    assert batch["view"].tolist() == [0, -1, 2, 0] and batch["view"].dtype == torch.int64
    assert batch["view_mask"].tolist() == [True, False, True, True]
    m = batch["meta"][1]
    assert m["image_id"] == 1 and m["orig_size"] == (64, 96) and Path(m["path"]).name == "p1-x.png"
    scale, px, py = m["letterbox"]
    back = unletterbox_boxes(batch["boxes"][1], scale, px, py, m["orig_size"])
    np.testing.assert_allclose(back.numpy(), recs[1].boxes, atol=1e-4)
    cached = MTLDataset(recs, 64, train=False, augment=None, cache=True)
    for i in range(len(recs)):
        a, b = ds[i], cached[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])
        assert a["meta"] == b["meta"]
    empty = collate([ds[2]])
    assert empty["boxes"].shape == (1, 0, 4) and not empty["det_mask"].any()


def _inside_fraction(img: np.ndarray, box: np.ndarray, colour: tuple[int, int, int]) -> tuple[float, float]:
    """(fraction of the colour's pixels inside the box grown by 1.5 px, fraction of the box's
    inner area covered by the colour)."""
    hit = np.all(np.abs(img.astype(int) - colour) < 60, axis=2)
    ys, xs = np.nonzero(hit)
    x1, y1, x2, y2 = box
    inside = (xs + 0.5 >= x1 - 1.5) & (xs + 0.5 <= x2 + 1.5) & (ys + 0.5 >= y1 - 1.5) & (ys + 0.5 <= y2 + 1.5)
    core = hit[int(np.ceil(y1 + 1)):int(y2 - 1), int(np.ceil(x1 + 1)):int(x2 - 1)]
    return float(inside.mean()) if len(xs) else 1.0, float(core.mean()) if core.size else 1.0


@pytest.mark.parametrize("aug", [
    {"scale": 0.4, "translate": 0.2, "fliplr": 0.5, **NO_COLOUR},
    {"scale": 0.2, "translate": 0.1, "mosaic": 1.0, **NO_COLOUR},
])
def test_augmented_boxes_cover_their_content(tmp_path: Path, aug: dict) -> None:
    ds = MTLDataset(_records(tmp_path), 96, train=True, augment=AugmentConfig(**aug), cache=True)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            img = s["image"].permute(1, 2, 0).numpy()
            assert img.dtype == np.uint8 and img.shape == (96, 96, 3)
            for box, c in zip(s["boxes"].numpy(), s["box_classes"].tolist(), strict=True):
                if aug.get("mosaic"):  # other tiles may hold the same colour: check coverage only
                    assert _inside_fraction(img, box, COLOURS[c])[1] > 0.9
                else:
                    outside, cover = _inside_fraction(img, box, COLOURS[c])
                    assert outside > 0.99 and cover > 0.9, (epoch, i, box)


def test_augmentation_deterministic_and_colour_jitter(tmp_path: Path) -> None:
    recs = _records(tmp_path, 3)
    cfg = AugmentConfig(mosaic=0.5, fliplr=0.5)
    a = MTLDataset(recs, 64, train=True, augment=cfg, seed=3)
    b = MTLDataset(recs, 64, train=True, augment=cfg, seed=3, cache=True)
    for i in range(3):
        sa, sb = a[i], b[i]
        assert torch.equal(sa["image"], sb["image"]) and torch.equal(sa["boxes"], sb["boxes"])
    a.set_epoch(1)
    assert any(not torch.equal(a[i]["image"], b[i]["image"]) for i in range(3))
    plain = MTLDataset(recs, 64, train=False, augment=cfg)
    assert not torch.equal(plain[0]["image"], a[0]["image"])


def test_build_dataloader_workers_match_main_process(tmp_path: Path) -> None:
    recs = _records(tmp_path, 4)
    ds = MTLDataset(recs, 32, train=True, augment=AugmentConfig(), cache=True, seed=1)
    loaders = [build_dataloader(ds, 2, shuffle=True, workers=w, seed=5, pin_memory=False)
               for w in (0, 1)]
    assert loaders[1].persistent_workers and not loaders[0].persistent_workers
    seen: list[dict[tuple[int, int], torch.Tensor]] = []
    for loader in loaders:  # the shuffle order may differ with workers; the samples may not
        out = {}
        for epoch in range(2):
            ds.set_epoch(epoch)  # persistent workers read it from shared memory
            for b in loader:
                for img, m in zip(b["images"], b["meta"], strict=True):
                    out[(epoch, m["image_id"])] = img.clone()
        seen.append(out)
    assert seen[0].keys() == seen[1].keys() and len(seen[0]) == 8
    assert all(torch.equal(seen[0][k], seen[1][k]) for k in seen[0])
    assert not torch.equal(seen[0][(0, 0)], seen[0][(1, 0)])


def test_random_affine_is_sub_pixel_exact() -> None:
    from medmtl.data.transforms import random_affine

    img = np.full((80, 80, 3), PAD_VALUE, np.uint8)  # background = border: only the box has mass
    img[30:44, 20:50] = 255
    box = np.array([[20, 30, 50, 44]], np.float32)
    ys, xs = np.mgrid[0:80, 0:80] + 0.5
    for seed in range(5):
        out, b, _ = random_affine(img, box, np.zeros(1, np.int64), np.random.default_rng(seed),
                                  0.4, 0.1)
        m = (out[..., 0].astype(np.float64) - PAD_VALUE) / (255 - PAD_VALUE)
        area = (b[0, 2] - b[0, 0]) * (b[0, 3] - b[0, 1])
        assert abs(m.sum() - area) < 0.03 * area
        cx, cy = (m * xs).sum() / m.sum(), (m * ys).sum() / m.sum()
        assert abs(cx - (b[0, 0] + b[0, 2]) / 2) < 0.1 and abs(cy - (b[0, 1] + b[0, 3]) / 2) < 0.1
