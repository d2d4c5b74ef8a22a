"""Stage ``prepare``: write the files derived from the dataset ``data`` names to the prepared
folder (:mod:`pnoc.data.prepared`), then open the dataset through the readers training uses,
decode every image and mask (so a corrupt file fails here, naming it), and count images per
class.

What is prepared:

- VOC layout (``voc``, ``synthetic``): ``SegmentationClassAug`` and ``train_aug.txt`` built from
  ``<root>/SBD`` when there (:mod:`pnoc.data.prepare_voc`; found in the root: used in place),
  after checking VOC 2012's split counts when the root is the real VOC 2012; not resumable
  (rebuilt whole, atomically).
- COCO 2014 (``coco14``): per-image class masks and labels of the train and val splits
  (:mod:`pnoc.data.prepare_coco`), resumable: masks of an unchanged annotation file are kept.
- In any case ``manifest.json``, so the folder exists; the synthetic data without SBD gets
  only that.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pnoc.config import DataParams
from pnoc.data import prepared as prep
from pnoc.data.factory import open_dataset, warn_missing_classes

log = logging.getLogger(__name__)


def split_stats(dataset: Any) -> dict[str, Any]:
    """Images, decoded files, skipped files, labels per image and images per class of a split.

    The split is validated first: with ``data.skip_bad`` the images dropped then (undecodable,
    bad masks) count as skipped and in none of the other figures.
    """
    checked = dataset.validate()
    labels = np.asarray(dataset.label_matrix())
    per_class = labels.sum(axis=0).astype(int)
    return {
        "images": len(dataset),
        "checked": checked,
        "skipped": len(dataset.skipped),
        "labels_per_image": float(labels.sum(axis=1).mean()) if len(labels) else 0.0,
        "images_per_class": {
            name: int(n) for name, n in zip(dataset.class_names[1:], per_class, strict=True)
        },
        "classes_without_images": warn_missing_classes(dataset),
    }


def prepare_data(data: DataParams, out: Path, *, num_workers: int = 1) -> dict[str, Any]:
    """Check the dataset and write what it needs to ``out``; return the manifest's contents.

    Every check (missing files, split counts, a train_aug without SBD) runs before ``out`` is
    touched, so a bad dataset leaves the previous preparation as it was.
    """
    splits = list(dict.fromkeys((data.train_split, data.val_split)))
    if data.name == "coco14":
        from pnoc.data.coco import COCODataset, prepared_paths
        from pnoc.data.prepare_coco import annotation_stamp, prepare_coco

        datasets = [COCODataset(data.root, s, skip_bad=data.skip_bad) for s in splits]
        sources: dict[str, str] = {}
        for ds in datasets:
            stamp = annotation_stamp(ds.annotation_path)
            for path in prepared_paths(out, ds.split):
                sources[path.relative_to(out).as_posix()] = stamp
        prep.begin(out, data.name, data.root, sources)
        contents: dict[str, Any] = {}
        for ds in datasets:
            stats = prepare_coco(ds, out, num_workers=num_workers)
            log.info(
                "COCO %s: %d masks rendered, %d kept from an earlier run",
                ds.split,
                stats.pop("rendered"),
                stats.pop("kept"),
            )
            contents[ds.split] = stats
    else:
        from pnoc.data.prepare_voc import plan_voc, write_voc

        plan = plan_voc(data.root, splits)
        sources = {}
        prep.begin(out, data.name, data.root)
        contents = write_voc(plan, out, num_workers=num_workers)
    prep.finish(out, data.name, data.root, sources, contents)
    return contents


def run(data: DataParams, prepared: Path, *, num_workers: int = 1) -> tuple[dict[str, Any], Any]:
    """Prepare ``data`` into ``prepared`` (:func:`prepare_data`); return the dataset report
    (name, root, what was prepared, classes, per split :func:`split_stats`) and the training
    split's reader (for a sample grid)."""
    contents = prepare_data(data, prepared, num_workers=num_workers)
    report: dict[str, Any] = {"dataset": data.name, "root": str(data.root), "prepared": contents}
    train = None
    for split in (data.train_split, data.val_split):
        dataset = open_dataset(data, split, prepared=prepared)
        report[split] = split_stats(dataset)
        report["classes"] = dataset.class_names
        train = train or dataset
    return report, train
