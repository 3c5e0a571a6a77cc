"""The scene of a synthetic colour-Doppler frame, in canonical coordinates.

Part of :mod:`medmtl.data.synth` (see its docstring for what the frames look like): the box
classes and views, the tissue grey levels, where each valve's regurgitation jet starts in each
view (``SITES``), the laminar-flow spots (``FLOWS``), the chamber polygons of each view, the
flame-shaped jet outline, and :func:`make_clip`, which draws everything a clip keeps fixed.
Canonical coordinates have unit = image side, the probe apex near (0.5, 0.05), and are mapped to
pixels (zoom, tilt, shift) by :mod:`medmtl.data.synth_render`. Only numpy is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "A4C",
    "AR",
    "BG",
    "FLOWS",
    "MR",
    "NAMES",
    "PLAX",
    "PR",
    "PSAX",
    "SITES",
    "TR",
    "VIEWS",
    "Clip",
    "Pt",
    "Site",
    "ellipse",
    "flame",
    "make_clip",
]

NAMES: tuple[str, ...] = ("AR", "MR", "PR", "TR")
VIEWS: tuple[str, ...] = ("A4C", "PLAX", "PSAX")
AR, MR, PR, TR = range(4)
A4C, PLAX, PSAX = range(3)

# Tissue grey levels before speckle, gain and attenuation: the fan's background tissue (``BG``,
# drawn by the renderer), walls, blood pools, valves and pericardium.
BG, _WALL, _CAV, _VALVE, _PERI = 58, 150, 5, 200, 240

Pt = tuple[float, float]


@dataclass(frozen=True)
class Site:
    """Where a jet of one class starts in one view (canonical coordinates, unit = image side)."""

    origin: Pt
    angle: float  # flow direction in degrees, image coordinates (0 = right, 90 = down)
    jitter: float  # +- degrees
    length: Pt  # range of the jet length
    width: Pt  # range of the widest part
    centred: bool = False  # jet seen en face: centre the flame on the origin


SITES: dict[int, dict[int, Site]] = {
    A4C: {
        MR: Site((0.615, 0.63), 90.0, 18.0, (0.19, 0.30), (0.11, 0.18)),
        TR: Site((0.385, 0.63), 90.0, 18.0, (0.19, 0.30), (0.11, 0.18)),
        AR: Site((0.545, 0.57), -75.0, 14.0, (0.18, 0.28), (0.10, 0.16)),
    },
    PLAX: {
        AR: Site((0.585, 0.44), 180.0, 16.0, (0.19, 0.30), (0.10, 0.16)),
        MR: Site((0.62, 0.56), 55.0, 18.0, (0.18, 0.28), (0.11, 0.18)),
    },
    PSAX: {
        AR: Site((0.50, 0.50), 0.0, 180.0, (0.14, 0.21), (0.12, 0.17), centred=True),
        TR: Site((0.31, 0.52), 100.0, 18.0, (0.17, 0.27), (0.10, 0.16)),
        PR: Site((0.67, 0.42), -140.0, 16.0, (0.16, 0.25), (0.10, 0.15)),
    },
}

# Normal laminar flow (not labelled): canonical centre and sign (+1 towards the probe).
FLOWS: dict[int, tuple[tuple[float, float, int], ...]] = {
    A4C: ((0.615, 0.36, 1), (0.385, 0.40, 1), (0.66, 0.80, 1), (0.35, 0.80, -1)),
    PLAX: ((0.42, 0.47, -1), (0.52, 0.23, 1), (0.74, 0.67, 1), (0.80, 0.37, -1)),
    PSAX: ((0.45, 0.27, -1), (0.74, 0.57, -1), (0.27, 0.68, 1), (0.52, 0.77, 1)),
}


# --------------------------------------------------------------------------------------------
# geometry and anatomy


def ellipse(c: Pt, a: float, b: float, angle: float = 0.0, n: int = 48) -> np.ndarray:
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
        (ellipse(c, a + wall, b + wall, angle), _WALL),
        (ellipse(c, a, b, angle), _CAV),
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
        ops.append((ellipse(j((0.73, 0.40)), 0.165, 0.07, -12.0), _VALVE))  # aortic walls
        ops.append((ellipse(j((0.73, 0.40)), 0.15, 0.05 * k(), -12.0), _CAV))  # aorta
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
        ops.append((ellipse(ring, rr, rr), 215))  # aortic ring
        ops.append((ellipse(ring, rr * 0.62, rr * 0.62), _CAV))  # aortic root cavity
        for a in (90.0, 210.0, 330.0):  # three cusps ("Mercedes" sign)
            tip = (
                ring[0] + rr * 0.6 * math.cos(math.radians(a)),
                ring[1] + rr * 0.6 * math.sin(math.radians(a)),
            )
            ops.append((_tube(ring, tip, 0.008), _VALVE))
    return ops


def flame(
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
# one clip


@dataclass(frozen=True)
class Clip:
    """What every frame of a clip shares: view, jets (main one first), probe and anatomy."""

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


def make_clip(view: int, cls: int, rng: np.random.Generator) -> Clip:
    """Draw a clip of ``view`` whose main jet has class ``cls`` (the view's other valves get a
    jet too, used for the rare second jet of a frame)."""
    sites = SITES[view]
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
    return Clip(
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
