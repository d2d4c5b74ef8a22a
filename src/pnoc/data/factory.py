"""Open the dataset named by the ``data`` params section."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pnoc.config import DataParams
from pnoc.data.prepared import PREPARED_ROOT, prepared_folder

log = logging.getLogger(__name__)


def open_dataset(data: DataParams, split: str, *, prepared: str | Path | None = PREPARED_ROOT):
    """A VOC-layout reader (embedded or real VOC) or the COCO 2014 reader for ``split``.

    ``prepared``: the ``prepare`` stage's output folder (:mod:`pnoc.data.prepared`), used when
    its manifest says it was prepared, completely, from this ``data.name`` and ``data.root``:
    VOC's ``SegmentationClassAug`` built from SBD, COCO's rendered masks and labels.
    """
    folder = prepared_folder(prepared, data.name, data.root)
    if data.name == "coco14":
        from pnoc.data.coco import COCODataset

        return COCODataset(data.root, split, skip_bad=data.skip_bad, prepared=folder)
    from pnoc.data.voc import VOCDataset

    return VOCDataset(data.root, split, skip_bad=data.skip_bad, prepared=folder)


def warn_missing_classes(dataset) -> list[str]:
    """Name every foreground class without a positive image; training proceeds without them."""
    counts = np.asarray(dataset.label_matrix()).sum(axis=0)
    missing = [dataset.class_names[i + 1] for i, c in enumerate(counts) if c == 0]
    for name in missing:
        log.warning("class '%s' has no positive image in split '%s'", name, dataset.split)
    return missing
