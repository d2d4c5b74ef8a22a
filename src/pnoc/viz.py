"""Qualitative figures that explain themselves: dataset samples, label masks (pseudo-masks,
predictions) and heat maps (CAMs, saliency) over their images, and confusion matrices.

Each figure is a matplotlib :class:`~matplotlib.figure.Figure` built by a ``*_figure`` function
(no pyplot: no global state, no display) and written as a PNG by :func:`save_figure` at
:data:`DPI`, so the PNG is exactly the figure's size in pixels. Grids have titled columns;
mask overlays carry a legend of the classes they show, each name next to its palette colour;
heat maps carry a colour bar; confusion matrices name every class on both axes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pnoc.data.base import IGNORE_INDEX, Sample
from pnoc.data.files import VOC_PALETTE
from pnoc.io import atomic_path

if TYPE_CHECKING:
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "PANEL",
    "Panel",
    "class_label",
    "colorize",
    "confusion_figure",
    "confusion_png",
    "confusion_side",
    "grid_figure",
    "jet_colormap",
    "legend_entries",
    "mask_grid",
    "mask_grid_figure",
    "overlay_heat",
    "overlay_mask",
    "sample_grid",
    "sample_grid_figure",
    "save_figure",
]

DPI = 100
"""Pixels per inch of every figure: a PNG is ``figsize × DPI`` pixels."""
PANEL = 160
"""Default length in pixels of the longer side of a grid panel."""

_PAD, _GAP, _HEAD, _CAPTION, _TITLE, _COLORBAR = 10, 6, 26, 18, 28, 84  # pixels
_FONT, _SMALL = 10, 8  # points

_PALETTE = np.asarray(VOC_PALETTE, dtype=np.uint8).reshape(256, 3)

RGB = tuple[int, int, int]


def colorize(mask: np.ndarray) -> np.ndarray:
    """H×W class indices -> H×W×3 uint8 in the VOC palette (255 = ignore, cream)."""
    return _PALETTE[np.asarray(mask, dtype=np.uint8)]


def overlay_mask(
    image: np.ndarray, mask: np.ndarray, alpha: float, *, skip_background: bool = False
) -> np.ndarray:
    """``mask``'s palette colours blended over ``image`` (H×W×3 uint8) with opacity ``alpha``.

    A mask of another size is resized to the image's (nearest neighbour). With
    ``skip_background`` the background (0) is left untinted.
    """
    from PIL import Image

    image = np.asarray(image, dtype=np.uint8)
    mask = np.asarray(mask, dtype=np.uint8)
    h, w = image.shape[:2]
    if mask.shape != (h, w):
        mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST))
    out = image.astype(np.float32)
    tinted = mask != 0 if skip_background else np.ones(mask.shape, dtype=bool)
    out[tinted] = (1 - alpha) * out[tinted] + alpha * _PALETTE[mask[tinted]]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def overlay_heat(image: np.ndarray, values: np.ndarray, alpha: float) -> np.ndarray:
    """A map of ``values`` in [0, 1] (a CAM, a saliency) in jet colours blended over ``image``
    (H×W×3 uint8) with opacity ``alpha``; a map of another size is resized (bilinear)."""
    from PIL import Image

    from pnoc.cam.inference import jet

    image = np.asarray(image, dtype=np.uint8)
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    h, w = image.shape[:2]
    if v.shape != (h, w):
        v = np.asarray(Image.fromarray(v, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    out = (1 - alpha) * image.astype(np.float32) + alpha * jet(v).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def class_label(index: int, class_names: Sequence[str] | None) -> str:
    """The name of class ``index`` in ``class_names`` (background first); without a name:
    ``"ignore"`` for 255, ``"background"`` for 0, else ``"class <index>"``."""
    if index == IGNORE_INDEX:
        return "ignore"
    if class_names is not None and 0 <= index < len(class_names):
        return class_names[index]
    return "background" if index == 0 else f"class {index}"


def legend_entries(
    masks: Iterable[np.ndarray | None],
    class_names: Sequence[str] | None = None,
    *,
    skip: Iterable[int] = (),
) -> list[tuple[str, RGB]]:
    """(name, palette colour) of every class present in ``masks`` but ``skip``, by index
    (ignore last)."""
    present: set[int] = set()
    for m in masks:
        if m is not None:
            present.update(int(v) for v in np.unique(m))
    present -= set(skip)
    return [(class_label(k, class_names), _rgb(_PALETTE[k])) for k in sorted(present)]


def jet_colormap() -> Colormap:
    """The jet colours of CAM and saliency overlays (:func:`pnoc.cam.inference.jet`)."""
    from matplotlib.colors import ListedColormap

    from pnoc.cam.inference import jet

    return ListedColormap(jet(np.linspace(0.0, 1.0, 256)) / 255.0, name="pnoc_jet")


def save_figure(fig: Figure, path: str | Path) -> None:
    """Write ``fig`` as a PNG of exactly its size in pixels, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")


# ---------------------------------------------------------------------------------------------
# Grids


@dataclass(frozen=True)
class Panel:
    """One picture of a grid.

    image: H×W×3 uint8 RGB, or None for an empty panel showing ``empty`` (e.g. "no mask").
    caption: a line above the picture (e.g. the class of a CAM).
    """

    image: np.ndarray | None
    caption: str = ""
    empty: str = ""


def grid_figure(
    rows: Sequence[Sequence[Panel | None]],
    *,
    column_titles: Sequence[str] = (),
    title: str = "",
    panel: int = PANEL,
    aspect: float = 1.0,
    legend: Sequence[tuple[str, RGB]] = (),
    legend_title: str = "class colours",
    colorbar: str = "",
) -> Figure:
    """A grid of pictures with titled columns, an optional legend and an optional colour bar.

    Args:
        rows: the panels of each row, left to right; None leaves a cell blank.
        column_titles: one bold title above each column.
        title: a title above the whole grid.
        panel: the longer side of a panel in pixels; ``aspect`` (height / width) gives the
            other. Pictures keep their own aspect inside their panel.
        legend: (name, RGB) entries, drawn as colour swatches below the grid.
        legend_title: the legend's heading.
        colorbar: label of a jet colour bar over [0, 1] right of the grid ("": none).

    Layout in pixels: a 10 px margin; then the title (28) and column titles (26) bands; each
    row (an 18 px caption band when any panel has a caption, then the panel) 6 px apart; the
    legend (34 + 22 per line of entries); an 84 px colour-bar band on the right. A column
    widens to fit its title (8 px a character), the figure to fit the title (9 px a
    character) and the widest legend entry.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if not rows or not any(rows):
        raise ValueError("grid_figure: no panels")
    cols = max(len(r) for r in rows)
    if column_titles and len(column_titles) != cols:
        raise ValueError(f"grid_figure: {len(column_titles)} column titles for {cols} columns")
    if aspect >= 1.0:
        ph, pw = panel, max(1, round(panel / aspect))
    else:
        pw, ph = panel, max(1, round(panel * aspect))
    caption = _CAPTION if any(p is not None and p.caption for r in rows for p in r) else 0
    head = _HEAD if column_titles else 0
    top = _PAD + (_TITLE if title else 0) + head
    colw = max([pw, *(8 * len(text) + 4 for text in column_titles)])  # fit the bold titles
    grid_w = cols * colw + (cols - 1) * _GAP
    grid_h = len(rows) * (caption + ph) + (len(rows) - 1) * _GAP
    cbar = _COLORBAR if colorbar else 0
    width = max(2 * _PAD + grid_w + cbar, 2 * _PAD + 9 * len(title))
    legend_h = ncol = 0
    if legend:
        entry = max(40 + 7 * len(name) for name, _ in legend)
        width = max(width, entry + 2 * _PAD)
        ncol = max(1, min(len(legend), (width - 2 * _PAD) // entry))
        legend_h = 34 + 22 * math.ceil(len(legend) / ncol)
    height = top + grid_h + legend_h + _PAD
    left = (width - cbar - grid_w) / 2  # the grid is centred when the title or legend is wider

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    if title:
        y = 1 - (_PAD + _TITLE / 2) / height
        fig.text(0.5, y, title, ha="center", va="center", fontsize=_FONT + 1, weight="bold")
    for c, text in enumerate(column_titles):
        x = (left + c * (colw + _GAP) + colw / 2) / width
        y = 1 - (top - head / 2) / height
        fig.text(x, y, text, ha="center", va="center", fontsize=_FONT, weight="bold")
    for r, row in enumerate(rows):
        y = top + r * (caption + ph + _GAP) + caption
        for c, p in enumerate(row):
            if p is None:
                continue
            x = left + c * (colw + _GAP) + (colw - pw) / 2
            ax = fig.add_axes((x / width, 1 - (y + ph) / height, pw / width, ph / height))
            ax.set_axis_off()
            if p.image is not None:
                ax.imshow(np.asarray(p.image), interpolation="nearest")
            else:
                ax.text(0.5, 0.5, p.empty, ha="center", va="center", fontsize=_SMALL, color="0.4")
            if p.caption:
                ax.set_title(p.caption, fontsize=_SMALL, pad=2)
    if colorbar:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        x = left + grid_w + 14
        cax = fig.add_axes((x / width, 1 - (top + grid_h) / height, 14 / width, grid_h / height))
        fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), jet_colormap()), cax=cax, label=colorbar)
    if legend:
        handles = [
            Patch(facecolor=np.asarray(rgb) / 255.0, edgecolor="0.3", label=name)
            for name, rgb in legend
        ]
        fig.legend(
            handles=handles,
            loc="lower center",
            bbox_to_anchor=(0.5, _PAD / height),
            ncol=ncol,
            frameon=False,
            fontsize=_SMALL + 1,
            title=legend_title,
            title_fontsize=_SMALL + 1,
            handlelength=1.2,
            columnspacing=1.0,
        )
    return fig


def mask_grid_figure(
    images: Sequence[np.ndarray],
    masks: Sequence[Sequence[np.ndarray | None]],
    titles: Sequence[str],
    *,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.6,
    panel: int = PANEL,
) -> Figure:
    """One row per image: the image, then each of its masks blended over it (see
    :func:`mask_grid`)."""
    if not images or len(images) != len(masks):
        raise ValueError("mask_grid: images and masks must be non-empty and align")
    rows: list[list[Panel | None]] = []
    for row, (img, row_masks) in enumerate(zip(images, masks, strict=True)):
        if len(row_masks) != len(titles):
            raise ValueError(f"mask_grid: row {row} has {len(row_masks)} masks for {len(titles)}")
        base = np.asarray(img, dtype=np.uint8)
        rows.append(
            [Panel(base)]
            + [
                Panel(None, empty="no mask") if m is None else Panel(overlay_mask(base, m, alpha))
                for m in row_masks
            ]
        )
    h, w = np.asarray(images[0]).shape[:2]
    return grid_figure(
        rows,
        column_titles=["image", *titles],
        panel=panel,
        aspect=h / w,
        legend=legend_entries((m for ms in masks for m in ms), class_names),
    )


def mask_grid(
    images: Sequence[np.ndarray],
    masks: Sequence[Sequence[np.ndarray | None]],
    titles: Sequence[str],
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.6,
    panel: int = PANEL,
) -> None:
    """PNG grid: one row per image: the image, then each of its masks blended over it.

    images: H×W×3 uint8; masks[i]: that image's masks (H×W class indices; None draws an empty
    panel), one per title. Columns are titled ``image`` then ``titles``; below the grid a
    legend names every class the masks show, next to its palette colour (``class_names``:
    indexed by class, background first; without them 0 reads ``background`` and the others
    ``class <i>``). Panels are ``panel`` px on their longer side, shaped like the first image.
    Written atomically.
    """
    save_figure(
        mask_grid_figure(images, masks, titles, class_names=class_names, alpha=alpha, panel=panel),
        path,
    )


def sample_grid_figure(
    samples: Sequence[Sample],
    class_names: Sequence[str],
    cols: int = 4,
    *,
    tile: int = 128,
    alpha: float = 0.5,
) -> Figure:
    """Dataset samples with their masks overlaid (see :func:`sample_grid`)."""
    if not samples:
        raise ValueError("sample_grid needs at least one sample")
    longest = max(8, tile // 6)  # characters that fit above a tile
    panels: list[Panel | None] = []
    for s in samples:
        img = np.asarray(s.image, dtype=np.uint8)
        if s.mask is not None:
            img = overlay_mask(img, s.mask, alpha, skip_background=True)
        names = [class_names[k + 1] for k in np.flatnonzero(s.labels) if k + 1 < len(class_names)]
        caption = ", ".join(names) or "(no label)"
        if len(caption) > longest:
            caption = caption[: longest - 1] + "…"
        panels.append(Panel(img, caption=caption))
    rows = [panels[i : i + cols] for i in range(0, len(panels), cols)]
    return grid_figure(
        rows,
        title="samples: labels above, masks overlaid (background untinted)",
        panel=tile,
        legend=legend_entries((s.mask for s in samples), class_names, skip=(0,)),
    )


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

    Each tile is ``tile`` px on its longer side (``cols`` per row), captioned with the
    sample's label names; a legend below names the classes the masks show with their colours.
    Background is left untinted; ignore (255) shows in the palette's off-white. ``class_names``
    includes background first. Written atomically.
    """
    save_figure(sample_grid_figure(samples, class_names, cols, tile=tile, alpha=alpha), path)


# ---------------------------------------------------------------------------------------------
# Confusion matrices


def confusion_side(num_classes: int, longest_name: int) -> int:
    """Height in pixels of a confusion-matrix figure: at least 640, growing with the number of
    classes (44 px a row, 24 beyond 30 classes) and with the longest class name."""
    cell = 44 if num_classes <= 30 else 24
    return max(640, 200 + 7 * longest_name + cell * num_classes)


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str]) -> Figure:
    """The row-normalised confusion matrix (see :func:`confusion_png`)."""
    import matplotlib
    from matplotlib.figure import Figure

    m = np.asarray(matrix, dtype=np.float64)
    n = m.shape[0]
    if m.shape != (n, n) or len(class_names) != n:
        raise ValueError(
            f"confusion_png: a {m.shape} matrix for {len(class_names)} class names; "
            "expected square and one name per row"
        )
    totals = m.sum(axis=1, keepdims=True)
    shares = np.full_like(m, np.nan)
    np.divide(m, totals, out=shares, where=totals > 0)
    side = confusion_side(n, max(len(c) for c in class_names))
    fig = Figure(figsize=((side + 110) / DPI, side / DPI), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(shares), cmap=cmap, vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels=list(class_names))
    ax.set_yticks(range(n), labels=list(class_names))
    ax.tick_params(axis="x", labelrotation=45)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
        label.set_rotation_mode("anchor")
    ax.set_xlabel("predicted", fontsize=_FONT + 1)
    ax.set_ylabel("true", fontsize=_FONT + 1)
    ax.set_title("confusion matrix: share of each true class's pixels", fontsize=_FONT + 1)
    fig.colorbar(im, ax=ax, label="share of the true class's pixels", shrink=0.8)
    if n <= 30:
        size = 9 if n <= 12 else 7
        for i in range(n):
            for j in range(n):
                v = shares[i, j]
                if np.isnan(v):
                    if j == 0:
                        ax.text(
                            (n - 1) / 2,
                            i,
                            "no pixels of this class",
                            ha="center",
                            va="center",
                            fontsize=size,
                            color="0.3",
                        )
                    continue
                colour = "white" if v > 0.5 else "black"
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=size, color=colour)
    return fig


def confusion_png(matrix: np.ndarray, class_names: Sequence[str], path: str | Path) -> None:
    """Row-normalised confusion matrix (rows: ground truth, columns: prediction) as a PNG.

    Every class is named in full on both axes (titled ``true`` and ``predicted``), each cell
    shows its share of the true class's pixels (up to 30 classes), a colour bar gives the
    scale and a row without pixels is grey. :func:`confusion_side` gives the height (at least
    640 px), the width adds the colour bar. Written atomically.
    """
    save_figure(confusion_figure(matrix, class_names), path)


def _rgb(colour: np.ndarray) -> RGB:
    r, g, b = (int(c) for c in colour)
    return r, g, b
