"""Synthetic colour-Doppler echocardiography frames in the real data set's on-disk format.

This is the built-in data of the demo and the tests: a small CNN must learn both tasks from a few
hundred frames in minutes on a CPU, so the signal is deliberately clear while the pictures still
look like colour-Doppler echo:

* a sector-shaped fan (apex at the top centre) on black, filled with smoothed, laterally
  elongated multiplicative speckle, depth attenuation and a bright near field;
* one of three views with distinct chamber layouts (dark blood pools, bright walls):
  ``A4C`` four chambers in a 2x2 arrangement (ventricles on top, pointing at the apex),
  ``PLAX`` a right-ventricle band on top, an elongated left ventricle, the aorta and the left
  atrium on the right, and a bright posterior pericardium line at the bottom,
  ``PSAX`` a round aortic ring with a dark centre and a three-cusp valve, wrapped by the RV
  outflow tract, with the pulmonary artery, right and left atrium around it;
* one regurgitation jet (rarely two): a tapered flame of turbulent, aliased colour (a mosaic of
  red / yellow / blue / cyan) starting at a valve. Its class is the valve it starts at, so it is
  decided by where it sits relative to the view's anatomy (see ``_SITES``); the dominant colour
  follows the flow direction (towards the probe: red/yellow, away: blue/cyan). The label box is
  the jet's enclosing box;
* distractors that are not labelled: smaller, smooth, dark red/blue laminar flow patches, the
  colour-box outline, depth ticks; plus random gain, depth (zoom), fan size and probe tilt.

File names are ``<patient>-unnamed_1_<clip>.mp4-<frame>``; a patient has 1-3 clips of 2-5
frames. A clip keeps its view, valve, anatomy, gain and depth; the frames vary the jet and the
speckle. Patients never cross splits. Views cycle over the clips (balanced); the jet class cycles
over the valves each view shows, which gives roughly AR 34 %, MR 30 %, TR 25 %, PR 11 %.

Every frame is drawn from its own generator, seeded by ``(seed, split, patient, clip, frame)``,
so a frame does not depend on how many frames are asked for: the same seed gives byte-identical
files and a larger set extends a smaller one. Only numpy and Pillow are used.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["NAMES", "VIEWS", "generate"]

NAMES: tuple[str, ...] = ("AR", "MR", "PR", "TR")
VIEWS: tuple[str, ...] = ("A4C", "PLAX", "PSAX")
AR, MR, PR, TR = range(4)
A4C, PLAX, PSAX = range(3)

_MARKER = "# medmtl synthetic colour-Doppler echo data set"
_SPLITS: tuple[tuple[str, int], ...] = (("train", 1), ("valid", 2), ("test", 3))
_TAG_SPLIT, _TAG_PATIENT, _TAG_CLIP, _TAG_FRAME, _TAG_DEFECT = 11, 12, 13, 14, 15
_JPEG_QUALITY = 90
_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"))
_CANON_APEX = np.array([0.5, 0.05])

# Tissue grey levels before speckle, gain and attenuation.
_BG, _WALL, _CAV, _VALVE, _PERI = 58, 150, 5, 200, 240

Pt = tuple[float, float]


@dataclass(frozen=True)
class _Site:
    """Where a jet of one class starts in one view (canonical coordinates, unit = image side)."""

    origin: Pt
    angle: float  # flow direction in degrees, image coordinates (0 = right, 90 = down)
    jitter: float  # +- degrees
    length: Pt  # range of the jet length
    width: Pt  # range of the widest part
    centred: bool = False  # jet seen en face: centre the flame on the origin


_SITES: dict[int, dict[int, _Site]] = {
    A4C: {
        MR: _Site((0.615, 0.63), 90.0, 18.0, (0.19, 0.30), (0.11, 0.18)),
        TR: _Site((0.385, 0.63), 90.0, 18.0, (0.19, 0.30), (0.11, 0.18)),
        AR: _Site((0.545, 0.57), -75.0, 14.0, (0.18, 0.28), (0.10, 0.16)),
    },
    PLAX: {
        AR: _Site((0.585, 0.44), 180.0, 16.0, (0.19, 0.30), (0.10, 0.16)),
        MR: _Site((0.62, 0.56), 55.0, 18.0, (0.18, 0.28), (0.11, 0.18)),
    },
    PSAX: {
        AR: _Site((0.50, 0.50), 0.0, 180.0, (0.14, 0.21), (0.12, 0.17), centred=True),
        TR: _Site((0.31, 0.52), 100.0, 18.0, (0.17, 0.27), (0.10, 0.16)),
        PR: _Site((0.67, 0.42), -140.0, 16.0, (0.16, 0.25), (0.10, 0.15)),
    },
}

# Jet class of successive clips of a view (the start is random per split).
_CLASS_CYCLE: dict[int, tuple[int, ...]] = {
    A4C: (MR, TR, AR, TR, MR),
    PLAX: (AR, MR),
    PSAX: (PR, AR, TR, PR, AR, TR),
}

# Normal laminar flow (not labelled): canonical centre and sign (+1 towards the probe).
_FLOWS: dict[int, tuple[tuple[float, float, int], ...]] = {
    A4C: ((0.615, 0.36, 1), (0.385, 0.40, 1), (0.66, 0.80, 1), (0.35, 0.80, -1)),
    PLAX: ((0.42, 0.47, -1), (0.52, 0.23, 1), (0.74, 0.67, 1), (0.80, 0.37, -1)),
    PSAX: ((0.45, 0.27, -1), (0.74, 0.57, -1), (0.27, 0.68, 1), (0.52, 0.77, 1)),
}


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


def _ellipse(c: Pt, a: float, b: float, angle: float = 0.0, n: int = 48) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    x, y = a * np.cos(t), b * np.sin(t)
    r = math.radians(angle)
    cr, sr = math.cos(r), math.sin(r)
    return np.stack([c[0] + cr * x - sr * y, c[1] + sr * x + cr * y], axis=1)


def _arc_band(c: Pt, r0: float, r1: float, a0: float, a1: float, n: int = 40) -> np.ndarray:
    t = np.radians(np.linspace(a0, a1, n))
    outer = np.stack([c[0] + r1 * np.cos(t), c[1] + r1 * np.sin(t)], axis=1)
    inner = np.stack([c[0] + r0 * np.cos(t), c[1] + r0 * np.sin(t)], axis=1)
    return np.concatenate([outer, inner[::-1]], axis=0)


def _tube(p0: Pt, p1: Pt, width: float) -> np.ndarray:
    d = np.array(p1, dtype=np.float64) - np.array(p0, dtype=np.float64)
    nrm = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-12) * width / 2.0
    return np.array([np.add(p0, nrm), np.add(p1, nrm), np.subtract(p1, nrm), np.subtract(p0, nrm)])


def _chamber(c: Pt, a: float, b: float, angle: float, wall: float) -> list[tuple[np.ndarray, int]]:
    return [
        (_ellipse(c, a + wall, b + wall, angle), _WALL),
        (_ellipse(c, a, b, angle), _CAV),
    ]


def _anatomy(view: int, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Polygons (canonical coordinates) and grey levels, drawn in order; per-clip jitter."""

    def j(p: Pt, s: float = 0.012) -> Pt:
        return (p[0] + float(rng.uniform(-s, s)), p[1] + float(rng.uniform(-s, s)))

    def k() -> float:
        return float(rng.uniform(0.9, 1.1))

    ops: list[tuple[np.ndarray, int]] = []
    if view == A4C:
        ops += _chamber(j((0.615, 0.38)), 0.095 * k(), 0.21 * k(), -19.0, 0.03)  # LV
        ops += _chamber(j((0.385, 0.40)), 0.085 * k(), 0.19 * k(), 18.0, 0.018)  # RV
        ops += _chamber(j((0.615, 0.745)), 0.095 * k(), 0.085 * k(), 0.0, 0.014)  # LA
        ops += _chamber(j((0.385, 0.745)), 0.09 * k(), 0.09 * k(), 0.0, 0.014)  # RA
        for x0, dx in ((0.535, 0.02), (0.695, -0.02), (0.305, 0.02), (0.465, -0.02)):
            ops.append((_tube((x0, 0.61), (x0 + dx, 0.55), 0.012), _VALVE))  # AV leaflets
    elif view == PLAX:
        ops += _chamber(j((0.52, 0.23)), 0.27 * k(), 0.055 * k(), 6.0, 0.02)  # RV
        ops += _chamber(j((0.37, 0.47)), 0.24 * k(), 0.095 * k(), -8.0, 0.035)  # LV
        ops.append((_ellipse(j((0.73, 0.40)), 0.165, 0.07, -12.0), _VALVE))  # aortic walls
        ops.append((_ellipse(j((0.73, 0.40)), 0.15, 0.05 * k(), -12.0), _CAV))  # aorta
        ops += _chamber(j((0.71, 0.63)), 0.10 * k(), 0.08 * k(), 0.0, 0.015)  # LA
        ops.append((_arc_band((0.5, -1.5), 2.29, 2.325, 74.0, 106.0), _PERI))  # pericardium
        ops.append((_tube((0.59, 0.42), (0.57, 0.47), 0.012), _VALVE))  # aortic cusps
        ops.append((_tube((0.60, 0.52), (0.55, 0.49), 0.012), _VALVE))  # mitral leaflet
    else:
        ring = j((0.50, 0.50))
        rr = 0.125 * k()
        ops.append((_arc_band(ring, 0.15, 0.235, 190.0, 335.0), _WALL))  # RVOT wall
        ops.append((_arc_band(ring, 0.165, 0.215, 195.0, 330.0), _CAV))  # RVOT
        pv = (ring[0] + 0.19 * math.cos(math.radians(330)), ring[1] - 0.19 * 0.5)
        pa_end = j((0.77, 0.63))
        ops.append((_tube(pv, pa_end, 0.085), _WALL))  # pulmonary artery wall
        ops.append((_tube(pv, pa_end, 0.058), _CAV))  # pulmonary artery
        ops += _chamber(j((0.29, 0.64)), 0.085 * k(), 0.095 * k(), 0.0, 0.015)  # RA
        ops += _chamber(j((0.50, 0.765)), 0.12 * k(), 0.065 * k(), 0.0, 0.015)  # LA
        ops.append((_ellipse(ring, rr, rr), 215))  # aortic ring
        ops.append((_ellipse(ring, rr * 0.62, rr * 0.62), _CAV))  # aortic root cavity
        for a in (90.0, 210.0, 330.0):  # three cusps ("Mercedes" sign)
            tip = (
                ring[0] + rr * 0.6 * math.cos(math.radians(a)),
                ring[1] + rr * 0.6 * math.sin(math.radians(a)),
            )
            ops.append((_tube(ring, tip, 0.008), _VALVE))
    return ops


def _flame(
    origin: Pt, angle: float, length: float, width: float, rng: np.random.Generator, centred: bool
) -> np.ndarray:
    """Tapered teardrop polygon (canonical): narrow at the valve, broad near the rounded tip."""
    n = 28
    u = np.linspace(0.0, 1.0, n)
    prof = u**0.8 * (1.0 - u) ** 0.3
    prof /= prof.max()
    wob = 1.0 + 0.18 * np.sin(2.0 * math.pi * (u * rng.uniform(1.0, 2.5) + rng.uniform()))
    half = 0.5 * width * prof * wob + 0.004
    bend = length * rng.uniform(-0.12, 0.12) * np.sin(math.pi * u)
    a = math.radians(angle)
    d = np.array([math.cos(a), math.sin(a)])
    nrm = np.array([-d[1], d[0]])
    o = np.array(origin, dtype=np.float64)
    if centred:
        o = o - d * length * 0.5
    axis = o + np.outer(u * length, d) + np.outer(bend, nrm)
    left = axis + np.outer(half, nrm)
    right = axis - np.outer(half, nrm)
    return np.concatenate([left, right[::-1]], axis=0)


# --------------------------------------------------------------------------------------------
# rendering


@dataclass(frozen=True)
class _Clip:
    view: int
    classes: tuple[int, ...]  # main jet class first
    apex_y: float
    half_angle: float
    radius: float
    zoom: float
    tilt: float
    shift: Pt
    gain: float
    anatomy: tuple[tuple[np.ndarray, int], ...]
    jets: tuple[tuple[int, Pt, float, float, float], ...]  # cls, origin, angle, length, width


def _make_clip(view: int, cls: int, rng: np.random.Generator) -> _Clip:
    sites = _SITES[view]
    jets = []
    for c in sites:
        s = sites[c]
        origin = (
            s.origin[0] + float(rng.uniform(-0.02, 0.02)),
            s.origin[1] + float(rng.uniform(-0.02, 0.02)),
        )
        jets.append(
            (
                c,
                origin,
                s.angle + float(rng.uniform(-s.jitter, s.jitter)),
                float(rng.uniform(*s.length)),
                float(rng.uniform(*s.width)),
            )
        )
    order = [cls] + [c for c in sites if c != cls]
    return _Clip(
        view=view,
        classes=tuple(order),
        apex_y=float(rng.uniform(0.03, 0.07)),
        half_angle=float(rng.uniform(38.0, 46.0)),
        radius=float(rng.uniform(0.86, 0.97)),
        zoom=float(rng.uniform(0.86, 1.08)),
        tilt=float(rng.uniform(-6.0, 6.0)),
        shift=(float(rng.uniform(-0.025, 0.025)), float(rng.uniform(-0.015, 0.02))),
        gain=float(rng.uniform(0.75, 1.3)),
        anatomy=tuple(_anatomy(view, rng)),
        jets=tuple(j for c in order for j in jets if j[0] == c),
    )


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


def _render(
    clip: _Clip, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[int, tuple[float, float, float, float]]]]:
    """One frame: RGB uint8 (size, size, 3) and [(class, (x1, y1, x2, y2) normalised)]."""
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
    draw.pieslice(fan_box(h2), 90.0 - ha, 90.0 + ha, fill=_BG)
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
        site = _SITES[clip.view][cls]
        o = (
            origin[0] + float(rng.uniform(-0.008, 0.008)),
            origin[1] + float(rng.uniform(-0.008, 0.008)),
        )
        ang = angle + float(rng.uniform(-8.0, 8.0))
        wid = width * float(rng.uniform(0.85, 1.15))
        poly = geom.pts(
            _flame(o, ang, length * float(rng.uniform(0.82, 1.15)), wid, rng, site.centred)
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

        box = _paint(rgb, poly, fan, blur, jet_velocity)
        if box is None or min(box[2] - box[0], box[3] - box[1]) < 2:
            continue
        boxes_px.append(box)
        jet_pts.append(poly)
        labels.append((cls, (box[0] / s, box[1] / s, box[2] / s, box[3] / s)))
    if not labels:  # cannot happen with the sites above; keep the contract anyway
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
    flows = _FLOWS[clip.view]
    for fi in rng.permutation(len(flows))[:n_flows]:
        fx, fy, fsign = flows[fi]
        fc = (fx + float(rng.uniform(-0.03, 0.03)), fy + float(rng.uniform(-0.03, 0.03)))
        poly = geom.pts(
            _ellipse(
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


# --------------------------------------------------------------------------------------------
# data set


def _patient_id(rng: np.random.Generator) -> str:
    return "".join(rng.choice(_ID_ALPHABET, size=12).tolist())


def _label_text(
    labels: Sequence[tuple[int, tuple[float, float, float, float]]],
    view: int,
    yolo: bool,
    with_view: bool,
) -> str:
    lines = []
    for cls, (x1, y1, x2, y2) in labels:
        if yolo:
            vals = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
        else:
            vals = (x1, y1, x2, y1, x2, y2, x1, y2)
        lines.append(" ".join([str(cls)] + [f"{min(max(v, 0.0), 1.0):.6f}" for v in vals]))
    text = "\n".join(lines) + "\n"
    if with_view:
        text += "\n" + " ".join("1" if i == view else "0" for i in range(len(VIEWS)))
    return text


def _write_split(
    root: Path,
    split: str,
    code: int,
    n: int,
    size: int,
    seed: int,
    no_view: set[int],
    used_ids: set[str],
) -> None:
    img_dir, lbl_dir = root / split / "images", root / split / "labels"
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    srng = np.random.default_rng([seed, _TAG_SPLIT, code])
    view_off = int(srng.integers(3))
    class_pos = {v: int(srng.integers(len(c))) for v, c in _CLASS_CYCLE.items()}
    count, patient, clip_no = 0, 0, 0
    while count < n:
        prng = np.random.default_rng([seed, _TAG_PATIENT, code, patient])
        pid = _patient_id(prng)
        while pid in used_ids:  # astronomically rare; stays deterministic
            pid = _patient_id(prng)
        used_ids.add(pid)
        n_clips = int(prng.integers(1, 4))
        clip_ids = sorted(prng.choice(np.arange(1, 10), size=n_clips, replace=False).tolist())
        for ci, clip_id in enumerate(clip_ids):
            if count >= n:
                break
            view = (clip_no + view_off) % 3
            cycle = _CLASS_CYCLE[view]
            cls = cycle[class_pos[view] % len(cycle)]
            class_pos[view] += 1
            clip_no += 1
            crng = np.random.default_rng([seed, _TAG_CLIP, code, patient, ci])
            clip = _make_clip(view, cls, crng)
            n_frames = int(crng.integers(2, 6))
            frames = sorted(crng.choice(np.arange(1, 60), size=n_frames, replace=False).tolist())
            for fi, frame in enumerate(frames):
                if count >= n:
                    break
                frng = np.random.default_rng([seed, _TAG_FRAME, code, patient, ci, fi])
                image, labels = _render(clip, size, frng)
                yolo = bool(frng.random() < 0.2)
                stem = f"{pid}-unnamed_1_{clip_id}.mp4-{frame}"
                Image.fromarray(image, "RGB").save(img_dir / f"{stem}.jpg", quality=_JPEG_QUALITY)
                (lbl_dir / f"{stem}.txt").write_text(
                    _label_text(labels, view, yolo, with_view=count not in no_view),
                    encoding="utf-8",
                    newline="\n",
                )
                count += 1
        patient += 1


def _prepare(out: Path, overwrite: bool) -> None:
    """Refuse to clobber data that this module did not write (unless ``overwrite``)."""
    yaml_path = out / "data.yaml"
    ours = yaml_path.is_file() and yaml_path.read_text(encoding="utf-8").startswith(_MARKER)
    existing = [out / name for name, _ in _SPLITS if (out / name).exists()]
    if (existing or yaml_path.exists()) and not (ours or overwrite):
        raise FileExistsError(
            f"{out} already holds a data set not written by medmtl synth; "
            "choose an empty folder or pass overwrite=True"
        )
    for p in existing:
        shutil.rmtree(p)
    if yaml_path.exists():
        yaml_path.unlink()


def generate(
    out: str | Path,
    n_train: int = 300,
    n_val: int = 100,
    imgsz: int = 256,
    seed: int = 0,
    n_test: int = 0,
    *,
    defects: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic data set in the real on-disk format; return the path of its data.yaml.

    ``out/{train,valid[,test]}/{images,labels}``: square ``imgsz`` JPEG frames (quality 90) and
    label files with one detection line per jet (a 4-point polygon, or for ~20 % of the files a
    plain YOLO ``cls cx cy w h`` line), a blank line, then the one-hot view line.
    ``defects=True`` drops the view line of 1-2 train files, like the real data.
    An ``out`` folder that already holds a data set written here is regenerated; any other
    existing data set there raises ``FileExistsError`` unless ``overwrite=True``.
    """
    for name, val in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("seed", seed)):
        if int(val) < 0:
            raise ValueError(f"{name} must be >= 0, got {val}")
    if imgsz < 32:
        raise ValueError(f"imgsz must be >= 32, got {imgsz}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    _prepare(root, overwrite)

    no_view: set[int] = set()
    if defects and n_train > 0:
        drng = np.random.default_rng([seed, _TAG_DEFECT])
        k = min(n_train, 1 + int(drng.integers(2)))
        no_view = {int(i) for i in drng.choice(n_train, size=k, replace=False)}
    used: set[str] = set()
    counts = {"train": n_train, "valid": n_val, "test": n_test}
    for split, code in _SPLITS:
        if split == "test" and n_test == 0:
            continue
        _write_split(
            root,
            split,
            code,
            counts[split],
            imgsz,
            seed,
            no_view if split == "train" else set(),
            used,
        )

    lines = [
        _MARKER,
        f"# generated by medmtl.data.synth: seed={seed}, imgsz={imgsz}, defects={defects}",
        "path: .",
        "train: train/images",
        "val: valid/images",
    ]
    if n_test > 0:
        lines.append("test: test/images")
    lines += [
        f"names: [{', '.join(NAMES)}]",
        f"cls_names: [{', '.join(VIEWS)}]",
    ]
    yaml_path = root / "data.yaml"
    yaml_path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
    return yaml_path
