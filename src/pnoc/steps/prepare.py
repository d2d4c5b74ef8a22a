"""Stage ``prepare``: open the dataset ``data`` names through the readers training uses, decode
every image and mask (so a corrupt file fails here, naming it), and count images per class."""

from __future__ import annotations

from typing import Any

import numpy as np

from pnoc.config import DataParams
from pnoc.data.factory import open_dataset, warn_missing_classes


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


def run(data: DataParams) -> tuple[dict[str, Any], Any]:
    """The dataset report (name, root, classes, per split :func:`split_stats`) and the
    training split's reader (for a sample grid)."""
    report: dict[str, Any] = {"dataset": data.name, "root": str(data.root)}
    train = None
    for split in (data.train_split, data.val_split):
        dataset = open_dataset(data, split)
        report[split] = split_stats(dataset)
        report["classes"] = dataset.class_names
        train = train or dataset
    return report, train
