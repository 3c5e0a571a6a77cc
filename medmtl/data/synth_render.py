"""Rendering of a synthetic colour-Doppler frame: the scene of a clip to RGB pixels and boxes.

Part of :mod:`medmtl.data.synth` (see its docstring for what the frames look like): the
colour-Doppler look-up table, the canonical-to-pixel mapping (depth zoom, probe tilt, shift),
the B-mode fan with attenuation and speckle, the aliased jets (whose pixel boxes are the
labels), the unlabelled laminar flow inside the colour box, and the scanner overlays.
:func:`render` takes a :class:`~medmtl.data.synth_scene.Clip` and the frame's own generator,
from which it draws in a fixed order (the output depends on nothing else). Only numpy and Pillow
are used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from medmtl.data.synth_scene import BG, FLOWS, SITES, Clip, Pt, ellipse, flame

__all__ = ["render"]

# The probe apex in canonical coordinates: zoom and tilt pivot about it.
_CANON_APEX = np.array([0.5, 0.05])


def _make_lut() -> np.ndarray:
    """Colour-Doppler map: velocity -1..1 -> RGB (away: blue..cyan, towards: red..yellow)."""
    anchors = np.array([-1.0, -0.75, -0.45, -0.15, 0.0, 0.15, 0.45, 0.75, 1.0])
    colours = np.array(
        [
            (150, 255, 255),
            (0, 170, 255),
            (20, 60, 235),
            (10, 10, 110),
            (0, 0, 0),
            (110, 10, 5),
            (220, 30, 15),
            (255, 150, 0),
            (255, 250, 120),
        ],
        dtype=np.float64,
    )
    v = np.linspace(-1.0, 1.0, 256)
    lut = np.stack([np.interp(v, anchors, colours[:, c]) for c in range(3)], axis=1)
    return np.round(lut).astype(np.uint8)


_LUT = _make_lut()


# --------------------------------------------------------------------------------------------
# geometry


class _Geom:
    """Maps canonical anatomy coordinates to pixels: zoom (depth) and tilt about the apex."""

    def __init__(self, size: int, apex: Pt, zoom: float, tilt_deg: float, shift: Pt) -> None:
        self.size = size
        self.apex = np.array(apex, dtype=np.float64)
        self.zoom = zoom
        t = math.radians(tilt_deg)
        self.rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        self.shift = np.array(shift, dtype=np.float64)

    def pts(self, q: np.ndarray) -> np.ndarray:
        """(N, 2) canonical -> (N, 2) pixel coordinates."""
        p = (np.asarray(q, dtype=np.float64) - _CANON_APEX) @ self.rot.T * self.zoom
        return (p + self.apex + self.shift) * self.size

    def flat(self, q: np.ndarray) -> list[float]:
        return self.pts(q).ravel().tolist()


# --------------------------------------------------------------------------------------------
# rendering


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], cell: float | tuple[float, float]
) -> np.ndarray:
    """Smooth Gaussian noise of ``shape`` (h, w): one normal sample per ``cell`` pixels (a pair:
    rows, columns), bilinear upsampling; unit variance at the sample points."""
    h, w = shape
    ch, cw = (cell, cell) if isinstance(cell, (int, float)) else cell
    low = rng.standard_normal((int(h / ch) + 2, int(w / cw) + 2), dtype=np.float32)
    return np.asarray(Image.fromarray(low, "F").resize((w, h), Image.Resampling.BILINEAR))


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


Box = tuple[int, int, int, int]


def _paint(
    rgb: np.ndarray,
    poly: np.ndarray,
    allowed: np.ndarray,
    blur: float,
    velocity: Callable[[np.ndarray], np.ndarray],
) -> Box | None:
    """Fill the pixel polygon ``poly`` (inside ``allowed``) with Doppler colours.

    ``velocity`` maps the blurred polygon mask of the crop (1 in the middle, 0 outside) to a
    velocity field in [-1, 1]. Returns the enclosing box (x1, y1, x2, y2) in pixels, or None.
    """
    s = rgb.shape[0]
    pad = int(2 * blur) + 2
    x0 = max(0, int(poly[:, 0].min()) - pad)
    y0 = max(0, int(poly[:, 1].min()) - pad)
    x1 = min(s, int(poly[:, 0].max()) + pad + 1)
    y1 = min(s, int(poly[:, 1].max()) + pad + 1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    m_img = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(m_img).polygon((poly - (x0, y0)).ravel().tolist(), fill=255)
    mask = (np.asarray(m_img) > 0) & allowed[y0:y1, x0:x1]
    ys, xs = np.nonzero(mask)
    if xs.size < 4:
        return None
    core = np.asarray(m_img.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32) / 255.0
    v = np.mod(velocity(core) + 1.0, 2.0) - 1.0  # aliasing wraps fast flow -> mosaic
    idx = np.clip(((v + 1.0) * 127.5).astype(np.int32), 0, 255)
    crop = rgb[y0:y1, x0:x1]
    crop[mask] = _LUT[idx[mask]]
    return (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)


def render(
    clip: Clip, size: int, rng: np.random.Generator, with_jets: bool = True
) -> tuple[np.ndarray, list[tuple[int, tuple[float, float, float, float]]]]:
    """One frame: RGB uint8 (size, size, 3) and [(class, (x1, y1, x2, y2) normalised)].
    ``with_jets=False``: a jet-free frame of the clip (diastole): the colour box and its laminar
    flow are drawn where the jet would be, the aliased jet is not, and the list is empty."""
    s = size
    apex = np.array([0.5, clip.apex_y])
    geom = _Geom(s, (0.5, clip.apex_y), clip.zoom, clip.tilt, clip.shift)
    ha, rad = clip.half_angle, clip.radius

    def fan_box(scale: float) -> list[float]:
        return [
            (0.5 - rad) * scale,
            (clip.apex_y - rad) * scale,
            (0.5 + rad) * scale,
            (clip.apex_y + rad) * scale,
        ]

    # B-mode tissue, drawn at half resolution and upsampled (soft edges for free)
    h2 = max(16, (s + 1) // 2)
    tissue = Image.new("L", (h2, h2), 0)
    draw = ImageDraw.Draw(tissue)
    draw.pieslice(fan_box(h2), 90.0 - ha, 90.0 + ha, fill=BG)
    for poly, level in clip.anatomy:
        draw.polygon((geom.pts(poly) * (h2 / s)).ravel().tolist(), fill=level)
    tissue = tissue.filter(ImageFilter.BoxBlur(1))

    # depth attenuation, gain and near-field clutter at half resolution, then upsampled
    c = (np.arange(h2, dtype=np.float32) + 0.5) / h2
    dx = c[None, :] - np.float32(apex[0])
    dy = c[:, None] - np.float32(apex[1])
    r = np.sqrt(dx * dx + dy * dy)
    gain = clip.gain * float(rng.uniform(0.95, 1.05))
    base = np.asarray(tissue, dtype=np.float32) * (
        gain * (1.05 - 0.5 * np.minimum(r / np.float32(rad), 1.0))
    )
    base += 90.0 * np.exp(-r / 0.045) + 6.0  # near-field clutter, noise floor
    base = np.asarray(Image.fromarray(base, "F").resize((s, s), Image.Resampling.BILINEAR))

    # multiplicative speckle: laterally elongated log-normal blobs times fine grain
    low = np.exp(0.8 * rng.standard_normal((s // 2 + 2, s // 5 + 2), dtype=np.float32))
    speckle = Image.fromarray(low, "F").resize((s, s), Image.Resampling.BILINEAR)
    grey = base * np.asarray(speckle)
    fine = rng.random((s, s), dtype=np.float32)
    fine *= 0.5
    fine += 0.75
    grey *= fine
    np.clip(grey, 0.0, 255.0, out=grey)
    fan_img = Image.new("L", (s, s), 0)
    ImageDraw.Draw(fan_img).pieslice(fan_box(s), 90.0 - ha, 90.0 + ha, fill=1)
    fan_u8 = np.asarray(fan_img)
    fan = fan_u8 > 0
    grey *= fan_u8
    g8 = grey.astype(np.uint8)
    rgb = np.stack([g8, g8, g8], axis=-1)

    # jets: the main one, sometimes a second one at another valve of the view
    n_jets = 2 if (len(clip.jets) > 1 and rng.random() < 0.05) else 1
    labels: list[tuple[int, tuple[float, float, float, float]]] = []
    boxes_px: list[Box] = []
    jet_pts: list[np.ndarray] = []
    for cls, origin, angle, length, width in clip.jets[:n_jets]:
        site = SITES[clip.view][cls]
        o = (
            origin[0] + float(rng.uniform(-0.008, 0.008)),
            origin[1] + float(rng.uniform(-0.008, 0.008)),
        )
        ang = angle + float(rng.uniform(-8.0, 8.0))
        wid = width * float(rng.uniform(0.85, 1.15))
        poly = geom.pts(
            flame(o, ang, length * float(rng.uniform(0.82, 1.15)), wid, rng, site.centred)
        )
        x0, y0 = max(0, int(poly[:, 0].min())), max(0, int(poly[:, 1].min()))
        if any(_iou((x0, y0, poly[:, 0].max(), poly[:, 1].max()), b) > 0.1 for b in boxes_px):
            continue  # a second jet must stay apart from the first
        d = np.array([math.cos(math.radians(ang)), math.sin(math.radians(ang))])
        sign = 1.0 if float(np.dot(d, apex - np.array(o))) > 0 else -1.0
        blur = max(1.0, wid * s * 0.2)

        def jet_velocity(core: np.ndarray, sign: float = sign) -> np.ndarray:
            h, w = core.shape
            noise = 0.5 * _smooth_noise(rng, (h, w), max(2.0, s / 28.0))
            noise += 0.2 * _smooth_noise(rng, (h, w), max(1.5, s / 80.0))
            return sign * (0.45 + 0.5 * core) + noise

        if not with_jets:  # the colour box still surrounds where the jet would be
            jet_pts.append(poly)
            continue
        box = _paint(rgb, poly, fan, blur, jet_velocity)
        if box is None or min(box[2] - box[0], box[3] - box[1]) < 2:
            continue
        boxes_px.append(box)
        jet_pts.append(poly)
        labels.append((cls, (box[0] / s, box[1] / s, box[2] / s, box[3] / s)))
    if not labels and with_jets:  # cannot happen with the sites above; keep the contract anyway
        raise RuntimeError("synthetic jet fell outside the fan")

    # colour box (sector) around the jets; laminar flow inside it, away from the jet boxes
    pts = np.concatenate(jet_pts, axis=0) / s - apex
    angs = np.degrees(np.arctan2(pts[:, 1], pts[:, 0]))
    rr = np.hypot(pts[:, 0], pts[:, 1])
    a0 = max(90.0 - ha, float(angs.min()) - rng.uniform(8.0, 24.0))
    a1 = min(90.0 + ha, float(angs.max()) + rng.uniform(8.0, 24.0))
    r0 = max(0.08, float(rr.min()) - rng.uniform(0.06, 0.18))
    r1 = min(rad, float(rr.max()) + rng.uniform(0.06, 0.18))
    n_flows = int(rng.integers(1, 4))
    flows = FLOWS[clip.view]
    for fi in rng.permutation(len(flows))[:n_flows]:
        fx, fy, fsign = flows[fi]
        fc = (fx + float(rng.uniform(-0.03, 0.03)), fy + float(rng.uniform(-0.03, 0.03)))
        poly = geom.pts(
            ellipse(
                fc,
                float(rng.uniform(0.03, 0.06)),
                float(rng.uniform(0.018, 0.035)),
                float(rng.uniform(0.0, 180.0)),
                n=24,
            )
        )
        fb = (poly[:, 0].min(), poly[:, 1].min(), poly[:, 0].max(), poly[:, 1].max())
        m = 0.02 * s
        if any(
            fb[0] < b[2] + m and b[0] - m < fb[2] and fb[1] < b[3] + m and b[1] - m < fb[3]
            for b in boxes_px
        ):
            continue
        allowed = _sector_mask(s, apex, fb, (a0, a1, r0, r1)) & fan

        def flow_velocity(core: np.ndarray, fsign: int = fsign) -> np.ndarray:
            return fsign * (0.18 + 0.3 * core)

        _paint(rgb, poly, allowed, max(1.0, s * 0.012), flow_velocity)

    out = Image.fromarray(rgb, "RGB")
    _overlays(out, apex, rad, ha, (a0, a1, r0, r1), rng)
    return np.asarray(out), labels


def _sector_mask(
    s: int, apex: np.ndarray, box: Sequence[float], sector: tuple[float, float, float, float]
) -> np.ndarray:
    """Full-size bool mask that is True inside the annular ``sector`` (degrees, radii) within
    ``box`` (pixels); computed on the box only."""
    a0, a1, r0, r1 = sector
    out = np.zeros((s, s), dtype=bool)
    x0, y0 = max(0, int(box[0]) - 4), max(0, int(box[1]) - 4)
    x1, y1 = min(s, int(box[2]) + 5), min(s, int(box[3]) + 5)
    if x1 <= x0 or y1 <= y0:
        return out
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5) / s - np.float32(apex[0])
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5) / s - np.float32(apex[1])
    dxg, dyg = np.meshgrid(xs, ys)
    rr = np.hypot(dxg, dyg)
    th = np.degrees(np.arctan2(dyg, dxg))
    out[y0:y1, x0:x1] = (th >= a0) & (th <= a1) & (rr >= r0) & (rr <= r1)
    return out


def _overlays(
    img: Image.Image,
    apex: np.ndarray,
    rad: float,
    ha: float,
    roi: tuple[float, float, float, float],
    rng: np.random.Generator,
) -> None:
    """Colour-box outline, depth ticks on the left fan edge, orientation marker."""
    s = img.size[0]
    d = ImageDraw.Draw(img)
    a0, a1, r0, r1 = roi
    w = max(1, s // 256)
    col = (170, 170, 170)

    def at(a: float | np.ndarray, r: float) -> list[float]:
        t = np.radians(np.atleast_1d(a))
        xy = np.stack([apex[0] + r * np.cos(t), apex[1] + r * np.sin(t)], axis=1) * s
        return xy.ravel().tolist()

    for a in (a0, a1):
        d.line(at(a, r0) + at(a, r1), fill=col, width=w)
    for rr in (r0, r1):
        d.line(at(np.linspace(a0, a1, 24), rr), fill=col, width=w)
    edge = 90.0 + ha + 2.5
    for k, depth in enumerate(np.arange(0.1, rad, 0.1)):
        x, y = at(edge, float(depth))
        t = max(1.0, s * (0.012 if k % 5 == 4 else 0.006))
        d.ellipse([x - t, y - t, x + t, y + t], fill=(200, 200, 200))
    x, y = (0.5 + 0.06) * s, (apex[1] + 0.01) * s
    h = max(2.0, s * 0.025)
    d.line([(x, y), (x + h / 2, y + h), (x + h, y)], fill=(230, 200, 40), width=w)
    if rng.random() < 0.5:  # depth-marker triangle on the left, like many scanners
        tx, ty = 0.12 * s, 0.3 * s
        d.polygon([(tx, ty - h / 2), (tx + h * 0.8, ty), (tx, ty + h / 2)], fill=(230, 200, 40))
