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
