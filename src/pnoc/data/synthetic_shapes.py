"""The look of the synthetic dataset's world: class silhouettes, textures and marks.

Every class is a body with a class-specific silhouette, a shared body texture and a small mark
in a class-specific saturated colour and pattern; every class also owns a muted background
texture. All of it is a fixed function of the class index: the same world for any dataset seed.
"""

from __future__ import annotations

import colorsys
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

#: Foreground class names in order; a dataset with K classes uses the first K.
CLASS_NAMES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "ellipse",
    "cross", "hexagon", "ring", "crescent", "heart",
    "diamond", "ell", "tee", "arrow", "semicircle",
    "sparkle", "trapezoid", "hourglass", "pentagon", "capsule",
)  # fmt: skip
MAX_CLASSES = len(CLASS_NAMES)

# Shared body appearance: a warm tan "scales" texture, identical for every class.
_BODY_A = np.array([178, 148, 112], dtype=np.float32)
_BODY_B = np.array([122, 98, 74], dtype=np.float32)
_BODY_PERIOD = 5.0  # px


# --- silhouettes --------------------------------------------------------------------------------
# A shape is a vectorised predicate on local coordinates (u, v): arrays of the same shape, in
# units of the body radius, already rotated into the object's frame. Each fits in about [-1, 1]².

ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _polygon(vertices: Sequence[tuple[float, float]]) -> ShapeFn:
    """Even–odd point-in-polygon test, vectorised over points (loop over the few edges)."""
    verts = [(float(x), float(y)) for x, y in vertices]

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        result = np.zeros(np.shape(u), dtype=bool)
        x0, y0 = verts[-1]
        for x1, y1 in verts:
            if y1 != y0:
                crosses = (y1 > v) != (y0 > v)
                x_at = x0 + (v - y0) * ((x1 - x0) / (y1 - y0))
                result ^= crosses & (u < x_at)
            x0, y0 = x1, y1
        return result

    return inside


def _regular(n: int, radius: float) -> list[tuple[float, float]]:
    return [
        (radius * math.cos(-math.pi / 2 + 2 * math.pi * i / n),
         radius * math.sin(-math.pi / 2 + 2 * math.pi * i / n))
        for i in range(n)
    ]  # fmt: skip


def _star(points: int, outer: float, inner: float) -> list[tuple[float, float]]:
    out = []
    for i in range(2 * points):
        r = outer if i % 2 == 0 else inner
        a = -math.pi / 2 + math.pi * i / points
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x = u * 1.15
    y = -v * 1.15 + 0.1
    return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0


SHAPES: dict[str, ShapeFn] = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8),
    "triangle": _polygon(_regular(3, 1.1)),
    "star": _polygon(_star(5, 1.1, 0.45)),
    "ellipse": lambda u, v: u * u + (v / 0.55) ** 2 <= 1.0,
    "cross": lambda u, v: (
        ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    ),
    "hexagon": _polygon(_regular(6, 1.0)),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.45**2),
    "crescent": lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.75**2),
    "heart": _heart,
    "diamond": lambda u, v: np.abs(u) + np.abs(v) / 0.6 <= 1.0,
    "ell": lambda u, v: (
        ((u >= -0.8) & (u <= -0.2) & (np.abs(v) <= 0.9))
        | ((u >= -0.8) & (u <= 0.8) & (v >= 0.3) & (v <= 0.9))
    ),
    "tee": lambda u, v: (
        ((np.abs(u) <= 0.9) & (v >= -0.9) & (v <= -0.35))
        | ((np.abs(u) <= 0.28) & (np.abs(v) <= 0.9))
    ),
    "arrow": _polygon(
        [
            (-0.9, -0.25),
            (0.1, -0.25),
            (0.1, -0.7),
            (0.95, 0.0),
            (0.1, 0.7),
            (0.1, 0.25),
            (-0.9, 0.25),
        ]
    ),
    "semicircle": lambda u, v: (u * u + (v - 0.45) ** 2 <= 1.1**2) & (v <= 0.45),
    "sparkle": _polygon(_star(4, 1.05, 0.3)),
    "trapezoid": _polygon([(-1.0, 0.6), (1.0, 0.6), (0.45, -0.6), (-0.45, -0.6)]),
    "hourglass": _polygon(
        [(-0.8, -0.9), (0.8, -0.9), (0.12, 0.0), (0.8, 0.9), (-0.8, 0.9), (-0.12, 0.0)]
    ),
    "pentagon": _polygon(_regular(5, 1.0)),
    "capsule": lambda u, v: (
        ((np.abs(u) <= 0.55) & (np.abs(v) <= 0.45)) | ((np.abs(u) - 0.55) ** 2 + v * v <= 0.45**2)
    ),
}
EXTENT = 1.3  # every shape lies within this radius (in body radii)
# A point known to be inside each shape: fallback centre for the mark.
SAFE_POINT: dict[str, tuple[float, float]] = {
    "ring": (0.72, 0.0), "crescent": (-0.62, 0.0), "ell": (-0.5, 0.0), "tee": (0.0, 0.0),
}  # fmt: skip


@functools.cache
def shape_area(name: str) -> float:
    """Area of a silhouette in squared body radii (numerical, 400×400 grid)."""
    t = np.linspace(-EXTENT, EXTENT, 400)
    u, v = np.meshgrid(t, t)
    return float(SHAPES[name](u, v).mean() * (2 * EXTENT) ** 2)


# --- appearance ---------------------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


@dataclass(frozen=True)
class Texture:
    kind: int  # 0 stripes, 1 checker, 2 dots, 3 waves, 4 blotches
    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]
    period: float
    angle: float


@functools.cache
def texture_for(t: int) -> Texture:
    """Background texture ``t`` (a fixed function of t: the same for every dataset seed).

    Muted colours (saturation ≤ 0.4) so that no background looks like a saturated mark.
    """
    rng = np.random.default_rng([0x7E47, t])
    hue = 0.11 + 0.381966 * t  # golden-angle hues: neighbours differ most
    sat = rng.uniform(0.15, 0.4)
    val = rng.uniform(0.35, 0.85)
    a = _hsv(hue, sat, val)
    b = _hsv(hue + 0.04, min(1.0, sat + 0.1), val * 0.55 if val > 0.6 else min(1.0, val + 0.3))
    return Texture(
        kind=t % 5,
        colour_a=tuple(a.tolist()),
        colour_b=tuple(b.tolist()),
        period=float(rng.uniform(5.0, 12.0)),
        angle=float(rng.uniform(0.0, math.pi)),
    )


@dataclass(frozen=True)
class Mark:
    colour: tuple[float, float, float]
    second: tuple[float, float, float]
    pattern: int  # 0 solid, 1 stripes, 2 checker, 3 centre dot


# Ten evenly spaced mark hues, ordered so that the first classes get far-apart hues.
_MARK_HUES = (0, 6, 2, 8, 4, 1, 7, 3, 9, 5)


@functools.cache
def mark_for(k: int) -> Mark:
    """Class ``k``'s mark: a saturated hue, a pattern and a second colour, unique per class.

    Classes k and k+10 share a hue but differ in pattern family (solid/dot vs stripes/checker),
    and classes with neighbouring hues differ in pattern, so no two marks look alike even
    under moderate hue jitter.
    """
    colour = _hsv(_MARK_HUES[k % 10] / 10, 1.0, 1.0)
    second = (25.0, 25.0, 25.0) if (k // 2) % 2 == 0 else (240.0, 240.0, 240.0)
    pattern = (0 if k % 2 == 0 else 3) if k < 10 else (1 if k % 2 == 0 else 2)
    return Mark(colour=tuple(colour.tolist()), second=second, pattern=pattern)


def render_texture(
    tex: Texture, size: int | tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """H×W×3 float32 texture with a random phase and a small random angle jitter.

    ``size`` is the side of a square image or ``(width, height)``.
    """
    width, height = (size, size) if isinstance(size, int) else size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    ang = tex.angle + rng.uniform(-0.2, 0.2)
    phase = rng.uniform(0.0, tex.period, size=2)
    xr = x * math.cos(ang) + y * math.sin(ang) + phase[0]
    yr = -x * math.sin(ang) + y * math.cos(ang) + phase[1]
    p = tex.period
    if tex.kind == 0:
        m = np.floor(xr / (p / 2)) % 2
    elif tex.kind == 1:
        m = (np.floor(xr / (p / 2)) + np.floor(yr / (p / 2))) % 2
    elif tex.kind == 2:
        m = ((xr % p - p / 2) ** 2 + (yr % p - p / 2) ** 2 < (0.3 * p) ** 2).astype(np.float32)
    elif tex.kind == 3:
        m = 0.5 + 0.5 * np.sin(2 * np.pi * xr / p + 1.5 * np.sin(np.pi * yr / p))
    else:
        cells_x, cells_y = max(2, width // 8 + 2), max(2, height // 8 + 2)
        small = (rng.random((cells_y, cells_x)) * 255).astype(np.uint8)
        m = (
            np.asarray(
                Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC),
                dtype=np.float32,
            )
            / 255.0
        )
    m = m.astype(np.float32)[..., None]
    return np.asarray(tex.colour_a, np.float32) * (1 - m) + np.asarray(tex.colour_b, np.float32) * m


def body_texture(u_px: np.ndarray, v_px: np.ndarray) -> np.ndarray:
    """Shared body texture in object-frame pixel coordinates (rotates with the object)."""
    m = 0.5 + 0.5 * np.sin(2 * np.pi * u_px / _BODY_PERIOD) * np.sin(
        2 * np.pi * v_px / _BODY_PERIOD
    )
    m = m[..., None].astype(np.float32)
    return _BODY_A * (1 - m) + _BODY_B * m
