"""The generator's image shapes and folder layouts (voc, voc_sbd, coco) and their readers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image
from pycocotools import mask as mask_utils

from pnoc.data.coco import COCODataset
from pnoc.data.synthetic import COCO_CATEGORIES, CROWD_EVERY, generate_synthetic, render_scene
from pnoc.data.voc import VOCDataset
from pnoc.errors import ConfigError

SMALL = dict(num_train=6, num_val=2, num_classes=6, image_size=48, seed=2)
SHAPE = (64, 40)  # width, height


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_default_scenes_are_pinned() -> None:
    """The default (square) scenes are those of the generator before shapes and layouts existed.

    Pinned: the masks (pure arithmetic, the same on every machine), the background textures and
    distractor counts (drawn after the texture, so they also pin its random draws) and the mean
    image values, with a tolerance for last-bit differences of vectorised sin/cos on other CPUs.
    """
    digest = hashlib.sha256()
    seen = []
    for i in range(8):
        for split in ("train", "val"):
            s = render_scene(0, split, i, 6, 96, 0.2, (0.36, 0.6))
            digest.update(s.mask.tobytes())
            seen.append((s.background_texture, s.num_distractors, float(s.image.mean())))
    assert digest.hexdigest() == (
        "9c7ba3697f10000baeb7670b64dd9e9dd326b2aafebcc6b428425bbbfcbe6947"
    )
    expected = [
        (5, 2, 139.04), (5, 1, 143.561), (6, 2, 113.634), (2, 2, 136.783), (4, 0, 126.914),
        (2, 0, 148.478), (7, 0, 142.419), (8, 2, 127.701), (3, 1, 131.845), (1, 0, 128.062),
        (4, 2, 133.193), (0, 2, 116.859), (5, 2, 145.901), (2, 0, 164.009), (0, 2, 130.865),
        (4, 2, 125.736),
    ]  # fmt: skip
    assert [s[:2] for s in seen] == [e[:2] for e in expected]
    np.testing.assert_allclose([s[2] for s in seen], [e[2] for e in expected], atol=0.01)


def test_null_shape_is_the_square_image_size(tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "a", **SMALL)
    generate_synthetic(tmp_path / "b", **(SMALL | dict(image_size=96, shape=(48, 48))))
    a = _digest(tmp_path / "a")
    assert a == _digest(tmp_path / "b")
    for layout in ("voc_sbd", "coco"):  # layouts change the files, not the images
        generate_synthetic(tmp_path / layout, layout=layout, **SMALL)
    with Image.open(tmp_path / "voc_sbd" / "JPEGImages" / "train_00005.jpg") as im:
        assert im.size == (48, 48)
    coco_val = tmp_path / "coco" / "val2014" / "COCO_val2014_000001000002.jpg"
    assert hashlib.sha256(coco_val.read_bytes()).hexdigest() == a["JPEGImages/val_00001.jpg"]


def test_shape_is_honoured(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    stats = generate_synthetic(root, shape=SHAPE, **SMALL)
    assert (stats.width, stats.height, stats.image_size) == (64, 40, 48)
    ds = VOCDataset(root, "train")
    for i, image_id in enumerate(ds.ids):
        s = ds[i]
        assert s.image.shape == (40, 64, 3) and s.mask.shape == (40, 64)
        text = (root / "Annotations" / f"{image_id}.xml").read_text()
        assert "<width>64</width>" in text and "<height>40</height>" in text
        vals = np.unique(s.mask)
        from_mask = np.zeros(ds.num_classes, np.float32)
        from_mask[vals[(vals > 0) & (vals < 255)] - 1] = 1
        np.testing.assert_array_equal(ds.labels(i), from_mask)
    assert ds.validate() == len(ds)


def test_object_sizes_follow_the_shorter_side() -> None:
    def median_extent(image_size: int | tuple[int, int]) -> float:
        sizes = []
        for i in range(30):
            for o in render_scene(0, "train", i, 6, image_size).objects:
                xmin, ymin, xmax, ymax = o.bbox
                sizes.append(max(xmax - xmin, ymax - ymin) + 1)
        return float(np.median(sizes))

    square = median_extent(96)
    assert 0.8 * square < median_extent((192, 96)) < 1.25 * square
    assert 0.8 * square < median_extent((96, 160)) < 1.25 * square
    wide = render_scene(0, "train", 3, 6, (192, 96))
    assert wide.image.shape == (96, 192, 3) and wide.label.shape == (96, 192)
    # Objects use the whole width: some lie in the right half.
    centres = [
        (o.bbox[0] + o.bbox[2]) / 2
        for i in range(30)
        for o in render_scene(0, "train", i, 6, (192, 96)).objects
    ]
    assert max(centres) > 130


def test_voc_sbd_layout(tmp_path: Path) -> None:
    root = tmp_path / "sbd"
    generate_synthetic(root, layout="voc_sbd", shape=SHAPE, **SMALL)
    generate_synthetic(tmp_path / "again", layout="voc_sbd", shape=SHAPE, **SMALL)
    assert _digest(root) == _digest(tmp_path / "again")  # .mat headers hold no date

    train_ids = [f"train_{i:05d}" for i in range(6)]
    listed = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    assert listed == train_ids[:3]  # like VOC: only the ids with a PNG
    assert (root / "ImageSets/Segmentation/val.txt").read_text().split() == [
        "val_00000",
        "val_00001",
    ]
    pngs = sorted(p.stem for p in (root / "SegmentationClass").iterdir())
    assert pngs == [*train_ids[:3], "val_00000", "val_00001"]
    assert len(list((root / "JPEGImages").iterdir())) == 8
    assert len(list((root / "Annotations").iterdir())) == 8

    sbd = root / "SBD" / "dataset"
    sbd_train = (sbd / "train.txt").read_text().split()
    sbd_val = (sbd / "val.txt").read_text().split()
    assert sbd_val == ["train_00003"] and not set(sbd_train) & set(sbd_val)
    assert sorted(sbd_train + sbd_val) == train_ids
    assert sorted(p.stem for p in (sbd / "cls").iterdir()) == train_ids

    voc = VOCDataset(root, "train")
    assert voc.ids == train_ids[:3]
    for index, image_id in enumerate(train_ids):
        gt = scipy.io.loadmat(sbd / "cls" / f"{image_id}.mat")["GTcls"]
        seg = gt["Segmentation"][0, 0]
        assert seg.dtype == np.uint8 and seg.shape == (40, 64)
        scene = render_scene(2, "train", index, 6, SHAPE)
        np.testing.assert_array_equal(seg, scene.label)  # SBD masks: no ignore band
        present = gt["CategoriesPresent"][0, 0].ravel().tolist()
        assert present == sorted({o.class_index + 1 for o in scene.objects})
        if image_id in voc.ids:
            png = voc.load_mask(image_id)
            away = png != 255
            np.testing.assert_array_equal(png[away], seg[away])
            assert (seg[~away] > 0).any()


@pytest.fixture(scope="module")
def coco_and_voc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("layouts")
    args = SMALL | dict(num_classes=8, shape=SHAPE)
    generate_synthetic(base / "coco", layout="coco", **args)
    generate_synthetic(base / "voc", layout="voc", **args)
    return base / "coco", base / "voc"


def test_coco_layout_files(coco_and_voc: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = coco_and_voc
    assert sorted(p.name for p in root.iterdir()) == ["annotations", "train2014", "val2014"]
    doc = json.loads((root / "annotations" / "instances_train2014.json").read_text())
    cats = [c["id"] for c in doc["categories"]]
    assert cats == [c[0] for c in COCO_CATEGORIES[:8]] == [1, 5, 9, 14, 18, 22, 27, 33]
    assert [c["name"] for c in doc["categories"]][:2] == ["person", "airplane"]
    assert [im["file_name"] for im in doc["images"]][:2] == [
        "COCO_train2014_000000000001.jpg",
        "COCO_train2014_000000000002.jpg",
    ]
    assert all((im["width"], im["height"]) == SHAPE for im in doc["images"])
    assert len({a["id"] for a in doc["annotations"]}) == len(doc["annotations"])
    crowds = [a for a in doc["annotations"] if a["iscrowd"]]
    assert crowds and all(isinstance(a["segmentation"]["counts"], list) for a in crowds)
    for a in doc["annotations"]:
        segm = a["segmentation"]
        rle = mask_utils.frPyObjects(segm, *segm["size"]) if a["iscrowd"] else segm
        assert a["area"] == float(mask_utils.area(rle))
        np.testing.assert_allclose(a["bbox"], mask_utils.toBbox(rle))
    generate_synthetic(
        tmp_path / "again", layout="coco", **(SMALL | dict(num_classes=8, shape=SHAPE))
    )
    assert _digest(root) == _digest(tmp_path / "again")


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_reader_masks_equal_voc_masks(coco_and_voc: tuple[Path, Path], split: str) -> None:
    coco_root, voc_root = coco_and_voc
    coco = COCODataset(coco_root, split)
    voc = VOCDataset(voc_root, split)
    assert coco.class_names[0] == "background" and coco.num_classes == voc.num_classes == 8
    assert len(coco) == len(voc)
    np.testing.assert_array_equal(coco.label_matrix(), voc.label_matrix())
    n_crowd = 0
    for i, image_id in enumerate(voc.ids):
        c, v = coco[i], voc[i]
        assert c.image.shape == v.image.shape == (40, 64, 3)
        np.testing.assert_array_equal(c.image, v.image)
        scene = render_scene(2, split, i, 8, SHAPE)
        crowd = np.zeros(v.mask.shape, dtype=bool)
        if i % CROWD_EVERY == 1:
            crowd = scene.instances == 0
            n_crowd += 1
            assert crowd.any() and (c.mask[crowd] == 255).all(), image_id
        assert not (c.mask[~crowd] == 255).any(), image_id  # no band in COCO
        away = (v.mask != 255) & ~crowd
        np.testing.assert_array_equal(c.mask[away], v.mask[away], err_msg=image_id)
        np.testing.assert_array_equal(c.mask[~crowd], scene.label[~crowd], err_msg=image_id)
    assert n_crowd == 1  # index 1 of each split


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(shape=(16, 48)), "shape"),
        (dict(shape=(48,)), "shape"),
        (dict(layout="kitti"), "layout"),
    ],
)
def test_bad_shape_and_layout(tmp_path: Path, kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        generate_synthetic(tmp_path / "x", **(SMALL | kwargs))
    assert not (tmp_path / "x").exists()
