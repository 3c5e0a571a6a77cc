"""Draw a `FrameResult` on its image with PIL: one coloured box per jet with "name score", and the
view with its probability in the bottom-left corner (`medmtl.inference.writers` saves the result)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medmtl.inference.results import FrameResult

# colour per detection class index (RGB), repeated when there are more classes
PALETTE = [(255, 64, 64), (64, 160, 255), (255, 200, 0), (80, 220, 100), (200, 90, 255),
           (255, 128, 0), (0, 220, 220), (255, 90, 180)]


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


Rect = tuple[float, float, float, float]


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str,
           fill: tuple[int, int, int], font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
           img_hw: tuple[int, int], above: bool = True, taken: list[Rect] | None = None) -> Rect:
    """Text on a filled box, placed above ``xy`` (or below when it would leave the image). With
    ``taken`` (the labels already drawn), moved down a line at a time until it covers none, so
    labels of overlapping boxes stay legible; returns where it went."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    tw, th = x1 - x0 + 4, y1 - y0 + 4
    x = min(max(0.0, xy[0]), max(0.0, img_hw[1] - tw))
    y = xy[1] - th if above else xy[1]
    if y < 0:
        y = xy[1] if above else 0
    y = min(y, max(0.0, img_hw[0] - th))
    if taken:
        start = y
        while any(_overlaps((x, y, x + tw, y + th), r) for r in taken):
            y += th
            if y + th > img_hw[0]:  # no room below: take the first free slot above, else stay
                y = next((c for c in (start - k * th for k in range(1, 50)) if c >= 0 and
                          not any(_overlaps((x, c, x + tw, c + th), r) for r in taken)), start)
                break
    draw.rectangle((x, y, x + tw, y + th), fill=fill)
    lum = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    draw.text((x + 2 - x0, y + 2 - y0), text, fill=(0, 0, 0) if lum > 140 else (255, 255, 255),
              font=font)
    if taken is not None:
        taken.append((x, y, x + tw, y + th))
    return (x, y, x + tw, y + th)


def annotate(image: np.ndarray, result: FrameResult, line_width: int | None = None,
             font_size: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> a copy with the detections and the view drawn on it."""
    h, w = image.shape[:2]
    side = min(h, w)
    lw = line_width or max(1, round(side / 300))
    font = _font(font_size or max(9, round(side / 28)))
    im = Image.fromarray(np.ascontiguousarray(image[:, :, :3]), "RGB")
    draw = ImageDraw.Draw(im)
    dets = sorted(result.detections, key=lambda d: d.score)  # best on top
    for d in dets:
        x1, y1, x2, y2 = d.box
        draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)),
                       outline=PALETTE[d.cls % len(PALETTE)], width=lw)
    taken: list[Rect] = []
    for d in reversed(dets):  # labels after every box, the best placed first: none covers another
        _label(draw, (d.box[0], d.box[1]), f"{d.name} {d.score:.2f}", PALETTE[d.cls % len(PALETTE)],
               font, (h, w), taken=taken)
    if result.view_probs:
        if result.view_name is not None:
            text = f"view {result.view_name} {result.view_probs[result.view_name]:.2f}"
        else:
            best = max(result.view_probs, key=lambda k: result.view_probs[k])
            text = f"view ? ({best} {result.view_probs[best]:.2f})"
        _label(draw, (0, h), text, (32, 32, 32), font, (h, w))  # bottom-left corner
    return np.asarray(im)
