"""One synthetic image: object layout under occlusion constraints, rendering and its mask.

:func:`render_scene` draws image ``index`` of ``split`` from
``np.random.default_rng([seed, split_code, index])``, so it is a pure function of its
arguments. See :mod:`pnoc.data.synthetic` for what the scenes are made to test.

Images are square (``image_size`` an int) or ``(width, height)``; every length of the scene
(body and distractor sizes) is a fraction of the **shorter side**, so a 500×375 image holds
objects of the same pixel size as a 375×375 one, with more room around them. A square
``(s, s)`` gives exactly the image of ``s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pnoc.data.base import IGNORE_INDEX
from pnoc.data.synthetic_shapes import (
    CLASS_NAMES,
    EXTENT,
    SAFE_POINT,
    SHAPES,
    ShapeFn,
    body_texture,
    mark_for,
    render_texture,
    shape_area,
    texture_for,
)

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
    """One generated image: H×W×3 uint8 image, H×W uint8 mask (255 = ignore) and metadata.

    ``label`` is the mask without the ignore band (what SBD's masks look like) and
    ``instances`` the visible object per pixel (index into ``objects``; -1: background), from
    which the COCO layout's instance annotations are made.
    """

    image: np.ndarray
    mask: np.ndarray
    objects: list[SceneObject]
    background_texture: int
    background_from_class: bool  # the background is the preferred texture of a present class
    num_distractors: int
    label: np.ndarray
    instances: np.ndarray


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
    shape: ShapeFn, cx: float, cy: float, r: float, theta: float, width: int, height: int
) -> _Footprint | None:
    ext = EXTENT * r
    x0, x1 = max(0, math.floor(cx - ext)), min(width, math.ceil(cx + ext))
    y0, y1 = max(0, math.floor(cy - ext)), min(height, math.ceil(cy + ext))
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
    return SAFE_POINT.get(name, (0.0, 0.0))


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
    image_size: int | tuple[int, int],
    cooccurrence: float = COOCCURRENCE_PROB,
    body_size: tuple[float, float] = BODY_SIZE,
    mark_area: tuple[float, float] = MARK_AREA,
) -> Scene:
    """Generate image ``index`` of ``split``; a pure function of its arguments.

    ``image_size``: the side of a square image, or ``(width, height)``.
    """
    radius = (body_size[0] / 2, body_size[1] / 2)
    rng = np.random.default_rng([seed, SPLITS[split], index])
    if isinstance(image_size, int):
        width = height = image_size
    else:
        width, height = (int(v) for v in image_size)
    size = min(width, height)  # lengths scale with the shorter side
    # Upper bounds of object centres (x, y); for a square image this draws exactly what
    # ``rng.uniform(lo, size - lo, size=2)`` draws.
    extent = np.array([width, height], dtype=np.float64)
    names = CLASS_NAMES[:num_classes]

    # 1. Layout: classes (with repetition), then geometry with occlusion constraints.
    n_obj = int(rng.integers(1, 4))
    classes = rng.integers(0, num_classes, size=n_obj)
    owner = np.full((height, width), -1, dtype=np.int16)  # visible object per pixel
    mark_owner = np.full((height, width), -1, dtype=np.int16)  # visible mark per pixel
    placed: list[dict[str, Any]] = []
    for k in classes:
        k = int(k)
        shape = SHAPES[names[k]]
        for attempt in range(PLACEMENT_TRIES):
            # Slim silhouettes (star, arrow) get a larger radius so bodies have similar areas.
            r = rng.uniform(*radius) * size * (_REF_AREA / shape_area(names[k])) ** 0.25
            theta = rng.uniform(0.0, 2 * math.pi)
            cx, cy = rng.uniform(0.5 * r, extent - 0.5 * r)
            if not placed and attempt == PLACEMENT_TRIES - 1:
                cx, cy = width / 2, height / 2  # last resort: every image gets an object
            fp = _footprint(shape, cx, cy, r, theta, width, height)
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
    image = render_texture(texture_for(tex_index), (width, height), rng)

    # 3. Distractors: body-like tinted blobs (unions of discs) of no class, behind objects.
    n_dis = int(rng.integers(0, 3))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    for _ in range(n_dis):
        r = rng.uniform(0.06, 0.14) * size
        c = rng.uniform(0, extent)
        blob = np.zeros((height, width), dtype=bool)
        for _ in range(3):
            o = c + rng.uniform(-0.6, 0.6, size=2) * r
            rr = rng.uniform(0.4, 0.8) * r
            blob |= (xx - o[0]) ** 2 + (yy - o[1]) ** 2 <= rr * rr
        tint = rng.uniform(0.7, 1.3, size=3).astype(np.float32)
        image[blob] = body_texture(xx[blob], yy[blob]) * tint

    # 4. Objects in order (later on top): shared body texture, then the class mark.
    label = np.zeros((height, width), dtype=np.uint8)
    for p in placed:
        fp: _Footprint = p["fp"]
        win = fp.window
        body = body_texture(fp.u * p["r"], fp.v * p["r"]) * p["brightness"]
        mk = mark_for(p["k"])
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
    mask[_ignore_band(owner, int(rng.integers(1, 3)))] = IGNORE_INDEX
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
            or (fp.y1 == height and inside[-1].any())
            or (fp.x1 == width and inside[:, -1].any())
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
    return Scene(
        image_u8, mask, objects, tex_index, from_class, n_dis, label=label, instances=owner
    )
