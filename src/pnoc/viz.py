"""Qualitative grids of label masks (pseudo-masks, predictions) over their images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pnoc.data.voc import VOC_PALETTE
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
