from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pnoc.data.base import SampleKey
from pnoc.data.files import VOC_PALETTE, write_mask_png
from pnoc.data.torch_sets import ClassificationSet, SegmentationSet, collate
from pnoc.data.transforms import segmentation_train_transform
from pnoc.data.voc import VOC_CLASSES, VOCDataset
from pnoc.errors import ConfigError, DatasetError


def _first_id(root: Path, split: str = "train") -> str:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[0]


def _assert_names(err: pytest.ExceptionInfo[DatasetError], filename: str) -> None:
    msg = str(err.value)
    assert msg.startswith(str(err.value.path)), msg
    assert filename in msg, msg
    assert len(err.value.problem.split()) >= 4, msg  # a sentence, not just a code


# --- bad inputs ---------------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as e:
        VOCDataset(tmp_path / "nope", "train")
    _assert_names(e, "nope")


def test_list_file_missing(voc_copy: Path) -> None:
    with pytest.raises(DatasetError) as e:
        VOCDataset(voc_copy, "trainval")
    _assert_names(e, "trainval.txt")
    assert "does not exist" in str(e.value)


def test_empty_split(voc_copy: Path) -> None:
    (voc_copy / "ImageSets/Segmentation/train.txt").write_text("\n  \n")
    with pytest.raises(DatasetError) as e:
        VOCDataset(voc_copy, "train")
    _assert_names(e, "train.txt")
    assert "empty" in str(e.value)


def test_missing_image_raises_at_construction(voc_copy: Path) -> None:
    image_id = _first_id(voc_copy)
    (voc_copy / "JPEGImages" / f"{image_id}.jpg").unlink()
    with pytest.raises(DatasetError) as e:
        VOCDataset(voc_copy, "train")
    _assert_names(e, f"{image_id}.jpg")
    assert "1 of 12" in str(e.value)


def test_missing_images_skipped_and_reported(
    voc_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ids = (voc_copy / "ImageSets/Segmentation/train.txt").read_text().split()
    for image_id in ids[:2]:
        (voc_copy / "JPEGImages" / f"{image_id}.jpg").unlink()
    with caplog.at_level(logging.WARNING, logger="pnoc.data.reader"):
        ds = VOCDataset(voc_copy, "train", skip_bad=True)
    assert len(ds) == 10
    assert [i for i, _ in ds.skipped] == ids[:2]
    assert all("does not exist" in reason for _, reason in ds.skipped)
    assert "skipped 2 of 12" in caplog.text
    assert ds.label_matrix().shape == (10, 6)


def test_corrupt_image_raises_at_load(voc_copy: Path) -> None:
    image_id = _first_id(voc_copy)
    (voc_copy / "JPEGImages" / f"{image_id}.jpg").write_bytes(b"this is not a jpeg" * 20)
    ds = VOCDataset(voc_copy, "train")  # existence only at construction
    with pytest.raises(DatasetError) as e:
        ds[0]
    _assert_names(e, f"{image_id}.jpg")
    assert "corrupt" in str(e.value)


def test_truncated_jpeg_is_detected(voc_copy: Path) -> None:
    image_id = _first_id(voc_copy)
    path = voc_copy / "JPEGImages" / f"{image_id}.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = VOCDataset(voc_copy, "train", skip_bad=True)
    with pytest.raises(DatasetError) as e:
        ds.load_image(image_id)  # skip_bad does not hide corruption found at load
    _assert_names(e, f"{image_id}.jpg")
    assert "truncated" in str(e.value)


def test_validate_raises_or_skips(voc_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    ids = (voc_copy / "ImageSets/Segmentation/train.txt").read_text().split()
    bad = voc_copy / "JPEGImages" / f"{ids[3]}.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DatasetError) as e:
        VOCDataset(voc_copy, "train").validate()
    _assert_names(e, f"{ids[3]}.jpg")
    ds = VOCDataset(voc_copy, "train", skip_bad=True)
    with caplog.at_level(logging.WARNING, logger="pnoc.data.reader"):
        assert ds.validate(workers=2) == 11
    assert ids[3] not in ds.ids and [i for i, _ in ds.skipped] == [ids[3]]
    assert "skipped 1 of 12" in caplog.text


def _load_error_with_mask(root: Path, mask: np.ndarray) -> str:
    """Give the first train id ``mask``; loading its sample must raise naming the mask file."""
    image_id = _first_id(root)
    write_mask_png(root / "SegmentationClass" / f"{image_id}.png", mask)
    ds = VOCDataset(root, "train")
    with pytest.raises(DatasetError) as e:
        ds[0]
    _assert_names(e, f"{image_id}.png")
    return str(e.value)


def test_mask_size_differs_from_image(voc_copy: Path) -> None:
    message = _load_error_with_mask(voc_copy, np.zeros((60, 64), np.uint8))
    assert "64x60" in message and "64x64" in message


def test_unknown_xml_object_name(voc_copy: Path) -> None:
    image_id = _first_id(voc_copy)
    xml = voc_copy / "Annotations" / f"{image_id}.xml"
    text = xml.read_text()
    name = text.split("<name>")[1].split("</name>")[0]
    xml.write_text(text.replace(f"<name>{name}</name>", "<name>unicorn</name>", 1))
    with pytest.raises(DatasetError) as e:
        VOCDataset(voc_copy, "train")
    _assert_names(e, f"{image_id}.xml")
    assert "unicorn" in str(e.value)
    ds = VOCDataset(voc_copy, "train", skip_bad=True)
    assert len(ds) == 11 and ds.skipped[0][0] == image_id


def test_malformed_xml(voc_copy: Path) -> None:
    image_id = _first_id(voc_copy)
    (voc_copy / "Annotations" / f"{image_id}.xml").write_text("<annotation><object>")
    with pytest.raises(DatasetError) as e:
        VOCDataset(voc_copy, "train")
    _assert_names(e, f"{image_id}.xml")


def test_mask_value_out_of_range(voc_copy: Path) -> None:
    mask = np.zeros((64, 64), np.uint8)
    mask[10:20, 10:20] = 50
    message = _load_error_with_mask(voc_copy, mask)
    assert "[50]" in message and "255" in message


def test_rgb_mask_is_rejected(voc_copy: Path) -> None:
    image_id = _first_id(voc_copy)
    Image.new("RGB", (64, 64)).save(voc_copy / "SegmentationClass" / f"{image_id}.png")
    with pytest.raises(DatasetError) as e:
        VOCDataset(voc_copy, "train").load_mask(image_id)
    _assert_names(e, f"{image_id}.png")


# --- conventions --------------------------------------------------------------------------


def test_train_aug_convention(voc_copy: Path) -> None:
    ids = (voc_copy / "ImageSets/Segmentation/train.txt").read_text().split()
    (voc_copy / "ImageSets/SegmentationAug").mkdir()
    (voc_copy / "ImageSets/SegmentationAug/train_aug.txt").write_text("\n".join(ids[:5]) + "\n")
    (voc_copy / "SegmentationClassAug").mkdir()
    for image_id in ids[:5]:  # grayscale (mode L) masks, as SBD-converted ones are
        Image.fromarray(np.full((64, 64), 2, np.uint8)).save(
            voc_copy / "SegmentationClassAug" / f"{image_id}.png"
        )
    ds = VOCDataset(voc_copy, "train_aug")
    assert ds.uses_aug and len(ds) == 5
    assert (ds.load_mask(ids[0]) == 2).all()
    with pytest.raises(DatasetError):
        VOCDataset(voc_copy, "train_aug", use_aug=False)  # no Segmentation/train_aug.txt
    plain = VOCDataset(voc_copy, "train")
    assert not plain.uses_aug and (plain.load_mask(ids[0]) != 2).any()


def test_labels_from_masks_without_xml(voc_copy: Path) -> None:
    with_xml = VOCDataset(voc_copy, "train").label_matrix()
    shutil.rmtree(voc_copy / "Annotations")
    ds = VOCDataset(voc_copy, "train")
    np.testing.assert_array_equal(ds.label_matrix(), with_xml)


def test_no_xml_no_mask_raises(voc_copy: Path) -> None:
    image_id = _first_id(voc_copy)
    (voc_copy / "Annotations" / f"{image_id}.xml").unlink()
    (voc_copy / "SegmentationClass" / f"{image_id}.png").unlink()
    ds = VOCDataset(voc_copy, "train")
    assert ds.load_mask(image_id) is None
    with pytest.raises(DatasetError) as e:
        ds.labels(0)
    _assert_names(e, f"{image_id}.png")


def test_class_names(voc_copy: Path) -> None:
    ds = VOCDataset(voc_copy, "train")
    assert ds.class_names[0] == "background" and ds.num_classes == 6
    # Custom file with more classes: labels follow the file's order.
    names = ["background", "circle", "extra", "square", "triangle", "star", "ellipse", "cross"]
    (voc_copy / "class_names.txt").write_text("\n".join(names) + "\n")
    ds = VOCDataset(voc_copy, "train")
    assert ds.class_names == names and ds.num_classes == 7
    assert ds.label_matrix()[:, 1].sum() == 0  # "extra" never appears
    # Without class_names.txt (and XML names unknown to VOC) the 20 VOC classes apply.
    (voc_copy / "class_names.txt").unlink()
    shutil.rmtree(voc_copy / "Annotations")
    ds = VOCDataset(voc_copy, "train")
    assert ds.class_names == list(VOC_CLASSES) and ds.num_classes == 20
    # Explicit names win; a list without background first is a config error.
    assert VOCDataset(voc_copy, "train", class_names=names).num_classes == 7
    with pytest.raises(ConfigError):
        VOCDataset(voc_copy, "train", class_names=names[1:])


def test_bad_class_names_file(voc_copy: Path) -> None:
    (voc_copy / "class_names.txt").write_text("circle\nsquare\n")
    with pytest.raises(DatasetError) as e:
        VOCDataset(voc_copy, "train")
    _assert_names(e, "class_names.txt")


def test_palette_is_voc() -> None:
    pal = np.asarray(VOC_PALETTE).reshape(256, 3)
    assert pal[1].tolist() == [128, 0, 0] and pal[15].tolist() == [192, 128, 128]
    assert pal[255].tolist() == [224, 224, 192]


# --- torch wrappers -----------------------------------------------------------------------


def test_sample_key_and_int_index(synthetic_root: Path) -> None:
    ds = VOCDataset(synthetic_root, "val")
    a, b = ds[2], ds[SampleKey(2, 99)]
    assert a.id == b.id and np.array_equal(a.image, b.image)
    np.testing.assert_array_equal(ds.labels(SampleKey(2, 0)), a.labels)


def test_classification_set(synthetic_root: Path) -> None:
    ds = VOCDataset(synthetic_root, "train")
    cs = ClassificationSet(ds)
    item = cs[SampleKey(1, 5)]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["labels"].shape == (6,) and item["id"] == ds.ids[1] and item["index"] == 1
    assert abs(float(item["image"].mean())) < 3  # normalised, not 0..255
    batch = collate([cs[0], cs[1], cs[2]])
    assert batch["image"].shape == (3, 3, 64, 64) and batch["id"] == ds.ids[:3]
    assert batch["index"].tolist() == [0, 1, 2]


def test_segmentation_set_seeded_by_key(synthetic_root: Path, tmp_path: Path) -> None:
    ds = VOCDataset(synthetic_root, "train")
    ss = SegmentationSet(ds, segmentation_train_transform(48, (0.5, 1.5)))
    a, b, c = ss[SampleKey(0, 1)], ss[SampleKey(0, 1)], ss[SampleKey(0, 2)]
    assert a["image"].shape == (3, 48, 48) and a["mask"].shape == (48, 48)
    assert a["mask"].dtype == torch.int64
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], c["image"])
    assert torch.equal(ss[3]["image"], ss[SampleKey(3, 3)]["image"])  # int i → seed i
    # Masks from another folder (pseudo-masks).
    pseudo = tmp_path / "pseudo"
    for image_id in ds.ids:
        write_mask_png(pseudo / f"{image_id}.png", np.full((64, 64), 1, np.uint8))
    item = SegmentationSet(ds, mask_dir=pseudo)[0]
    assert item["mask"].shape == (64, 64) and set(item["mask"].unique().tolist()) == {1}
    loader = torch.utils.data.DataLoader(ss, batch_size=4, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["mask"].shape == (4, 48, 48) and len(batch["id"]) == 4
