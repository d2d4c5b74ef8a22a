"""Multi-scale + flip CAMs, normalisation, the npz record format and overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pnoc.cam.inference import (
    cam_overlay_figure,
    cam_overlay_grid,
    cams_to_mask,
    cams_to_record,
    load_cam_npz,
    multiscale_cams,
    normalize_cams,
    save_cam_npz,
)
from pnoc.errors import DatasetError
from pnoc.models.cam import CAMNet
from pnoc.viz import PANEL


@pytest.fixture(scope="module")
def model() -> CAMNet:
    torch.manual_seed(0)
    return CAMNet("resnet18", 3).train()


def test_flip_equivariance(model: CAMNet) -> None:
    x = torch.randn(2, 3, 32, 32)
    cams = multiscale_cams(model, x)
    assert cams.shape == (2, 3, 32, 32) and (cams >= 0).all()
    assert model.training  # mode restored
    flipped = multiscale_cams(model, x.flip(-1))
    torch.testing.assert_close(flipped, cams.flip(-1), rtol=1e-4, atol=1e-5)
    symmetric = torch.cat([x[..., :16], x[..., :16].flip(-1)], dim=-1)
    sym_cams = multiscale_cams(model, symmetric[0], scales=(0.5, 1.0, 1.5))
    assert sym_cams.shape == (1, 3, 32, 32)
    torch.testing.assert_close(sym_cams, sym_cams.flip(-1), rtol=1e-4, atol=1e-5)


def test_single_scale_no_flip_is_the_forward(model: CAMNet) -> None:
    x = torch.randn(1, 3, 32, 32)
    cams = multiscale_cams(model, x, scales=(1.0,), flip=False)
    with torch.no_grad():
        model.eval()
        expected = torch.nn.functional.interpolate(
            torch.relu(model(x)), size=(32, 32), mode="bilinear", align_corners=False
        )
        model.train()
    torch.testing.assert_close(cams, expected)


def test_normalize_and_record() -> None:
    cams = torch.rand(1, 3, 5, 6) * 7
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    norm = normalize_cams(cams, labels)
    assert torch.allclose(norm[0, 0].max(), torch.tensor(1.0), atol=1e-4)
    assert norm[0, 1].abs().sum() == 0
    rec, classes = cams_to_record(norm[0], labels[0])
    assert rec.dtype == np.float16 and rec.shape == (2, 5, 6)
    assert classes.tolist() == [1, 3]
    mask = cams_to_mask(rec.astype(np.float32), classes, threshold=0.5)
    assert mask.shape == (5, 6) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1, 3}
    assert (cams_to_mask(rec, classes, threshold=2.0) == 0).all()
    assert (cams_to_mask(np.zeros((0, 5, 6)), np.zeros(0, int), 0.1) == 0).all()


def test_npz_roundtrip_and_errors(tmp_path) -> None:
    rec = np.random.rand(2, 4, 5).astype(np.float16)
    classes = np.array([2, 5])
    path = tmp_path / "cams" / "img1.npz"
    save_cam_npz(path, rec, classes)
    assert sorted(p.name for p in path.parent.iterdir()) == ["img1.npz"]  # no temp files left
    got, got_classes = load_cam_npz(path)
    assert np.array_equal(got, rec) and got.dtype == np.float16
    assert got_classes.tolist() == [2, 5] and got_classes.dtype == np.int64

    with pytest.raises(DatasetError, match="not found"):
        load_cam_npz(tmp_path / "missing.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DatasetError) as info:
        load_cam_npz(corrupt)
    assert str(corrupt) in str(info.value)
    wrong = tmp_path / "wrong.npz"
    np.savez_compressed(wrong, cams=rec.astype(np.float32), classes=classes)
    with pytest.raises(DatasetError, match="float16"):
        load_cam_npz(wrong)
    with pytest.raises(Exception, match="1-based"):
        save_cam_npz(tmp_path / "bad.npz", rec, np.array([0, 1]))


def test_overlay_grid(tmp_path) -> None:
    from PIL import Image

    images = [np.zeros((20, 30, 3), np.uint8), np.full((10, 10, 3), 200, np.uint8)]
    cams = [np.random.rand(2, 20, 30).astype(np.float16), np.random.rand(1, 10, 10)]
    classes = [np.array([1, 2]), np.array([2])]
    names = ["background", "cat", "dog"]
    fig = cam_overlay_figure(images, cams, classes, names)
    assert [t.get_text() for t in fig.texts][1:] == ["image", "CAM", "CAM"]
    assert [ax.get_title() for ax in fig.axes] == ["", "cat", "dog", "", "dog", ""]
    assert fig.axes[-1].get_ylabel().startswith("CAM activation")  # the colour bar
    path = tmp_path / "overlay.png"
    cam_overlay_grid(images, cams, classes, names, path)
    width, height = (fig.get_size_inches() * fig.dpi).round().astype(int)
    with Image.open(path) as im:
        assert im.size == (width, height)
    assert width >= 3 * PANEL and height >= 2 * PANEL * 20 / 30
