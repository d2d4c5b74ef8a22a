from __future__ import annotations

import numpy as np
import pytest
import torch

from pnoc.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MEAN_RGB,
    ColorJitter,
    Compose,
    Normalize,
    RandAugment,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResize,
    ToTensor,
    classification_train_transform,
    eval_transform,
    segmentation_train_transform,
)


def _coord_image(h: int = 40, w: int = 56) -> tuple[np.ndarray, np.ndarray]:
    """Image whose R, G channels encode x, y; mask = a function of (x, y) in 0..19."""
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([x, y, np.full_like(x, 7)], axis=-1).astype(np.uint8)
    mask = ((x // 8) * 3 + (y // 8)) % 20
    return image, mask.astype(np.uint8)


def _mask_of(image: np.ndarray) -> np.ndarray:
    x, y = image[..., 0].astype(int), image[..., 1].astype(int)
    return (((x // 8) * 3 + (y // 8)) % 20).astype(np.uint8)


def _blocky(h: int = 64, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Large constant blocks: image colour = 40 × class, so alignment survives interpolation."""
    y, x = np.mgrid[0:h, 0:w]
    mask = ((x // 16) + 2 * (y // 16)) % 6
    image = np.repeat((mask * 40 + 20)[..., None], 3, axis=-1).astype(np.uint8)
    return image, mask.astype(np.uint8)


def _agreement(image: np.ndarray, mask: np.ndarray) -> float:
    valid = mask != 255
    pred = np.clip(np.rint((image[..., 0].astype(float) - 20) / 40), 0, 5)
    return float((pred[valid] == mask[valid]).mean())


def test_flip_keeps_alignment() -> None:
    image, mask = _coord_image()
    out_i, out_m = RandomHorizontalFlip(p=1.0)(image, mask, np.random.default_rng(0))
    assert np.array_equal(out_i[:, 0, 0], np.full(40, 55))
    assert np.array_equal(_mask_of(out_i), out_m)
    same_i, same_m = RandomHorizontalFlip(p=0.0)(image, mask, np.random.default_rng(0))
    assert np.array_equal(same_i, image) and np.array_equal(same_m, mask)


@pytest.mark.parametrize("size", [24, 64])
def test_crop_keeps_alignment_and_pads(size: int) -> None:
    image, mask = _coord_image()
    for seed in range(10):
        out_i, out_m = RandomCrop(size)(image, mask, np.random.default_rng(seed))
        assert out_i.shape == (size, size, 3) and out_m.shape == (size, size)
        valid = out_m != 255
        assert np.array_equal(_mask_of(out_i)[valid], out_m[valid])
        if size > 56:  # padded region: mean colour in the image, ignore in the mask
            assert (~valid).any()
            assert (out_i[~valid] == MEAN_RGB).all()


def test_crop_without_mask() -> None:
    image, _ = _coord_image()
    out, m = RandomCrop((20, 30))(image, None, np.random.default_rng(0))
    assert out.shape == (20, 30, 3) and m is None


def test_random_resize_scale_and_alignment() -> None:
    image, mask = _blocky()
    for seed in range(5):
        t = RandomResize((0.5, 2.0), base_size=100)
        out_i, out_m = t(image, mask, np.random.default_rng(seed))
        assert out_i.shape[:2] == out_m.shape
        assert 50 <= out_i.shape[0] <= 200
        assert _agreement(out_i, out_m) > 0.9
    out_i, _ = RandomResize((1.0, 1.0))(image, None, np.random.default_rng(0))
    assert out_i.shape == image.shape


def test_color_jitter_changes_colours_only() -> None:
    image, mask = _coord_image()
    out_i, out_m = ColorJitter(0.4, 0.4, 0.4, 0.1)(image, mask, np.random.default_rng(1))
    assert out_i.shape == image.shape and out_i.dtype == np.uint8
    assert out_m is mask and not np.array_equal(out_i, image)


@pytest.mark.parametrize("op", ["rotate", "shear_x", "shear_y", "translate_x", "translate_y"])
def test_randaugment_geometric_ops_move_mask(op: str) -> None:
    image, mask = _blocky()
    out_i, out_m = RandAugment(1, 30, ops=[op])(image, mask, np.random.default_rng(0))
    assert out_i.shape == image.shape and out_m.shape == mask.shape
    assert (out_m == 255).any()  # something was moved in from outside
    assert _agreement(out_i, out_m) > 0.9


def test_randaugment_all_ops_run_and_are_deterministic() -> None:
    image, _ = _coord_image()
    ra = RandAugment(3, 15)
    for seed in range(20):
        a, _ = ra(image, None, np.random.default_rng(seed))
        b, _ = ra(image, None, np.random.default_rng(seed))
        assert a.shape == image.shape and a.dtype == np.uint8 and np.array_equal(a, b)
    with pytest.raises(ValueError):
        RandAugment(2, 31)


def test_normalize_and_to_tensor() -> None:
    image, mask = _coord_image()
    x, m = Compose([Normalize(), ToTensor()])(image, mask, np.random.default_rng(0))
    assert x.shape == (3, 40, 56) and x.dtype == torch.float32
    assert m.shape == (40, 56) and m.dtype == torch.int64
    expected = (image[5, 6, 1] / 255 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]
    assert float(x[1, 5, 6]) == pytest.approx(expected, rel=1e-5)
    # The mean colour normalises to ~0, so mean-padding equals zero-padding.
    pad, _ = Normalize()(np.array([[MEAN_RGB]], np.uint8), None)
    assert np.abs(pad).max() < 0.01


def test_factories_shapes_and_determinism() -> None:
    image, mask = _blocky(90, 70)
    cls = classification_train_transform(48, randaugment=(2, 10))
    seg = segmentation_train_transform(48, (0.5, 1.5))
    a, none = cls(image, None, np.random.default_rng(3))
    b, _ = cls(image, None, np.random.default_rng(3))
    c, _ = cls(image, None, np.random.default_rng(4))
    assert none is None and a.shape == (3, 48, 48)
    assert torch.equal(a, b) and not torch.equal(a, c)
    x, m = seg(image, mask, np.random.default_rng(0))
    assert x.shape == (3, 48, 48) and m.shape == (48, 48) and m.dtype == torch.int64
    x, m = eval_transform()(image, mask, np.random.default_rng(0))
    assert x.shape == (3, 90, 70) and torch.equal(m, torch.from_numpy(mask.astype(np.int64)))
    x, m = eval_transform(45)(image, mask, np.random.default_rng(0))
    assert x.shape == (3, 45, 35) and m.shape == (45, 35)


def test_segmentation_pipeline_keeps_alignment() -> None:
    image, mask = _blocky(80, 80)
    steps = segmentation_train_transform(64, (0.7, 1.3)).transforms[:-2]  # up to the crop
    for seed in range(10):
        out_i, out_m = Compose(steps)(image, mask, np.random.default_rng(seed))
        assert _agreement(out_i, out_m) > 0.9
