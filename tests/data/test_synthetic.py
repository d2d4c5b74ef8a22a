from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pnoc.data import synthetic, synthetic_scene, synthetic_shapes
from pnoc.data.synthetic import CLASS_NAMES, generate_synthetic, render_scene
from pnoc.data.voc import VOCDataset
from pnoc.errors import ConfigError
from pnoc.viz import sample_grid, sample_grid_figure


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _dilate(m: np.ndarray, r: int) -> np.ndarray:
    pad = np.pad(m, r)
    out = np.zeros_like(m)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= pad[r + dy : r + dy + m.shape[0], r + dx : r + dx + m.shape[1]]
    return out


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    args = dict(num_train=6, num_val=2, num_classes=5, image_size=64)
    generate_synthetic(tmp_path / "a", seed=7, **args)
    generate_synthetic(tmp_path / "b", seed=7, **args)
    generate_synthetic(tmp_path / "c", seed=8, **args)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert len(a) == 8 * 3 + 3  # jpg+png+xml per image, two lists, class_names.txt
    assert a == b
    assert a.keys() == c.keys()
    differing = [k for k in a if a[k] != c[k] and k.endswith(".jpg")]
    assert len(differing) == 8


def test_layout_and_reader(synthetic_root: Path) -> None:
    for d in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        assert (synthetic_root / d).is_dir()
    names = (synthetic_root / "class_names.txt").read_text().split()
    assert names == ["background", *CLASS_NAMES[:6]]
    train = VOCDataset(synthetic_root, "train")
    val = VOCDataset(synthetic_root, "val")
    assert (len(train), len(val)) == (12, 4)
    assert train.num_classes == 6 and train.class_names == names
    s = train[0]
    assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
    assert s.mask is not None and s.mask.shape == (64, 64)
    with Image.open(synthetic_root / "SegmentationClass" / f"{s.id}.png") as im:
        assert im.mode == "P"
        assert im.getpalette()[3:6] == [128, 0, 0]  # VOC palette, class 1
    assert train.validate() == 12


def test_xml_labels_equal_mask_labels(synthetic_root: Path) -> None:
    for split in ("train", "val"):
        ds = VOCDataset(synthetic_root, split)
        for i, image_id in enumerate(ds.ids):
            mask = ds.load_mask(image_id)
            from_mask = np.zeros(ds.num_classes, np.float32)
            vals = np.unique(mask)
            from_mask[vals[(vals > 0) & (vals < 255)] - 1] = 1
            np.testing.assert_array_equal(ds.labels(i), from_mask, err_msg=image_id)
            assert ds.labels(i).sum() >= 1


def test_ignore_band_lies_on_object_borders(synthetic_root: Path) -> None:
    ds = VOCDataset(synthetic_root, "train")
    for image_id in ds.ids:
        mask = ds.load_mask(image_id)
        band = mask == 255
        assert band.any(), image_id
        # The band is thin (at most 2 px): every ignore pixel has a labelled pixel within 2 px,
        # and the band touches the foreground.
        labelled = ~band
        fg = (mask > 0) & ~band
        near_labelled, near_fg = _dilate(labelled, 2), _dilate(fg, 1)
        assert near_labelled[band].all(), image_id
        assert near_fg[band].mean() > 0.5, image_id
        assert band.mean() < 0.15


def test_scene_structure_and_difficulty() -> None:
    n_obj, bias, scales = [], [], []
    for i in range(60):
        scene = render_scene(
            seed=0, split="train", index=i, num_classes=6, image_size=96, cooccurrence=0.7
        )
        assert 1 <= len(scene.objects) <= 3
        assert 0 <= scene.num_distractors <= 2
        n_obj.append(len(scene.objects))
        bias.append(scene.background_from_class)
        for o in scene.objects:
            assert o.visible_fraction >= synthetic_scene.MIN_VISIBLE - 0.05
            xmin, ymin, xmax, ymax = o.bbox
            assert 1 <= xmin <= xmax <= 96 and 1 <= ymin <= ymax <= 96
            scales.append(max(xmax - xmin, ymax - ymin) + 1)
    assert {1, 2, 3} <= set(n_obj)
    assert 0.6 <= np.mean(bias) <= 0.95
    # Bodies are large: typical extent between 20 % and 55 % of the image side.
    assert 0.2 * 96 < np.median(scales) < 0.55 * 96


def test_mark_is_class_specific_and_body_shared() -> None:
    """The saturated mark colours identify the class; the body texture does not."""
    scene = render_scene(seed=1, split="train", index=0, num_classes=6, image_size=128)
    hsv = np.asarray(Image.fromarray(scene.image).convert("HSV")).astype(int)
    fg = (scene.mask > 0) & (scene.mask < 255)
    saturated = fg & (hsv[..., 1] > 200) & (hsv[..., 2] > 150)
    body = fg & ~saturated
    # The mark covers a minority of the object's pixels, the shared body the rest.
    assert 0.03 < saturated.sum() / fg.sum() < 0.3
    assert body.sum() > saturated.sum()


def test_cooccurrence_bias_is_measurable(tmp_path: Path) -> None:
    """Nearest-centroid on the mean background colour predicts a present class well above chance."""
    root = tmp_path / "bias"
    stats = generate_synthetic(
        root, num_train=90, num_val=60, num_classes=6, image_size=48, seed=0, cooccurrence=0.7
    )
    assert 0.6 < stats.background_bias < 0.95

    def features(split: str) -> tuple[np.ndarray, np.ndarray]:
        ds = VOCDataset(root, split)
        feats, labels = [], []
        for i, image_id in enumerate(ds.ids):
            img, mask = ds.load_image(image_id).astype(float), ds.load_mask(image_id)
            feats.append(img[mask == 0].mean(0))
            labels.append(ds.labels(i))
        return np.array(feats), np.array(labels)

    xtr, ytr = features("train")
    xva, yva = features("val")
    centroids = np.stack([xtr[ytr[:, k] == 1].mean(0) for k in range(6)])
    pred = np.argmin(((xva[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    hit = yva[np.arange(len(pred)), pred].mean()
    chance = yva.mean()  # probability that a random class is present
    assert hit > chance + 0.25, (hit, chance)


def test_stats(tmp_path: Path) -> None:
    stats = generate_synthetic(
        tmp_path / "s", num_train=10, num_val=5, num_classes=20, image_size=64, seed=1
    )
    d = stats.to_dict()
    assert d["num_images"] == {"train": 10, "val": 5}
    assert d["class_names"] == list(CLASS_NAMES)
    assert set(d["class_image_counts"]["train"]) == set(CLASS_NAMES)
    ds = VOCDataset(tmp_path / "s", "train")
    np.testing.assert_array_equal(
        ds.label_matrix().sum(0), [d["class_image_counts"]["train"][n] for n in CLASS_NAMES]
    )
    assert 1.0 <= d["mean_objects_per_image"] <= 3.0
    assert 0.03 < d["foreground_fraction"] < 0.6
    assert 0.0 < d["ignore_fraction"] < 0.1
    assert 0 <= d["mean_distractors_per_image"] <= 2


def test_all_twenty_shapes_render() -> None:
    seen = set()
    for i in range(80):
        seen |= {o.name for o in render_scene(2, "val", i, 20, 64).objects}
    assert seen == set(CLASS_NAMES)


def test_interrupted_generation_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = synthetic.render_scene

    def failing(*args, **kwargs):  # noqa: ANN002, ANN003
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_scene", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(
            tmp_path / "ds", num_train=5, num_val=1, num_classes=3, image_size=48, seed=0
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_classes=21),
        dict(num_classes=0),
        dict(image_size=16),
        dict(num_train=0),
        dict(seed=-1),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    args = dict(num_train=2, num_val=1, num_classes=3, image_size=48, seed=0) | kwargs
    with pytest.raises(ConfigError):
        generate_synthetic(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


def test_sample_grid(synthetic_root: Path, tmp_path: Path) -> None:
    ds = VOCDataset(synthetic_root, "train")
    out = tmp_path / "grid.png"
    samples = [ds[i] for i in range(6)]
    sample_grid(samples, ds.class_names, out, cols=4, tile=64)
    fig = sample_grid_figure(samples, ds.class_names, cols=4, tile=64)
    width, height = (fig.get_size_inches() * fig.dpi).round().astype(int)
    with Image.open(out) as im:
        assert im.size == (width, height)
    assert width >= 4 * 64 and height >= 2 * 64
    (legend,) = fig.legends
    assert {t.get_text() for t in legend.get_texts()} <= {*ds.class_names[1:], "ignore"}
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_marks_are_unique_per_class() -> None:
    specs = {(m.colour, m.second, m.pattern) for m in map(synthetic_shapes.mark_for, range(20))}
    assert len(specs) == 20


def test_package_reexports() -> None:
    import pnoc.data

    assert pnoc.data.generate_synthetic is generate_synthetic
    assert pnoc.data.VOCDataset is VOCDataset
    with pytest.raises(AttributeError):
        pnoc.data.nope  # noqa: B018


def test_cooccurrence_is_a_knob(tmp_path: Path) -> None:
    """The default bias is mild; 0 leaves only chance matches; out of [0, 1] is refused."""
    args = dict(num_train=80, num_val=1, num_classes=6, image_size=32, seed=0)
    default = generate_synthetic(tmp_path / "d", **args).background_bias
    none = generate_synthetic(tmp_path / "n", cooccurrence=0.0, **args).background_bias
    strong = generate_synthetic(tmp_path / "s", cooccurrence=0.9, **args).background_bias
    assert none < default < strong
    assert strong > 0.85 and none < 0.35
    with pytest.raises(ConfigError, match="cooccurrence"):
        generate_synthetic(tmp_path / "x", cooccurrence=1.5, **args)


def test_body_size_and_mark_area_are_knobs(tmp_path: Path) -> None:
    """Larger bodies come out larger; the mark keeps its share; bad ranges are refused."""

    def extents(**kw) -> tuple[float, float]:
        sizes, shares = [], []
        for i in range(40):
            scene = render_scene(0, "train", i, 6, 96, **kw)
            hsv = np.asarray(Image.fromarray(scene.image).convert("HSV")).astype(int)
            fg = (scene.mask > 0) & (scene.mask < 255)
            mark = fg & (hsv[..., 1] > 200) & (hsv[..., 2] > 150)
            shares.append(mark.sum() / max(fg.sum(), 1))
            for o in scene.objects:
                xmin, ymin, xmax, ymax = o.bbox
                sizes.append(max(xmax - xmin, ymax - ymin) + 1)
        return float(np.median(sizes)), float(np.median(shares))

    small, small_mark = extents(body_size=(0.2, 0.3))
    large, large_mark = extents(body_size=(0.45, 0.6))
    assert large > 1.5 * small
    assert abs(large_mark - small_mark) < 0.05
    _, tiny_mark = extents(body_size=(0.45, 0.6), mark_area=(0.03, 0.04))
    assert tiny_mark < 0.6 * large_mark

    args = dict(num_train=2, num_val=1, num_classes=3, image_size=32, seed=0)
    with pytest.raises(ConfigError, match=r"body_size.*\[0.5, 0.2\]"):
        generate_synthetic(tmp_path / "x", body_size=(0.5, 0.2), **args)
    with pytest.raises(ConfigError, match="mark_area"):
        generate_synthetic(tmp_path / "y", mark_area=(0.1, 1.5), **args)
