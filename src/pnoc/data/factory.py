"""Open the dataset named by the ``data`` params section."""

from __future__ import annotations

import logging

import numpy as np

from pnoc.config import DataParams

log = logging.getLogger(__name__)


def open_dataset(data: DataParams, split: str):
    """A VOC-layout reader (embedded or real VOC) or the COCO 2014 reader for ``split``."""
    if data.name == "coco14":
        from pnoc.data.coco import COCODataset

        return COCODataset(data.root, split)
    from pnoc.data.voc import VOCDataset

    return VOCDataset(data.root, split, skip_bad=data.skip_bad)


def warn_missing_classes(dataset) -> list[str]:
    """Name every foreground class without a positive image; training proceeds without them."""
    counts = np.asarray(dataset.label_matrix()).sum(axis=0)
    missing = [dataset.class_names[i + 1] for i, c in enumerate(counts) if c == 0]
    for name in missing:
        log.warning("class '%s' has no positive image in split '%s'", name, dataset.split)
    return missing
