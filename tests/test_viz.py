"""Figures of pnoc.viz: titled columns, class-colour legends, colour bars, labelled confusion
matrices; each PNG exactly the size of its figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from pnoc.data.base import IGNORE_INDEX, Sample
from pnoc.viz import (
    PANEL,
    Panel,
    colorize,
    confusion_figure,
    confusion_png,
    confusion_side,
    grid_figure,
    legend_entries,
    mask_grid,
    mask_grid_figure,
    sample_grid,
    sample_grid_figure,
)

NAMES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle"]


def figure_px(fig: Figure) -> tuple[int, int]:
    w, h = fig.get_size_inches() * fig.dpi
    return round(w), round(h)


def figure_texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.texts]


def legend(fig: Figure) -> dict[str, tuple[float, ...]]:
    """Legend label -> swatch RGB (0..1) of the figure's only legend."""
    (leg,) = fig.legends
    return {
        text.get_text(): tuple(handle.get_facecolor()[:3])
        for text, handle in zip(leg.get_texts(), leg.legend_handles, strict=True)
    }


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def _masks(rng: np.random.Generator, h: int, w: int) -> list[np.ndarray]:
    gt = rng.integers(0, 3, (h, w)).astype(np.uint8)
    gt[0, :3] = IGNORE_INDEX
    pred = np.full((h, w), 4, np.uint8)
    pred[: h // 2] = 0
    return [gt, pred]


def test_mask_grid_titles_columns_and_names_every_shown_class(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (24, 32, 3), dtype=np.uint8) for _ in range(3)]
    masks = [_masks(rng, 24, 32) for _ in range(2)] + [[None, np.full((12, 16), 5, np.uint8)]]
    fig = mask_grid_figure(images, masks, ["ground truth", "prediction"], class_names=NAMES)

    assert figure_texts(fig) == ["image", "ground truth", "prediction"]
    shown = legend(fig)
    assert list(shown) == ["background", "aeroplane", "bicycle", "boat", "bottle", "ignore"]
    for name, index in [*((n, NAMES.index(n)) for n in NAMES if n in shown), ("ignore", 255)]:
        expected = colorize(np.array([[index]]))[0, 0] / 255.0
        np.testing.assert_allclose(shown[name], expected)
    assert "no mask" in [t.get_text() for ax in fig.axes for t in ax.texts]

    path = tmp_path / "grid.png"
    mask_grid(images, masks, ["ground truth", "prediction"], path, class_names=NAMES)
    assert png_size(path) == figure_px(fig)
    width, height = figure_px(fig)
    assert width >= 3 * PANEL and height >= 3 * PANEL * 24 / 32
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_mask_grid_without_class_names_numbers_the_classes() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    mask = np.full((8, 8), 7, np.uint8)
    mask[0] = 0
    fig = mask_grid_figure([image], [[mask]], ["pseudo-mask"])
    assert list(legend(fig)) == ["background", "class 7"]


def test_mask_grid_rejects_misaligned_rows() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="row 0 has 1 masks for 2"):
        mask_grid_figure([image], [[None]], ["a", "b"])


def test_sample_grid_captions_tiles_and_legends_foreground(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    samples = []
    for i in range(5):
        mask = np.zeros((20, 20), np.uint8)
        mask[5:10, 5:10] = 1 + i % 2
        labels = np.zeros(len(NAMES) - 1, np.float32)
        labels[i % 2] = 1.0
        image = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
        samples.append(Sample(f"s{i}", image, labels, mask))
    fig = sample_grid_figure(samples, NAMES, cols=4, tile=64)
    captions = [ax.get_title() for ax in fig.axes]
    assert captions == ["aeroplane", "bicycle", "aeroplane", "bicycle", "aeroplane"]
    assert list(legend(fig)) == ["aeroplane", "bicycle"]  # background is left untinted
    assert figure_texts(fig) and "masks" in figure_texts(fig)[0]

    path = tmp_path / "samples.png"
    sample_grid(samples, NAMES, path, cols=4, tile=64)
    width, height = png_size(path)
    assert (width, height) == figure_px(fig)
    assert width >= 4 * 64 and height >= 2 * 64


def test_confusion_matrix_names_both_axes_in_full(tmp_path: Path) -> None:
    matrix = np.arange(36).reshape(6, 6)
    matrix[2] = 0  # a class without pixels
    fig = confusion_figure(matrix, NAMES)
    ax, colorbar = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")
    assert "share" in colorbar.get_ylabel()
    cells = [t.get_text() for t in ax.texts]
    assert "no pixels of this class" in cells
    assert f"{matrix[1, 1] / matrix[1].sum():.2f}" in cells

    path = tmp_path / "confusion.png"
    confusion_png(matrix, NAMES, path)
    width, height = png_size(path)
    assert (width, height) == figure_px(fig)
    assert min(width, height) >= 640


def test_confusion_matrix_grows_with_the_classes() -> None:
    six = figure_px(confusion_figure(np.eye(6), NAMES))
    names = [f"class_{i}" for i in range(21)]
    many = figure_px(confusion_figure(np.eye(21), names))
    assert many[0] > six[0] and many[1] > six[1]
    assert many[1] == confusion_side(21, len("class_10"))
    with pytest.raises(ValueError, match="one name per row"):
        confusion_figure(np.eye(3), NAMES)


def test_grid_widens_for_titles_legend_and_colour_bar() -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    plain = figure_px(grid_figure([[Panel(image)]], panel=50))
    titled = figure_px(
        grid_figure([[Panel(image)]], column_titles=["a long column title"], panel=50)
    )
    with_bar = figure_px(grid_figure([[Panel(image)]], panel=50, colorbar="scale"))
    entries = legend_entries([np.array([[0, 3]], np.uint8)], NAMES)
    with_legend = grid_figure([[Panel(image)]], panel=50, legend=entries)
    assert titled[0] > plain[0] and with_bar[0] > plain[0]
    assert figure_px(with_legend)[1] > plain[1]
    assert list(legend(with_legend)) == ["background", "bird"]
    with pytest.raises(ValueError, match="2 column titles for 1 columns"):
        grid_figure([[Panel(image)]], column_titles=["a", "b"])
