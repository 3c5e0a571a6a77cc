"""Decoding, letterbox (exact, invertible box mapping) and box-consistent augmentations.

Geometry convention: box coordinates are continuous pixel coordinates whose origin is the image's
top-left *corner* (pixel ``i`` covers ``[i, i + 1)``). The letterbox maps
``x_lb = x * scale + pad_x`` exactly: the resize uses the given ``scale`` (not the rounded output
size) and the pads are whole pixels, so `unletterbox_boxes` is the exact inverse.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
from PIL import Image, ImageOps

from medmtl.data.dataset_yaml import DataError
from medmtl.data.images import exif_rotated

PAD_VALUE = 114
BoxT = TypeVar("BoxT")  # np.ndarray or torch.Tensor, (..., 4) xyxy
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def to_rgb_uint8(im: Image.Image) -> np.ndarray:
    """Any PIL image -> (H, W, 3) uint8 RGB. 16-bit data is scaled (``v / 257``), never clipped."""
    if im.mode in _SIXTEEN_BIT:  # "I" is taken as 16-bit data, the way PIL opens 16-bit PNG/TIFF
        a = np.asarray(im).astype(np.float32)
        a = np.rint(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float32)
        a = a * 255.0 if np.nanmax(a) <= 1.0 else a
        a = np.rint(np.clip(np.nan_to_num(a), 0, 255)).astype(np.uint8)
    else:
        a = np.asarray(im.convert("RGB") if im.mode != "RGB" else im, dtype=np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a)


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB (PNG, JPEG, BMP, TIFF, grey/colour, 8/16-bit),
    EXIF orientation applied. A file that does not decode raises `DataError` naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            if exif_rotated(im) or _exif_orientation(im) not in (0, 1):
                return to_rgb_uint8(ImageOps.exif_transpose(im))
            return to_rgb_uint8(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: "
                        f"{str(e)[:200]})") from e


def _exif_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 -- a broken EXIF block: no orientation
        return 1


def letterbox_params(h: int, w: int, imgsz: int) -> tuple[float, float, float, int, int]:
    """``(scale, pad_x, pad_y, new_w, new_h)`` of the letterbox of an ``h`` x ``w`` image."""
    scale = min(imgsz / h, imgsz / w)
    if scale == 1.0:
        nw, nh = w, h
    else:  # OpenCV's size for fx/fy: round half to even of the double product, like round()
        nw, nh = max(1, min(imgsz, round(w * scale))), max(1, min(imgsz, round(h * scale)))
    return float(scale), float((imgsz - nw) // 2), float((imgsz - nh) // 2), nw, nh


def letterbox(img: np.ndarray, imgsz: int) -> tuple[np.ndarray, float, float, float]:
    """Resize keeping aspect into a centred ``imgsz`` square padded with 114.

    Returns ``(out, scale, pad_x, pad_y)`` with ``x_lb = x * scale + pad_x`` exactly.
    """
    h, w = img.shape[:2]
    scale, pad_x, pad_y, nw, nh = letterbox_params(h, w, imgsz)
    if scale == 1.0:
        resized = img
    elif round(w * scale) >= 1 and round(h * scale) >= 1:
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        # fx/fy (no dsize): OpenCV samples with exactly this scale, whatever the rounded size
        resized = cv2.resize(img, None, fx=scale, fy=scale, interpolation=interp)
    else:  # degenerate thin image: fall back to an explicit size
        resized = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    if resized.ndim == 2 and img.ndim == 3:
        resized = resized[:, :, None]
    nh, nw = min(nh, resized.shape[0]), min(nw, resized.shape[1])
    out = np.full((imgsz, imgsz, *img.shape[2:]), PAD_VALUE, dtype=img.dtype)
    y0, x0 = int(pad_y), int(pad_x)
    out[y0:y0 + nh, x0:x0 + nw] = resized[:nh, :nw]
    return out, scale, pad_x, pad_y


def letterbox_boxes(boxes: BoxT, scale: float, pad_x: float, pad_y: float) -> BoxT:
    """xyxy original pixels -> letterboxed pixels (numpy array or torch tensor, new object)."""
    out = boxes * scale  # type: ignore[operator]
    out[..., 0::2] += pad_x
    out[..., 1::2] += pad_y
    return out


def unletterbox_boxes(boxes: BoxT, scale: float, pad_x: float, pad_y: float,
                      orig_hw: tuple[int, int]) -> BoxT:
    """Inverse of `letterbox_boxes`, clipped to the original image ``(h, w)``."""
    out = boxes * 1.0  # type: ignore[operator]
    out[..., 0::2] = ((out[..., 0::2] - pad_x) / scale).clip(0, orig_hw[1])
    out[..., 1::2] = ((out[..., 1::2] - pad_y) / scale).clip(0, orig_hw[0])
    return out


def clip_filter_boxes(boxes: np.ndarray, classes: np.ndarray, width: int, height: int,
                      min_px: float = 2.0, min_area_frac: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Clip to the image; drop boxes narrower/shorter than ``min_px`` or keeping < ``min_area_frac``
    of their (transformed, unclipped) area. Used after augmentation only."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4).astype(np.float32), classes.reshape(0).astype(np.int64)
    area0 = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    b = boxes.copy()
    b[:, 0::2] = b[:, 0::2].clip(0, width)
    b[:, 1::2] = b[:, 1::2].clip(0, height)
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    keep = (bw >= min_px) & (bh >= min_px) & (bw * bh >= min_area_frac * np.maximum(area0, 1e-9))
    return b[keep].astype(np.float32), classes[keep].astype(np.int64)


def random_affine(img: np.ndarray, boxes: np.ndarray, classes: np.ndarray, rng: np.random.Generator,
                  scale: float, translate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random zoom about the centre in ``[1 - scale, 1 + scale]`` and shift of up to
    ``translate * size``; boxes follow exactly, then are clipped and filtered."""
    h, w = img.shape[:2]
    r = float(rng.uniform(1 - scale, 1 + scale))
    tx = float(rng.uniform(-translate, translate)) * w
    ty = float(rng.uniform(-translate, translate)) * h
    bx, by = (1 - r) * w / 2 + tx, (1 - r) * h / 2 + ty  # corner coords: u' = r * u + b
    # OpenCV maps pixel centres: (u' - .5) = r (u - .5) + t  ->  t = b + .5 (r - 1)
    m = np.array([[r, 0, bx + 0.5 * (r - 1)], [0, r, by + 0.5 * (r - 1)]], dtype=np.float64)
    out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=(PAD_VALUE, PAD_VALUE, PAD_VALUE))
    nb = boxes.astype(np.float64) * r
    nb[:, 0::2] += bx
    nb[:, 1::2] += by
    b, c = clip_filter_boxes(nb, classes, w, h)
    return out, b, c


def hflip(img: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = img.shape[1]
    out = np.ascontiguousarray(img[:, ::-1])
    b = boxes.copy()
    b[:, 0], b[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return out, b


def augment_colour(img: np.ndarray, rng: np.random.Generator, hsv_h: float = 0.0,
                   hsv_s: float = 0.0, hsv_v: float = 0.0, brightness: float = 0.0,
                   contrast: float = 0.0) -> np.ndarray:
    """HSV gains (hue shift in fractions of the hue circle), then brightness/contrast, via LUTs."""
    x = np.arange(256, dtype=np.float32)
    if hsv_h > 0 or hsv_s > 0 or hsv_v > 0:
        dh = float(rng.uniform(-hsv_h, hsv_h)) * 180.0
        gs = float(rng.uniform(1 - hsv_s, 1 + hsv_s))
        gv = float(rng.uniform(1 - hsv_v, 1 + hsv_v))
        hch, sch, vch = cv2.split(cv2.cvtColor(img, cv2.COLOR_RGB2HSV))
        lut_h = np.mod(np.rint(x + dh), 180).astype(np.uint8)
        lut_s = np.clip(np.rint(x * gs), 0, 255).astype(np.uint8)
        lut_v = np.clip(np.rint(x * gv), 0, 255).astype(np.uint8)
        hsv = cv2.merge((cv2.LUT(hch, lut_h), cv2.LUT(sch, lut_s), cv2.LUT(vch, lut_v)))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if brightness > 0 or contrast > 0:
        c = float(rng.uniform(1 - contrast, 1 + contrast))
        b = float(rng.uniform(-brightness, brightness)) * 255.0
        lut = np.clip(np.rint((x - 128.0) * c + 128.0 + b), 0, 255).astype(np.uint8)
        img = cv2.LUT(img, lut)
    return img


def mosaic4(tiles: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2x2 mosaic of four letterboxed (S, S, 3) images, each shrunk by half into one quadrant."""
    s = tiles[0][0].shape[0]
    half = s // 2
    canvas = np.full((s, s, 3), PAD_VALUE, dtype=np.uint8)
    all_b, all_c = [], []
    for k, (im, b, c) in enumerate(tiles[:4]):
        small = cv2.resize(im, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        ox, oy = (k % 2) * half, (k // 2) * half
        hh, ww = min(small.shape[0], s - oy), min(small.shape[1], s - ox)
        canvas[oy:oy + hh, ox:ox + ww] = small[:hh, :ww]
        nb = b.astype(np.float64) * 0.5
        nb[:, 0::2] += ox
        nb[:, 1::2] += oy
        all_b.append(nb)
        all_c.append(c)
    b, c = clip_filter_boxes(np.concatenate(all_b).reshape(-1, 4), np.concatenate(all_c), s, s)
    return canvas, b, c
