"""Datasets: VOC-layout reader, COCO 2014 reader, synthetic generator, transforms.

Names are re-exported lazily (PEP 562) so that ``import pnoc.data.base`` stays cheap and
pycocotools is only imported by COCO users.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "IGNORE_INDEX": "pnoc.data.base",
    "Sample": "pnoc.data.base",
    "SampleKey": "pnoc.data.base",
    "ImageLabelDataset": "pnoc.data.reader",
    "VOC_CLASSES": "pnoc.data.voc",
    "VOCDataset": "pnoc.data.voc",
    "VOC_PALETTE": "pnoc.data.files",
    "read_image": "pnoc.data.files",
    "read_mask": "pnoc.data.files",
    "write_mask_png": "pnoc.data.files",
    "ClassificationSet": "pnoc.data.torch_sets",
    "SegmentationSet": "pnoc.data.torch_sets",
    "collate": "pnoc.data.torch_sets",
    "COCODataset": "pnoc.data.coco",
    "CLASS_NAMES": "pnoc.data.synthetic_shapes",
    "SyntheticStats": "pnoc.data.synthetic",
    "generate_synthetic": "pnoc.data.synthetic",
    "classification_train_transform": "pnoc.data.transforms",
    "segmentation_train_transform": "pnoc.data.transforms",
    "eval_transform": "pnoc.data.transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pnoc.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
