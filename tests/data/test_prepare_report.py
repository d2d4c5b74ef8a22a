"""The ``prepare`` step's report: with ``data.skip_bad`` a split's size excludes skipped images."""

from __future__ import annotations

from pathlib import Path

from pnoc.config import DataParams
from pnoc.data.voc import VOCDataset
from pnoc.steps import prepare


def test_split_size_excludes_skipped_images(voc_copy: Path, tmp_path: Path) -> None:
    ids = (voc_copy / "ImageSets/Segmentation/train.txt").read_text().split()
    (voc_copy / "JPEGImages" / f"{ids[0]}.jpg").unlink()  # dropped when the list is read
    truncated = voc_copy / "JPEGImages" / f"{ids[5]}.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])  # dropped by validation
    data = DataParams(name="voc", root=voc_copy, skip_bad=True)

    report, train = prepare.run(data, tmp_path / "prepared")

    stats = report["train"]
    assert stats["skipped"] == 2
    assert stats["images"] == stats["checked"] == len(ids) - 2 == len(train)
    kept = VOCDataset(voc_copy, "train", skip_bad=True)
    kept.validate()
    labels = kept.label_matrix()
    assert labels.shape[0] == stats["images"]
    assert list(stats["images_per_class"].values()) == labels.sum(axis=0).astype(int).tolist()
    assert report["val"]["skipped"] == 0 and report["val"]["images"] == report["val"]["checked"]
