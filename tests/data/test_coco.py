from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from pnoc.data.coco import COCODataset
from pnoc.data.torch_sets import ClassificationSet, SegmentationSet
from pnoc.errors import DatasetError

W, H = 40, 30


def _box(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _write_coco(root: Path, split: str = "train") -> None:
    """3 images: overlap + crowd; a single car; no annotation. Category ids have gaps."""
    (root / f"{split}2014").mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    images = []
    for i in (1, 2, 3):
        name = f"COCO_{split}2014_{i:012d}.jpg"
        Image.new("RGB", (W, H), (40 * i, 80, 120)).save(root / f"{split}2014" / name)
        images.append({"id": i, "file_name": name, "width": W, "height": H})
    crowd = np.zeros((H, W), np.uint8, order="F")
    crowd[:, 32:] = 1
    rle = mask_utils.encode(np.asfortranarray(crowd))
    rle["counts"] = rle["counts"].decode("ascii")
    anns = [
        {"id": 10, "image_id": 1, "category_id": 18, "segmentation": _box(5, 5, 15, 15),
         "area": 100.0, "bbox": [5, 5, 10, 10], "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 1, "segmentation": _box(0, 0, 30, 20),
         "area": 600.0, "bbox": [0, 0, 30, 20], "iscrowd": 0},
        {"id": 12, "image_id": 1, "category_id": 3, "segmentation": rle,
         "area": float(crowd.sum()), "bbox": [32, 0, 8, 30], "iscrowd": 1},
        {"id": 13, "image_id": 2, "category_id": 3, "segmentation": _box(10, 10, 30, 25),
         "area": 300.0, "bbox": [10, 10, 20, 15], "iscrowd": 0},
    ]  # fmt: skip
    cats = [
        {"id": 1, "name": "person", "supercategory": "person"},
        {"id": 3, "name": "car", "supercategory": "vehicle"},
        {"id": 18, "name": "dog", "supercategory": "animal"},
    ]
    doc = {"images": images, "annotations": anns, "categories": cats}
    (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(doc))


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    _write_coco(root, "train")
    return root


def test_classes_ids_and_labels(coco_root: Path) -> None:
    ds = COCODataset(coco_root, "train")
    assert ds.class_names == ["background", "person", "car", "dog"] and ds.num_classes == 3
    assert ds.ids == [f"COCO_train2014_{i:012d}" for i in (1, 2, 3)]
    np.testing.assert_array_equal(
        ds.label_matrix(),
        [[1, 1, 1], [0, 1, 0], [0, 0, 0]],  # crowd car counts as present
    )


def test_mask_rendering_overlap_and_crowd(coco_root: Path) -> None:
    ds = COCODataset(coco_root, "train")
    s = ds[0]
    assert s.image.shape == (H, W, 3) and s.mask.shape == (H, W) and s.mask.dtype == np.uint8
    assert s.mask[10, 10] == 3  # dog (smaller) wins over person
    assert s.mask[2, 25] == 1  # person
    assert s.mask[25, 20] == 0  # background
    assert (s.mask[:, 33:] == 255).all()  # crowd → ignore
    assert set(np.unique(ds[1].mask).tolist()) == {0, 2}
    assert (ds[2].mask == 0).all()
    assert ds.validate() == 3


def test_drop_empty(coco_root: Path) -> None:
    ds = COCODataset(coco_root, "train", drop_empty=True)
    assert len(ds) == 2 and ds.skipped == [("COCO_train2014_000000000003", "no annotations")]


def test_missing_annotation_file(coco_root: Path) -> None:
    with pytest.raises(DatasetError) as e:
        COCODataset(coco_root, "val")
    assert "instances_val2014.json" in str(e.value) and "does not exist" in str(e.value)


def test_corrupt_annotation_file(coco_root: Path) -> None:
    (coco_root / "annotations" / "instances_train2014.json").write_text("{not json")
    with pytest.raises(DatasetError) as e:
        COCODataset(coco_root, "train")
    assert "instances_train2014.json" in str(e.value)


def test_missing_image(coco_root: Path) -> None:
    (coco_root / "train2014" / "COCO_train2014_000000000002.jpg").unlink()
    with pytest.raises(DatasetError) as e:
        COCODataset(coco_root, "train")
    assert "COCO_train2014_000000000002.jpg" in str(e.value)
    ds = COCODataset(coco_root, "train", skip_bad=True)
    assert len(ds) == 2 and ds.skipped[0][0] == "COCO_train2014_000000000002"


def test_image_size_mismatch(coco_root: Path) -> None:
    Image.new("RGB", (W + 2, H), 0).save(
        coco_root / "train2014" / "COCO_train2014_000000000001.jpg"
    )
    ds = COCODataset(coco_root, "train")
    with pytest.raises(DatasetError) as e:
        ds[0]
    assert "COCO_train2014_000000000001.jpg" in str(e.value) and "differs" in str(e.value)


def test_torch_wrappers(coco_root: Path) -> None:
    ds = COCODataset(coco_root, "train")
    item = SegmentationSet(ds)[0]
    assert item["image"].shape == (3, H, W) and item["mask"].shape == (H, W)
    assert ClassificationSet(ds)[1]["labels"].tolist() == [0.0, 1.0, 0.0]
