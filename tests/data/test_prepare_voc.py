"""SBD → SegmentationClassAug + train_aug on a hand-made VOC root with a 3-image SBD .mat set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from pnoc.config import DataParams
from pnoc.data.factory import open_dataset
from pnoc.data.files import read_mask, write_mask_png
from pnoc.data.prepare_voc import find_sbd, is_voc2012, plan_voc, write_voc
from pnoc.data.prepared import MANIFEST, prepared_folder, read_manifest
from pnoc.data.voc import VOCDataset
from pnoc.errors import DatasetError
from pnoc.steps.prepare import prepare_data

W, H = 10, 8
VOC_TRAIN, VOC_VAL = ["v1", "v2"], ["v3"]
# SBD: 3 .mat files; v1 also has a VOC PNG (which wins), v3 is VOC val (left out, no .mat).
SBD_TRAIN, SBD_VAL = ["s1", "v1"], ["s2", "v3"]
TRAIN_AUG = ["s1", "s2", "v1", "v2"]


def _sbd_mask(k: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[2:6, 1 + k : 5 + k] = k  # class k, no 255 border (as SBD's)
    return m


def _voc_mask(k: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[1:5, 1:5] = k
    m[0, :] = 255  # VOC's ignore border
    return m


def _write_mat(path: Path, seg: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    gt = {"Segmentation": seg, "Boundaries": np.zeros(1), "CategoriesPresent": np.unique(seg)}
    savemat(path, {"GTcls": gt}, do_compression=True)


def make_voc(root: Path, sbd: str | None = "SBD") -> Path:
    """JPEGs of every id, VOC PNGs of VOC train/val, the SBD release at ``root/<sbd>``."""
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i, image_id in enumerate(sorted({*VOC_TRAIN, *VOC_VAL, *SBD_TRAIN, *SBD_VAL})):
        Image.new("RGB", (W, H), (20 * i, 90, 160)).save(root / "JPEGImages" / f"{image_id}.jpg")
    for k, image_id in enumerate([*VOC_TRAIN, *VOC_VAL], start=1):
        write_mask_png(root / "SegmentationClass" / f"{image_id}.png", _voc_mask(k))
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(VOC_VAL) + "\n")
    if sbd is not None:
        base = root / sbd
        for k, image_id in enumerate(["s1", "s2", "v1"], start=4):
            _write_mat(base / "cls" / f"{image_id}.mat", _sbd_mask(k))
        (base / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
        (base / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("where", ["SBD", "SBD/dataset", "SBD/benchmark_RELEASE/dataset"])
def test_sbd_becomes_segmentation_class_aug(tmp_path: Path, where: str) -> None:
    root = make_voc(tmp_path / "VOC", sbd=where)
    assert find_sbd(root) == root / where
    out = tmp_path / "prepared"
    plan = plan_voc(root, ["train_aug", "val"])
    assert not out.exists()  # planning writes nothing
    summary = write_voc(plan, out, num_workers=1)

    assert summary == {
        "train_aug": "sbd",
        "train_aug_images": 4,
        "from_sbd": 2,
        "from_voc": 2,
        "voc2012_counts_checked": False,
    }
    listed = (out / "ImageSets/SegmentationAug/train_aug.txt").read_text().split()
    assert listed == TRAIN_AUG  # (SBD train ∪ SBD val ∪ VOC train) − VOC val
    masks = out / "SegmentationClassAug"
    assert sorted(p.name for p in masks.iterdir()) == [f"{i}.png" for i in TRAIN_AUG]
    np.testing.assert_array_equal(read_mask(masks / "s1.png"), _sbd_mask(4))
    np.testing.assert_array_equal(read_mask(masks / "s2.png"), _sbd_mask(5))
    # An id with a VOC mask keeps it byte for byte, 255 border included (not SBD's v1.mat).
    for image_id in ("v1", "v2"):
        voc_png = root / "SegmentationClass" / f"{image_id}.png"
        assert (masks / f"{image_id}.png").read_bytes() == voc_png.read_bytes()
    with Image.open(masks / "s1.png") as im:
        assert im.mode == "P"  # VOC palette PNG

    ds = VOCDataset(root, "train_aug", prepared=out)
    assert ds.uses_aug and ds.ids == TRAIN_AUG and ds.validate() == 4
    assert ds.mask_dir == masks
    # The VOC splits still read VOC's own files.
    assert not VOCDataset(root, "train", prepared=out).uses_aug


def test_prepare_stage_writes_a_manifest_and_readers_find_it(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC")
    out = tmp_path / "prepared"
    data = DataParams(name="voc", root=root, train_split="train_aug")
    prepare_data(data, out, num_workers=2)  # a process pool
    first = _files(out)
    manifest = read_manifest(out)
    assert manifest is not None and manifest["complete"] and manifest["dataset"] == "voc"
    assert manifest["contents"]["train_aug_images"] == 4
    assert prepared_folder(out, "voc", root) == out
    assert prepared_folder(out, "voc", tmp_path) is None  # prepared from another root

    ds = open_dataset(data, "train_aug", prepared=out)
    assert ds.ids == TRAIN_AUG and ds.uses_aug
    with pytest.raises(DatasetError, match="train_aug"):
        open_dataset(data, "train_aug", prepared=tmp_path / "elsewhere")

    prepare_data(data, out, num_workers=1)
    assert _files(out) == first  # deterministic: the same bytes, so the same DVC hash


def test_train_aug_without_sbd_says_where_to_put_it(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC", sbd=None)
    out = tmp_path / "prepared"
    data = DataParams(name="voc", root=root, train_split="train_aug")
    with pytest.raises(DatasetError) as e:
        prepare_data(data, out)
    msg = str(e.value)
    assert str(root / "SBD") in msg and "cls/*.mat" in msg and "data.train_split=train" in msg
    assert not out.exists()
    with pytest.raises(DatasetError, match=r"SBD.*data\.train_split=train"):
        VOCDataset(root, "train_aug")
    # Without train_aug asked for, there is nothing to build: only the manifest is written.
    prepare_data(DataParams(name="voc", root=root), out)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST]


def test_train_aug_found_in_the_root_is_used_in_place(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC", sbd=None)
    (root / "SegmentationClassAug").mkdir()
    for image_id in VOC_TRAIN:
        write_mask_png(root / "SegmentationClassAug" / f"{image_id}.png", _sbd_mask(2))
    (root / "ImageSets/SegmentationAug").mkdir()
    (root / "ImageSets/SegmentationAug/train_aug.txt").write_text("v1\nv2\n")
    out = tmp_path / "prepared"
    data = DataParams(name="voc", root=root, train_split="train_aug")
    contents = prepare_data(data, out)
    assert contents["train_aug"] == "root" and contents["train_aug_images"] == 2
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST]  # nothing copied
    ds = open_dataset(data, "train_aug", prepared=out)
    assert ds.mask_dir == root / "SegmentationClassAug" and ds.validate() == 2

    (root / "SegmentationClassAug" / "v2.png").unlink()
    with pytest.raises(DatasetError, match=r"v2\.png.*does not exist"):
        prepare_data(data, out)


def test_missing_sbd_mask_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC")
    out = tmp_path / "prepared"
    data = DataParams(name="voc", root=root, train_split="train_aug")
    prepare_data(data, out)
    before = _files(out)
    (root / "SBD/cls/s2.mat").unlink()
    with pytest.raises(DatasetError) as e:
        prepare_data(data, out)
    assert e.value.path == root / "SBD/cls/s2.mat" and "'s2'" in str(e.value)
    assert _files(out) == before  # the previous preparation is left as it was


def test_corrupt_mat_is_named_and_leaves_no_half_written_folder(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC")
    (root / "SBD/cls/s1.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    out = tmp_path / "prepared"
    with pytest.raises(DatasetError) as e:
        write_voc(plan_voc(root, ["train_aug"]), out)
    assert e.value.path == root / "SBD/cls/s1.mat" and "cannot be read" in str(e.value)
    assert not (out / "SegmentationClassAug").exists()
    assert not list(out.glob(".*.tmp")) and not (out / "ImageSets").exists()


def test_sbd_mask_with_a_bad_class_index_is_named(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC")
    _write_mat(root / "SBD/cls/s2.mat", np.full((H, W), 40, np.uint8))
    with pytest.raises(DatasetError, match=r"s2\.mat.*value\(s\) \[40\]"):
        write_voc(plan_voc(root, ["train_aug"]), tmp_path / "prepared", num_workers=2)


def test_sbd_folder_without_cls_is_named(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC", sbd=None)
    (root / "SBD" / "img").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"SBD: holds no cls/"):
        plan_voc(root, ["train_aug"])


# --- the VOC 2012 split counts -------------------------------------------------------------


def _as_voc2012(root: Path) -> None:
    """Make ``root`` look like the real release (ImageSets/Main/trainval.txt of 11,540 ids)."""
    (root / "ImageSets/Main").mkdir(parents=True)
    ids = "".join(f"2008_{i:06d}\n" for i in range(11540))
    (root / "ImageSets/Main/trainval.txt").write_text(ids)


def test_split_counts_are_checked_on_real_voc2012_only(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC")
    assert is_voc2012(root) is None
    plan_voc(root, ["train_aug", "val"])  # a small stand-in: no counts enforced

    _as_voc2012(root)
    assert "11,540" in (is_voc2012(root) or "")
    with pytest.raises(DatasetError) as e:
        plan_voc(root, ["train", "val"])
    assert e.value.path == root / "ImageSets/Segmentation/train.txt"
    assert "has 2 ids" in str(e.value) and "1,464" in str(e.value)

    seg = root / "ImageSets/Segmentation"
    seg.joinpath("train.txt").write_text("".join(f"t{i}\n" for i in range(1464)))
    with pytest.raises(DatasetError, match=r"val\.txt: split 'val' has 1 ids.*1,449"):
        plan_voc(root, ["train", "val"])
    seg.joinpath("val.txt").write_text("v3\n" + "".join(f"w{i}\n" for i in range(1448)))
    with pytest.raises(DatasetError) as e:
        plan_voc(root, ["train_aug", "val"])
    assert e.value.path == root / "SBD" and "10,582" in str(e.value)

    # A custom VOC-layout folder (its own class list) is never held to VOC 2012's figures.
    (root / "class_names.txt").write_text("\n".join(["background", *map(str, range(20))]))
    assert is_voc2012(root) is None


def test_synthetic_without_sbd_prepares_only_a_manifest(synthetic_root: Path, tmp_path: Path):
    out = tmp_path / "prepared"
    data = DataParams(name="voc", root=synthetic_root)
    assert prepare_data(data, out)["train_aug"] is None
    assert json.loads((out / MANIFEST).read_text())["complete"] is True
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST]
