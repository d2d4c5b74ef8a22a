"""COCO instances JSON → class masks + labels, on the 3-image fixture with a crowd annotation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pnoc.data.prepare_coco as prepare_coco_module
from pnoc.config import DataParams
from pnoc.data.coco import COCODataset
from pnoc.data.factory import open_dataset
from pnoc.data.files import read_mask
from pnoc.data.prepare_coco import mask_is_complete, prepare_coco
from pnoc.data.prepared import MANIFEST, prepared_folder, read_manifest
from pnoc.errors import DatasetError
from pnoc.steps.prepare import prepare_data
from tests.data.test_coco import H, W, _write_coco

IDS = [f"COCO_train2014_{i:012d}" for i in (1, 2, 3)]


@pytest.fixture
def coco(tmp_path: Path) -> tuple[DataParams, Path]:
    """A COCO root with train and val (3 images each: overlap + crowd; one car; nothing) and
    the prepared folder to write to."""
    root = tmp_path / "coco"
    _write_coco(root, "train")
    _write_coco(root, "val")
    return DataParams(name="coco14", root=root), tmp_path / "prepared"


def _masks(out: Path, split: str = "train") -> dict[str, bytes]:
    folder = out / "masks" / f"{split}2014"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_masks_and_labels_match_the_reader(coco: tuple[DataParams, Path]) -> None:
    data, out = coco
    contents = prepare_data(data, out, num_workers=1)
    assert contents == {
        "train": {"images": 3, "classes": 3},
        "val": {"images": 3, "classes": 3},
    }
    direct = COCODataset(data.root, "train")
    masks = out / "masks" / "train2014"
    assert sorted(p.name for p in masks.iterdir()) == [f"{i}.png" for i in IDS]
    for image_id in IDS:
        np.testing.assert_array_equal(
            read_mask(masks / f"{image_id}.png"), direct.load_mask(image_id)
        )
    m = read_mask(masks / f"{IDS[0]}.png")
    assert m[10, 10] == 3 and m[2, 25] == 1 and (m[:, 33:] == 255).all()  # dog wins; crowd 255
    with Image.open(masks / f"{IDS[0]}.png") as im:
        assert im.mode == "P" and im.size == (W, H)

    doc = json.loads((out / "labels" / "train2014.json").read_text())
    assert doc["classes"] == ["background", "person", "car", "dog"]
    assert doc["category_ids"] == [1, 3, 18]  # COCO's ids, renumbered 1..K in this order
    assert [e["labels"] for e in doc["images"]] == [[1, 2, 3], [2], []]  # crowd car counts
    assert doc["images"][0] == {
        "id": IDS[0], "coco_id": 1, "file_name": f"{IDS[0]}.jpg", "height": H, "width": W,
        "labels": [1, 2, 3],
    }  # fmt: skip

    manifest = read_manifest(out)
    assert manifest is not None and manifest["complete"] and manifest["dataset"] == "coco14"
    assert set(manifest["sources"]) == {
        "labels/train2014.json", "masks/train2014", "labels/val2014.json", "masks/val2014",
    }  # fmt: skip


def test_readers_use_the_prepared_folder(coco: tuple[DataParams, Path]) -> None:
    data, out = coco
    prepare_data(data, out)
    direct = COCODataset(data.root, "train")
    # The prepared reader needs no annotation file: ids, classes and labels come from labels/.
    (data.root / "annotations" / "instances_train2014.json").rename(data.root / "moved.json")
    ds = open_dataset(data, "train", prepared=out)
    assert ds.mask_dir == out / "masks" / "train2014"
    assert ds.ids == direct.ids and ds.class_names == direct.class_names
    np.testing.assert_array_equal(ds.label_matrix(), direct.label_matrix())
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds[i].mask, direct.load_mask(direct.ids[i]))
    assert ds.validate() == 3
    assert ds.mask_path(IDS[1]) == out / "masks" / "train2014" / f"{IDS[1]}.png"


def test_parallel_gives_the_same_files(coco: tuple[DataParams, Path], tmp_path: Path) -> None:
    data, out = coco
    prepare_data(data, out, num_workers=1)
    prepare_data(data, tmp_path / "parallel", num_workers=2)
    assert _masks(out) == _masks(tmp_path / "parallel")
    for name in ("labels/train2014.json", MANIFEST):
        assert (out / name).read_bytes() == (tmp_path / "parallel" / name).read_bytes()


def test_rerun_resumes_after_a_kill(coco: tuple[DataParams, Path], monkeypatch) -> None:
    data, out = coco
    calls = []
    real = prepare_coco_module.render_mask

    def killed_on_second(*args, **kwargs):
        calls.append(kwargs["image_id"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # as SIGTERM/SIGINT reach a stage
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare_coco_module, "render_mask", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(data, out, num_workers=1)
    monkeypatch.setattr(prepare_coco_module, "render_mask", real)

    # What the killed run left: one complete mask, no labels, an incomplete manifest ...
    assert sorted(_masks(out)) == [f"{IDS[0]}.png"]
    assert not (out / "labels").exists()
    assert read_manifest(out)["complete"] is False  # type: ignore[index]
    assert prepared_folder(out, "coco14", data.root) is None  # ... which readers ignore
    first = out / "masks" / "train2014" / f"{IDS[0]}.png"
    stamp = first.stat().st_mtime_ns
    # ... and, as a killed atomic write leaves them, a temporary and a truncated mask.
    (first.parent / f".{IDS[1]}.png.x1y2.tmp").write_bytes(b"\x89PNG\r\n")
    full = first.read_bytes()
    (first.parent / f"{IDS[2]}.png").write_bytes(full[: len(full) // 2])
    assert not mask_is_complete(first.parent / f"{IDS[2]}.png", H, W)

    prepare_data(data, out, num_workers=2)
    assert prepared_folder(out, "coco14", data.root) == out
    assert first.stat().st_mtime_ns == stamp  # kept, not rendered again
    assert sorted(_masks(out)) == [f"{i}.png" for i in IDS]  # the temporary is gone
    direct = COCODataset(data.root, "train")
    for image_id in IDS:
        mask = read_mask(first.parent / f"{image_id}.png")
        np.testing.assert_array_equal(mask, direct.load_mask(image_id))


def test_a_changed_annotation_file_renders_again(coco: tuple[DataParams, Path]) -> None:
    data, out = coco
    prepare_data(data, out)
    path = data.root / "annotations" / "instances_train2014.json"
    doc = json.loads(path.read_text())
    doc["annotations"][3]["category_id"] = 1  # image 2's car becomes a person
    path.write_text(json.dumps(doc))
    prepare_data(data, out)
    mask = read_mask(out / "masks" / "train2014" / f"{IDS[1]}.png")
    assert set(np.unique(mask).tolist()) == {0, 1}
    labels = json.loads((out / "labels" / "train2014.json").read_text())["images"]
    assert labels[1]["labels"] == [1]


def test_image_without_a_file_is_named_and_nothing_is_written(
    coco: tuple[DataParams, Path],
) -> None:
    data, out = coco
    (data.root / "val2014" / "COCO_val2014_000000000003.jpg").unlink()
    with pytest.raises(DatasetError) as e:
        prepare_data(data, out)
    assert e.value.path.name == "COCO_val2014_000000000003.jpg"
    assert "instances_val2014.json" in str(e.value) and "does not exist" in str(e.value)
    assert not out.exists()  # checked before anything is written, for every split


def test_a_prepared_folder_of_other_data_is_replaced(coco: tuple[DataParams, Path], tmp_path):
    data, out = coco
    prepare_data(data, out)
    from tests.data.test_prepare_voc import make_voc

    voc = DataParams(name="voc", root=make_voc(tmp_path / "VOC"), train_split="train_aug")
    prepare_data(voc, out)
    assert sorted(p.name for p in out.iterdir()) == ["ImageSets", "SegmentationClassAug", MANIFEST]
    assert prepared_folder(out, "coco14", data.root) is None


def test_a_folder_of_unknown_files_is_not_overwritten(coco: tuple[DataParams, Path]) -> None:
    data, out = coco
    out.mkdir()
    (out / "mine.txt").write_text("not the stage's")
    with pytest.raises(DatasetError, match="no readable manifest.json"):
        prepare_data(data, out)
    assert (out / "mine.txt").read_text() == "not the stage's"


def test_prepare_coco_counts_what_it_renders(coco: tuple[DataParams, Path]) -> None:
    data, out = coco
    ds = COCODataset(data.root, "train")
    assert prepare_coco(ds, out)["rendered"] == 3
    (out / "masks" / "train2014" / f"{IDS[0]}.png").unlink()
    stats = prepare_coco(ds, out, num_workers=2)
    assert stats == {"images": 3, "rendered": 1, "kept": 2, "classes": 3}
