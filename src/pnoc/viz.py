"""Qualitative figures: dataset samples and label masks (pseudo-masks, predictions) over their
images, and confusion matrices."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pnoc.data.base import Sample
from pnoc.data.files import VOC_PALETTE
from pnoc.io import atomic_path

_PALETTE = np.asarray(VOC_PALETTE, dtype=np.uint8).reshape(256, 3)


def colorize(mask: np.ndarray) -> np.ndarray:
    """H×W class indices -> H×W×3 uint8 in the VOC palette (255 = ignore, cream)."""
    return _PALETTE[np.asarray(mask, dtype=np.uint8)]


def mask_grid(
    images: Sequence[np.ndarray],
    masks: Sequence[Sequence[np.ndarray | None]],
    titles: Sequence[str],
    path: str | Path,
    *,
    alpha: float = 0.6,
) -> None:
    """PNG grid: one row per image: the image, then each of its masks blended over it.

    images: H×W×3 uint8; masks[i]: that image's masks (H×W class indices; None draws a blank
    panel), one per title. Panels are drawn at the first image's size. Written atomically.
    """
    from PIL import Image, ImageDraw

    if not images or len(images) != len(masks):
        raise ValueError("mask_grid: images and masks must be non-empty and align")
    th, tw = images[0].shape[:2]
    cols = 1 + len(titles)
    head = 12
    grid = Image.new("RGB", (cols * tw, head + len(images) * th), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for col, title in enumerate(["image", *titles]):
        draw.text((col * tw + 2, 0), title, fill=(0, 0, 0))
    for row, (img, row_masks) in enumerate(zip(images, masks, strict=True)):
        if len(row_masks) != len(titles):
            raise ValueError(f"mask_grid: row {row} has {len(row_masks)} masks for {len(titles)}")
        base = Image.fromarray(np.asarray(img, dtype=np.uint8)).convert("RGB").resize((tw, th))
        y = head + row * th
        grid.paste(base, (0, y))
        base_np = np.asarray(base, dtype=np.float32)
        for col, m in enumerate(row_masks, start=1):
            if m is None:
                continue
            colour = Image.fromarray(colorize(m)).resize((tw, th), Image.NEAREST)
            mixed = (1 - alpha) * base_np + alpha * np.asarray(colour, dtype=np.float32)
            grid.paste(Image.fromarray(mixed.clip(0, 255).astype(np.uint8)), (col * tw, y))
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")


def confusion_png(
    matrix: np.ndarray, class_names: Sequence[str], path: str | Path, *, cell: int = 36
) -> None:
    """Row-normalised confusion matrix (rows: ground truth, columns: prediction) as a PNG."""
    from PIL import Image, ImageDraw

    from pnoc.cam.inference import jet

    m = np.asarray(matrix, dtype=np.float64)
    n = m.shape[0]
    rows = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    margin = 8 + 6 * max(len(c) for c in class_names)
    size = (margin + n * cell, margin + n * cell)
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i in range(n):
        draw.text((2, margin + i * cell + cell // 3), class_names[i], fill=(0, 0, 0))
        draw.text((margin + i * cell + 2, 2 + (i % 2) * 10), class_names[i][:6], fill=(0, 0, 0))
        for j in range(n):
            colour = tuple(int(c) for c in jet(np.array(rows[i, j])))
            x0, y0 = margin + j * cell, margin + i * cell
            draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=colour)
            draw.text((x0 + 4, y0 + cell // 3), f"{rows[i, j]:.2f}", fill=(0, 0, 0))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


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
    from PIL import Image, ImageDraw, ImageFont

    if not samples:
        raise ValueError("sample_grid needs at least one sample")
    palette = _PALETTE.astype(np.float32)
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
