"""Prediction with flip, PNG storage, orientation detection, confusion counts and overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pnoc.errors import PnocError
from pnoc.models.ccam import CCAMNet
from pnoc.saliency.inference import (
    load_saliency_png,
    orientation,
    orientation_means,
    predict_saliency,
    saliency_confusion,
    saliency_overlay_figure,
    saliency_overlay_grid,
    saliency_sweep_confusion,
    save_saliency_png,
)
from pnoc.viz import PANEL


@pytest.fixture(scope="module")
def model() -> CCAMNet:
    torch.manual_seed(0)
    return CCAMNet("resnet18").train()


def test_predict_is_flip_equivariant(model: CCAMNet) -> None:
    x = torch.randn(3, 40, 56)
    sal = predict_saliency(model, x)
    assert sal.shape == (40, 56) and sal.dtype == np.float32
    assert sal.min() >= 0 and sal.max() <= 1
    assert model.training  # mode restored
    np.testing.assert_allclose(predict_saliency(model, x.flip(-1)), sal[:, ::-1], atol=1e-5)
    single = predict_saliency(model, x, flip=False)
    assert single.shape == (40, 56)


def test_orientation_detects_an_inverted_map() -> None:
    rng = np.random.default_rng(0)
    hints = [rng.random((6, 7)).astype(np.float32), rng.random((4, 4)).astype(np.float32)]
    good = [h * 0.8 + 0.1 for h in hints]
    assert not orientation(good, hints, 0.4)
    assert orientation([1 - s for s in good], hints, 0.4)
    fg, bg = orientation_means(torch.tensor(good[0]), torch.tensor(hints[0]), 0.4)
    assert fg > bg
    # No pixel above δ_fg: no evidence, not inverted.
    assert not orientation(good[0], np.zeros((6, 7)), 0.4)
    assert np.isnan(orientation_means(good[0], np.zeros((6, 7)), 0.4)[0])


def test_png_round_trip_and_errors(tmp_path: Path) -> None:
    sal = np.linspace(0, 1, 30, dtype=np.float32).reshape(5, 6)
    path = tmp_path / "out" / "a.png"
    save_saliency_png(path, sal)
    back = load_saliency_png(path, expected_size=(5, 6))
    assert back.dtype == np.float32 and np.abs(back - sal).max() <= 0.5 / 255 + 1e-6
    with Image.open(path) as im:
        assert im.mode == "L"
    with pytest.raises(PnocError, match="a.png.*differs"):
        load_saliency_png(path, expected_size=(6, 5))
    with pytest.raises(PnocError, match="missing.png"):
        load_saliency_png(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(PnocError, match="bad.png"):
        load_saliency_png(bad)


def test_confusion_counts() -> None:
    sal = np.array([[0.9, 0.1, 0.6], [0.2, 0.5, 0.7]])
    gt = np.array([[1, 0, 0], [2, 255, 3]], dtype=np.uint8)
    cm = saliency_confusion(sal, gt, threshold=0.5)
    # valid: (0.9,fg)=TP, (0.1,bg)=TN, (0.6,bg)=FP, (0.2,fg)=FN, (0.7,fg)=TP; 255 ignored.
    np.testing.assert_array_equal(cm, [[1, 1], [1, 2]])
    assert cm.dtype == np.int64


def test_overlay_grid(tmp_path: Path) -> None:
    images = [np.zeros((8, 10, 3), np.uint8), np.full((16, 20, 3), 200, np.uint8)]
    sals = [np.random.default_rng(0).random((8, 10)), np.ones((16, 20))]
    fig = saliency_overlay_figure(images, sals)
    title, *columns = [t.get_text() for t in fig.texts]
    assert "saliency" in title
    assert columns == ["image", "saliency overlay", "saliency map"]
    assert fig.axes[-1].get_ylabel().startswith("saliency")  # the colour bar
    path = tmp_path / "grid.png"
    saliency_overlay_grid(images, sals, path)
    width, height = (fig.get_size_inches() * fig.dpi).round().astype(int)
    with Image.open(path) as im:
        assert im.size == (width, height)
    assert width >= 3 * PANEL and height >= 2 * PANEL * 8 / 10


def test_sweep_confusion_equals_one_threshold_at_a_time() -> None:
    rng = np.random.default_rng(0)
    sal = rng.random((12, 10)).astype(np.float32)
    sal[0, :3] = [0.25, 0.5, 0.75]  # values exactly on thresholds count as foreground
    gt = rng.integers(0, 3, (12, 10)).astype(np.uint8)
    gt[5] = 255
    thresholds = [0.75, 0.05, 0.25, 0.5, 0.95]  # any order
    sweep = saliency_sweep_confusion(sal, gt, thresholds)
    assert sweep.shape == (5, 2, 2)
    for i, t in enumerate(thresholds):
        np.testing.assert_array_equal(sweep[i], saliency_confusion(sal, gt, t))
