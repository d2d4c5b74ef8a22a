"""Deterministic generator of a small VOC-format dataset with the failure modes of WSSS.

What makes it hard in the way P-NOC's target data is hard:

- **Discriminative mark on a shared body.** Every class is a *body* with a class-specific
  silhouette (circle, square, triangle, ...; diameter ``body_size``, by default 25–45 % of the
  image side) whose texture and colour are the same for all classes, carrying a small *mark*
  (``mark_area``, by default 10–15 % of the body's area, at a random place inside it) in a
  saturated class-specific colour and pattern. The mark alone identifies the class, so a plain
  CAM classifier fires on the mark and misses the body.
- **Co-occurrence bias.** Each class owns a background texture; with probability
  ``cooccurrence`` (default 0.2) the image background is the texture of one of its present
  classes (else any texture of the pool, which also holds 4 neutral ones, so a present class's
  texture still turns up more often than chance), and CAMs leak into the context. Set high
  (0.7), the texture becomes an easier cue than the mark and a from-scratch or lightly tuned
  classifier localises backgrounds instead of objects.
- **Clutter.** 1–3 objects (classes drawn with repetition), random scale and rotation,
  partial occlusion (later objects on top; the mask shows visible pixels; every object keeps
  ≥ 55 % of its area and ≥ 50 % of its mark visible), 0–2 distractor blobs of no class
  (body-like texture, tinted, labelled background), Gaussian noise and brightness jitter.
- **VOC-style ignore band**: a 1 or 2 px band of 255 on every object boundary.

Determinism: image ``index`` of ``split`` draws from
``np.random.default_rng([seed, split_code, index])``; textures and marks are a fixed function
of the class index (the same "world" for any seed). JPEG (quality 95) and PNG encodings and
the XML text hold no timestamps, so equal arguments give byte-identical files.
"""

from __future__ import annotations

import colorsys
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pnoc.data.base import Sample
from pnoc.data.voc import VOC_PALETTE, encode_mask_png
from pnoc.errors import ConfigError
from pnoc.io import atomic_path

#: Foreground class names in order; a dataset with K classes uses the first K.
CLASS_NAMES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "ellipse",
    "cross", "hexagon", "ring", "crescent", "heart",
    "diamond", "ell", "tee", "arrow", "semicircle",
    "sparkle", "trapezoid", "hourglass", "pentagon", "capsule",
)  # fmt: skip
MAX_CLASSES = len(CLASS_NAMES)
MIN_IMAGE_SIZE = 32
SPLITS: dict[str, int] = {"train": 0, "val": 1}

#: Default probability that the background is the preferred texture of a present class.
COOCCURRENCE_PROB = 0.2
NEUTRAL_TEXTURES = 4
#: Default body diameter range, as a fraction of the image side (``data.synthetic.body_size``).
BODY_SIZE = (0.25, 0.45)
#: Default mark area range, as a fraction of the body's area (``data.synthetic.mark_area``).
MARK_AREA = (0.10, 0.15)
_REF_AREA = 2.2  # squared body radii: slimmer shapes are scaled up by (ref/area)^¼
MIN_VISIBLE = 0.55  # an object keeps at least this fraction of its area visible
MIN_MARK_VISIBLE = 0.5
MIN_IN_IMAGE = 0.7  # at most 30 % of a body may fall outside the image
PLACEMENT_TRIES = 30
JPEG_QUALITY = 95

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
_EXTENT = 1.3  # every shape lies within this radius (in body radii)
# A point known to be inside each shape: fallback centre for the mark.
_SAFE_POINT: dict[str, tuple[float, float]] = {
    "ring": (0.72, 0.0), "crescent": (-0.62, 0.0), "ell": (-0.5, 0.0), "tee": (0.0, 0.0),
}  # fmt: skip


@functools.cache
def shape_area(name: str) -> float:
    """Area of a silhouette in squared body radii (numerical, 400×400 grid)."""
    t = np.linspace(-_EXTENT, _EXTENT, 400)
    u, v = np.meshgrid(t, t)
    return float(SHAPES[name](u, v).mean() * (2 * _EXTENT) ** 2)


# --- appearance ---------------------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


@dataclass(frozen=True)
class _Texture:
    kind: int  # 0 stripes, 1 checker, 2 dots, 3 waves, 4 blotches
    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]
    period: float
    angle: float


@functools.cache
def _texture(t: int) -> _Texture:
    """Background texture ``t`` (a fixed function of t: the same for every dataset seed).

    Muted colours (saturation ≤ 0.4) so that no background looks like a saturated mark.
    """
    rng = np.random.default_rng([0x7E47, t])
    hue = 0.11 + 0.381966 * t  # golden-angle hues: neighbours differ most
    sat = rng.uniform(0.15, 0.4)
    val = rng.uniform(0.35, 0.85)
    a = _hsv(hue, sat, val)
    b = _hsv(hue + 0.04, min(1.0, sat + 0.1), val * 0.55 if val > 0.6 else min(1.0, val + 0.3))
    return _Texture(
        kind=t % 5,
        colour_a=tuple(a.tolist()),
        colour_b=tuple(b.tolist()),
        period=float(rng.uniform(5.0, 12.0)),
        angle=float(rng.uniform(0.0, math.pi)),
    )


@dataclass(frozen=True)
class _Mark:
    colour: tuple[float, float, float]
    second: tuple[float, float, float]
    pattern: int  # 0 solid, 1 stripes, 2 checker, 3 centre dot


# Ten evenly spaced mark hues, ordered so that the first classes get far-apart hues.
_MARK_HUES = (0, 6, 2, 8, 4, 1, 7, 3, 9, 5)


@functools.cache
def _mark(k: int) -> _Mark:
    """Class ``k``'s mark: a saturated hue, a pattern and a second colour, unique per class.

    Classes k and k+10 share a hue but differ in pattern family (solid/dot vs stripes/checker),
    and classes with neighbouring hues differ in pattern, so no two marks look alike even
    under moderate hue jitter.
    """
    colour = _hsv(_MARK_HUES[k % 10] / 10, 1.0, 1.0)
    second = (25.0, 25.0, 25.0) if (k // 2) % 2 == 0 else (240.0, 240.0, 240.0)
    pattern = (0 if k % 2 == 0 else 3) if k < 10 else (1 if k % 2 == 0 else 2)
    return _Mark(colour=tuple(colour.tolist()), second=second, pattern=pattern)


def _render_texture(tex: _Texture, size: int, rng: np.random.Generator) -> np.ndarray:
    """size×size×3 float32 texture with a random phase and a small random angle jitter."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
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
        cells = max(2, size // 8 + 2)
        small = (rng.random((cells, cells)) * 255).astype(np.uint8)
        m = (
            np.asarray(
                Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC),
                dtype=np.float32,
            )
            / 255.0
        )
    m = m.astype(np.float32)[..., None]
    return np.asarray(tex.colour_a, np.float32) * (1 - m) + np.asarray(tex.colour_b, np.float32) * m


def _body_texture(u_px: np.ndarray, v_px: np.ndarray) -> np.ndarray:
    """Shared body texture in object-frame pixel coordinates (rotates with the object)."""
    m = 0.5 + 0.5 * np.sin(2 * np.pi * u_px / _BODY_PERIOD) * np.sin(
        2 * np.pi * v_px / _BODY_PERIOD
    )
    m = m[..., None].astype(np.float32)
    return _BODY_A * (1 - m) + _BODY_B * m


# --- scene layout -------------------------------------------------------------------------------


@dataclass
class SceneObject:
    """One placed object. ``bbox`` is VOC-style 1-based inclusive (xmin, ymin, xmax, ymax)."""

    class_index: int  # 0-based foreground index (mask value = class_index + 1)
    name: str
    bbox: tuple[int, int, int, int]
    truncated: bool
    visible_fraction: float


@dataclass
class Scene:
    """One generated image: H×W×3 uint8 image, H×W uint8 mask (255 = ignore) and metadata."""

    image: np.ndarray
    mask: np.ndarray
    objects: list[SceneObject]
    background_texture: int
    background_from_class: bool  # the background is the preferred texture of a present class
    num_distractors: int


@dataclass
class _Footprint:
    y0: int
    y1: int
    x0: int
    x1: int
    u: np.ndarray  # local coordinates over the bbox window, in body radii
    v: np.ndarray
    inside: np.ndarray  # bool, bbox window

    @property
    def window(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def _footprint(
    shape: ShapeFn, cx: float, cy: float, r: float, theta: float, size: int
) -> _Footprint | None:
    ext = _EXTENT * r
    x0, x1 = max(0, math.floor(cx - ext)), min(size, math.ceil(cx + ext))
    y0, y1 = max(0, math.floor(cy - ext)), min(size, math.ceil(cy + ext))
    if x0 >= x1 or y0 >= y1:
        return None
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xs + 0.5 - cx, ys + 0.5 - cy  # pixel centres
    c, s = math.cos(theta), math.sin(theta)
    u = (c * dx + s * dy) / r
    v = (-s * dx + c * dy) / r
    return _Footprint(y0, y1, x0, x1, u, v, shape(u, v))


def _mark_centre(
    shape: ShapeFn, name: str, half: float, rng: np.random.Generator
) -> tuple[float, float]:
    """A random mark centre (local units) with the whole mark square inside the body.

    64 candidates are tested at once (centre + 4 corners); falls back to a candidate whose
    centre is inside, then to a known interior point (the mark is clipped to the body anyway).
    """
    cand = rng.uniform(-1.0, 1.0, size=(64, 2))
    offsets = np.array([[0, 0], [-1, -1], [-1, 1], [1, -1], [1, 1]], dtype=np.float64) * half
    pts = cand[:, None, :] + offsets[None]
    ok = shape(pts[..., 0], pts[..., 1])
    full = np.flatnonzero(ok.all(axis=1))
    if full.size:
        return float(cand[full[0], 0]), float(cand[full[0], 1])
    centre = np.flatnonzero(ok[:, 0])
    if centre.size:
        return float(cand[centre[0], 0]), float(cand[centre[0], 1])
    return _SAFE_POINT.get(name, (0.0, 0.0))


def _mark_pattern(pattern: int, mu: np.ndarray, mv: np.ndarray) -> np.ndarray:
    """Where the mark shows its second colour (mark-local coordinates in [-1, 1])."""
    if pattern == 1:
        return np.floor((mu + 1.0) * 1.5) % 2 == 1  # three stripes
    if pattern == 2:
        return (mu > 0) ^ (mv > 0)  # 2×2 checker
    if pattern == 3:
        return mu * mu + mv * mv < 0.3  # centre dot
    return np.zeros(mu.shape, dtype=bool)


def _ignore_band(owner: np.ndarray, width: int) -> np.ndarray:
    """Pixels on instance boundaries: one side of each edge (width 1) or both (width 2)."""
    band = np.zeros(owner.shape, dtype=bool)
    dh = owner[:, 1:] != owner[:, :-1]
    dv = owner[1:, :] != owner[:-1, :]
    band[:, :-1] |= dh
    band[:-1, :] |= dv
    if width >= 2:
        band[:, 1:] |= dh
        band[1:, :] |= dv
    return band


def render_scene(
    seed: int,
    split: str,
    index: int,
    num_classes: int,
    image_size: int,
    cooccurrence: float = COOCCURRENCE_PROB,
    body_size: tuple[float, float] = BODY_SIZE,
    mark_area: tuple[float, float] = MARK_AREA,
) -> Scene:
    """Generate image ``index`` of ``split``; a pure function of its arguments."""
    radius = (body_size[0] / 2, body_size[1] / 2)
    rng = np.random.default_rng([seed, SPLITS[split], index])
    size = image_size
    names = CLASS_NAMES[:num_classes]

    # 1. Layout: classes (with repetition), then geometry with occlusion constraints.
    n_obj = int(rng.integers(1, 4))
    classes = rng.integers(0, num_classes, size=n_obj)
    owner = np.full((size, size), -1, dtype=np.int16)  # visible object per pixel
    mark_owner = np.full((size, size), -1, dtype=np.int16)  # visible mark per pixel
    placed: list[dict[str, Any]] = []
    for k in classes:
        k = int(k)
        shape = SHAPES[names[k]]
        for attempt in range(PLACEMENT_TRIES):
            # Slim silhouettes (star, arrow) get a larger radius so bodies have similar areas.
            r = rng.uniform(*radius) * size * (_REF_AREA / shape_area(names[k])) ** 0.25
            theta = rng.uniform(0.0, 2 * math.pi)
            cx, cy = rng.uniform(0.5 * r, size - 0.5 * r, size=2)
            if not placed and attempt == PLACEMENT_TRIES - 1:
                cx = cy = size / 2  # last resort: every image gets at least one object
            fp = _footprint(shape, cx, cy, r, theta, size)
            full_area = shape_area(names[k]) * r * r
            if fp is None or fp.inside.sum() < MIN_IN_IMAGE * full_area:
                continue
            win = fp.window
            covered = owner[win][fp.inside]
            covered_marks = mark_owner[win][fp.inside]
            if any(
                p["visible"] - np.count_nonzero(covered == j) < MIN_VISIBLE * p["area"]
                or p["mark_visible"] - np.count_nonzero(covered_marks == j)
                < MIN_MARK_VISIBLE * p["mark_area"]
                for j, p in enumerate(placed)
            ):
                continue
            half = math.sqrt(rng.uniform(*mark_area) * shape_area(names[k])) / 2
            mu0, mv0 = _mark_centre(shape, names[k], half, rng)
            mu, mv = (fp.u - mu0) / half, (fp.v - mv0) / half
            in_mark = fp.inside & (np.abs(mu) <= 1) & (np.abs(mv) <= 1)
            if not in_mark.any():
                continue
            j = len(placed)
            for p_j, p in enumerate(placed):
                p["visible"] -= np.count_nonzero(covered == p_j)
                p["mark_visible"] -= np.count_nonzero(covered_marks == p_j)
            owner[win][fp.inside] = j
            mark_owner[win][fp.inside] = -1
            mark_owner[win][in_mark] = j
            placed.append(
                dict(
                    k=k, fp=fp, r=r, area=full_area, visible=int(fp.inside.sum()),
                    mark_area=int(in_mark.sum()), mark_visible=int(in_mark.sum()),
                    in_mark=in_mark, mu=mu, mv=mv, brightness=rng.uniform(0.9, 1.1),
                )
            )  # fmt: skip
            break

    # 2. Background: a present class's texture with probability ``cooccurrence``.
    present = sorted({p["k"] for p in placed})
    from_class = bool(rng.random() < cooccurrence)
    if from_class:
        tex_index = int(present[int(rng.integers(0, len(present)))])
    else:
        tex_index = int(rng.integers(0, num_classes + NEUTRAL_TEXTURES))
        from_class = tex_index in present
    image = _render_texture(_texture(tex_index), size, rng)

    # 3. Distractors: body-like tinted blobs (unions of discs) of no class, behind objects.
    n_dis = int(rng.integers(0, 3))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    for _ in range(n_dis):
        r = rng.uniform(0.06, 0.14) * size
        c = rng.uniform(0, size, size=2)
        blob = np.zeros((size, size), dtype=bool)
        for _ in range(3):
            o = c + rng.uniform(-0.6, 0.6, size=2) * r
            rr = rng.uniform(0.4, 0.8) * r
            blob |= (xx - o[0]) ** 2 + (yy - o[1]) ** 2 <= rr * rr
        tint = rng.uniform(0.7, 1.3, size=3).astype(np.float32)
        image[blob] = _body_texture(xx[blob], yy[blob]) * tint

    # 4. Objects in order (later on top): shared body texture, then the class mark.
    label = np.zeros((size, size), dtype=np.uint8)
    for p in placed:
        fp: _Footprint = p["fp"]
        win = fp.window
        body = _body_texture(fp.u * p["r"], fp.v * p["r"]) * p["brightness"]
        mk = _mark(p["k"])
        second = _mark_pattern(mk.pattern, p["mu"], p["mv"])
        body[p["in_mark"]] = mk.colour
        body[p["in_mark"] & second] = mk.second
        image[win][fp.inside] = body[fp.inside]
        label[win][fp.inside] = p["k"] + 1

    # 5. Photometric noise.
    image *= rng.uniform(0.9, 1.1)
    image += rng.normal(0.0, rng.uniform(2.0, 8.0), size=image.shape).astype(np.float32)
    image_u8 = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    # 6. Mask with a VOC-style ignore band on instance boundaries.
    mask = label.copy()
    mask[_ignore_band(owner, int(rng.integers(1, 3)))] = 255
    objects = []
    for j, p in enumerate(placed):
        visible = owner == j
        if not np.any(mask[visible] == p["k"] + 1):
            # Never let the band swallow an object: labels must agree with the mask.
            mask[visible] = p["k"] + 1
        ys, xs = np.nonzero(visible)
        fp = p["fp"]
        inside = fp.inside
        truncated = bool(
            (fp.y0 == 0 and inside[0].any())
            or (fp.x0 == 0 and inside[:, 0].any())
            or (fp.y1 == size and inside[-1].any())
            or (fp.x1 == size and inside[:, -1].any())
        )
        objects.append(
            SceneObject(
                class_index=p["k"],
                name=names[p["k"]],
                bbox=(int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1),
                truncated=truncated,
                visible_fraction=float(min(1.0, visible.sum() / p["area"])),
            )
        )
    return Scene(image_u8, mask, objects, tex_index, from_class, n_dis)


def _annotation_xml(image_id: str, size: int, objects: Sequence[SceneObject]) -> str:
    """VOC annotation XML text (no dates, fixed formatting: deterministic)."""
    lines = [
        "<annotation>",
        "\t<folder>pnoc-synthetic</folder>",
        f"\t<filename>{image_id}.jpg</filename>",
        "\t<source>",
        "\t\t<database>pnoc synthetic</database>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{size}</width>",
        f"\t\t<height>{size}</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        "\t<segmented>1</segmented>",
    ]
    for o in objects:
        xmin, ymin, xmax, ymax = o.bbox
        lines += [
            "\t<object>",
            f"\t\t<name>{o.name}</name>",
            "\t\t<pose>Unspecified</pose>",
            f"\t\t<truncated>{int(o.truncated)}</truncated>",
            "\t\t<difficult>0</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{xmin}</xmin>",
            f"\t\t\t<ymin>{ymin}</ymin>",
            f"\t\t\t<xmax>{xmax}</xmax>",
            f"\t\t\t<ymax>{ymax}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


# --- public API ---------------------------------------------------------------------------------


@dataclass
class SyntheticStats:
    """Summary of a generated dataset (JSON-ready through :meth:`to_dict`)."""

    image_size: int
    seed: int
    class_names: list[str]  # foreground only
    num_images: dict[str, int] = field(default_factory=dict)  # split → count
    class_image_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split → class → n
    mean_objects_per_image: float = 0.0
    mean_distractors_per_image: float = 0.0
    foreground_fraction: float = 0.0  # pixels labelled with a class (band excluded)
    ignore_fraction: float = 0.0  # pixels labelled 255
    background_bias: float = 0.0  # images whose background is a present class's texture

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_range(name: str, pair: tuple[float, float], what: str) -> None:
    lo, hi = pair
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(
            f"{name} must be [low, high] with 0 < low <= high <= 1 ({what}), got {list(pair)}"
        )


def _check_args(
    num_train: int,
    num_val: int,
    num_classes: int,
    image_size: int,
    seed: int,
    cooccurrence: float,
    body_size: tuple[float, float],
    mark_area: tuple[float, float],
) -> None:
    if num_train < 1 or num_val < 0:
        raise ConfigError(f"need num_train >= 1 and num_val >= 0, got {num_train}, {num_val}")
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ConfigError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    if image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}")
    if not 0.0 <= cooccurrence <= 1.0:
        raise ConfigError(f"cooccurrence must be a probability in [0, 1], got {cooccurrence}")
    _check_range("body_size", body_size, "body diameter as a fraction of the image side")
    _check_range("mark_area", mark_area, "mark area as a fraction of the body's area")


def generate_synthetic(
    root: str | Path,
    *,
    num_train: int,
    num_val: int,
    num_classes: int,
    image_size: int,
    seed: int,
    cooccurrence: float = COOCCURRENCE_PROB,
    body_size: tuple[float, float] = BODY_SIZE,
    mark_area: tuple[float, float] = MARK_AREA,
) -> SyntheticStats:
    """Write the dataset to ``root`` (replacing it) and return its statistics.

    Everything is written into a temporary sibling folder renamed onto ``root`` at the end,
    so an interrupted run never leaves a partial dataset. Image ids are ``<split>_<index:05d>``.
    """
    _check_args(
        num_train, num_val, num_classes, image_size, seed, cooccurrence, body_size, mark_area
    )
    names = list(CLASS_NAMES[:num_classes])
    stats = SyntheticStats(image_size=image_size, seed=seed, class_names=names)
    n_images = n_objects = n_distractors = n_bias = 0
    fg_pixels = ignore_pixels = 0
    with atomic_path(root) as tmp:
        dirs = {
            d: tmp / d
            for d in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation")
        }
        for d in dirs.values():
            d.mkdir(parents=True)
        for split, count in (("train", num_train), ("val", num_val)):
            ids = []
            per_class = dict.fromkeys(names, 0)
            for index in range(count):
                image_id = f"{split}_{index:05d}"
                scene = render_scene(
                    seed, split, index, num_classes, image_size, cooccurrence, body_size, mark_area
                )
                Image.fromarray(scene.image).save(
                    dirs["JPEGImages"] / f"{image_id}.jpg", format="JPEG", quality=JPEG_QUALITY
                )
                (dirs["SegmentationClass"] / f"{image_id}.png").write_bytes(
                    encode_mask_png(scene.mask)
                )
                (dirs["Annotations"] / f"{image_id}.xml").write_text(
                    _annotation_xml(image_id, image_size, scene.objects), encoding="utf-8"
                )
                ids.append(image_id)
                for name in {o.name for o in scene.objects}:
                    per_class[name] += 1
                n_images += 1
                n_objects += len(scene.objects)
                n_distractors += scene.num_distractors
                n_bias += scene.background_from_class
                fg_pixels += int(np.count_nonzero((scene.mask > 0) & (scene.mask < 255)))
                ignore_pixels += int(np.count_nonzero(scene.mask == 255))
            (dirs["ImageSets/Segmentation"] / f"{split}.txt").write_text(
                "".join(f"{i}\n" for i in ids), encoding="utf-8"
            )
            stats.num_images[split] = count
            stats.class_image_counts[split] = per_class
        (tmp / "class_names.txt").write_text(
            "".join(f"{n}\n" for n in ["background", *names]), encoding="utf-8"
        )
    total_pixels = n_images * image_size * image_size
    stats.mean_objects_per_image = n_objects / n_images
    stats.mean_distractors_per_image = n_distractors / n_images
    stats.foreground_fraction = fg_pixels / total_pixels
    stats.ignore_fraction = ignore_pixels / total_pixels
    stats.background_bias = n_bias / n_images
    return stats


def _palette_rgb() -> np.ndarray:
    return np.asarray(VOC_PALETTE, dtype=np.float32).reshape(256, 3)


def sample_grid(
    samples: Sequence[Sample],
    class_names: Sequence[str],
    path: str | Path,
    cols: int = 4,
    *,
    tile: int = 128,
    alpha: float = 0.5,
) -> None:
    """Write a PNG grid of images with their masks overlaid (VOC palette colours, ``alpha``).

    Each tile is ``tile`` px wide, captioned with the sample's label names. Background is
    left untinted; ignore (255) shows in the palette's off-white. Written atomically.
    ``class_names`` includes background first.
    """
    if not samples:
        raise ValueError("sample_grid needs at least one sample")
    palette = _palette_rgb()
    rows = math.ceil(len(samples) / cols)
    canvas = Image.new("RGB", (cols * tile, rows * tile), (0, 0, 0))
    font = ImageFont.load_default()
    for n, s in enumerate(samples):
        img = s.image.astype(np.float32)
        if s.mask is not None:
            tinted = s.mask != 0
            img[tinted] = (1 - alpha) * img[tinted] + alpha * palette[s.mask[tinted]]
        im = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))
        f = tile / max(im.width, im.height)
        im = im.resize(
            (max(1, round(im.width * f)), max(1, round(im.height * f))),
            Image.Resampling.NEAREST if f >= 1 else Image.Resampling.BILINEAR,
        )
        cell = Image.new("RGB", (tile, tile), (0, 0, 0))
        cell.paste(im, ((tile - im.width) // 2, (tile - im.height) // 2))
        names = [class_names[k + 1] for k in np.flatnonzero(s.labels) if k + 1 < len(class_names)]
        caption = ", ".join(names) or "(none)"
        draw = ImageDraw.Draw(cell)
        box = draw.textbbox((2, 1), caption, font=font)
        draw.rectangle((0, 0, min(tile, box[2] + 2), box[3] + 1), fill=(0, 0, 0))
        draw.text((2, 1), caption, fill=(255, 255, 255), font=font)
        canvas.paste(cell, ((n % cols) * tile, (n // cols) * tile))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
