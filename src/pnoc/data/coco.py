"""MS COCO 2014 reader (pycocotools) with the same interface and Sample structure as VOCDataset.

Layout under ``root``::

    train2014/*.jpg   val2014/*.jpg
    annotations/instances_train2014.json   annotations/instances_val2014.json

Split names are ``train`` and ``val``. Ids are the image file names without extension
(``COCO_train2014_000000000009``), in increasing COCO image id order.

Classes: background first, then the annotation file's categories sorted by category id and
renumbered contiguously 1..K (COCO's ids 1..90 have gaps; K = 80).

Masks are rendered from the instance annotations:

1. crowd regions (``iscrowd=1``) are painted 255 (ignore) first;
2. non-crowd instances are painted in decreasing area order, so where instances overlap the
   **smaller instance wins** (a cup on a table stays a cup), and explicit instances also win
   over a crowd region they lie in.

Image-level labels count every annotation, crowd ones included: a crowd of people means the
class is present even though its pixels are ignored in the mask.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from pnoc.data.base import IGNORE_INDEX, SampleKey, key_index
from pnoc.data.files import list_dir
from pnoc.data.reader import ImageLabelDataset
from pnoc.errors import DatasetError

YEAR = 2014


class COCODataset(ImageLabelDataset):
    """COCO instance annotations as a semantic-segmentation dataset of :class:`Sample`.

    Args:
        root: folder holding ``<split>2014/`` and ``annotations/``.
        split: ``train`` or ``val`` (any ``<split>`` with ``instances_<split>2014.json``).
        skip_bad: drop ids whose image file is missing (recorded in ``skipped``, logged)
            instead of raising; :meth:`validate` then also drops undecodable images.
        drop_empty: drop images without any annotation (recorded in ``skipped`` with the
            reason "no annotations"). COCO train2014 has ~700 of them; they are kept by
            default because they are valid all-negative classification samples.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        skip_bad: bool = False,
        drop_empty: bool = False,
    ) -> None:
        from pycocotools.coco import COCO  # imported lazily: only COCO users need it

        super().__init__(root, split, skip_bad=skip_bad)
        self.image_dir = self.root / f"{split}{YEAR}"
        self.annotation_path = self.root / "annotations" / f"instances_{split}{YEAR}.json"
        if not self.annotation_path.is_file():
            raise DatasetError(
                self.annotation_path,
                f"COCO annotation file for split '{split}' does not exist",
            )
        try:
            # pycocotools prints progress to stdout; keep the pipeline's output clean.
            with contextlib.redirect_stdout(io.StringIO()):
                self.coco = COCO(str(self.annotation_path))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AssertionError) as e:
            raise DatasetError(
                self.annotation_path, f"COCO annotation file cannot be parsed ({e!r})"
            ) from e

        cat_ids = sorted(self.coco.getCatIds())
        if not cat_ids:
            raise DatasetError(self.annotation_path, "COCO annotation file defines no categories")
        self.category_to_index: dict[int, int] = {c: k + 1 for k, c in enumerate(cat_ids)}
        self.class_names = ["background", *(self.coco.cats[c]["name"] for c in cat_ids)]

        self._image_info: dict[str, dict[str, Any]] = {}
        ids: list[str] = []
        for img_id in sorted(self.coco.getImgIds()):
            info = self.coco.imgs[img_id]
            image_id = Path(info["file_name"]).stem
            self._image_info[image_id] = info
            labels = np.zeros(self.num_classes, dtype=np.float32)
            for ann in self.coco.imgToAnns.get(img_id, []):
                k = self.category_to_index.get(ann["category_id"])
                if k is None:
                    raise DatasetError(
                        self.annotation_path,
                        f"annotation {ann.get('id')} of image '{image_id}' has category_id "
                        f"{ann['category_id']}, which is not among the file's categories",
                    )
                labels[k - 1] = 1.0
            self._labels[image_id] = labels
            ids.append(image_id)
        if not ids:
            raise DatasetError(self.annotation_path, f"split '{split}' lists no images")
        self.ids = ids

        bad: dict[str, str] = {}
        files = list_dir(self.image_dir)
        missing = [i for i in ids if self._image_info[i]["file_name"] not in files]
        for image_id in missing:
            err = DatasetError(
                self.image_path(image_id),
                f"image '{image_id}' listed in {self.annotation_path.name} does not exist "
                f"({len(missing)} of {len(ids)} images are missing)",
            )
            if not skip_bad:
                raise err
            bad[image_id] = str(err)
        self._drop(bad, during="construction")
        if drop_empty:
            empty = {i: "no annotations" for i in self.ids if not self._labels[i].any()}
            self._drop(empty, during="construction (drop_empty)")

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / self._image_info[image_id]["file_name"]

    def mask_path(self, image_id: str) -> Path:
        """Masks are rendered from the annotation file; errors point at it."""
        return self.annotation_path

    def labels(self, i: int | SampleKey) -> np.ndarray:
        index, _ = key_index(i)
        return self._labels[self.ids[index]].copy()

    def load_mask(self, image_id: str) -> np.ndarray:
        """H×W uint8 mask rendered from the instances (see the module docstring for overlaps)."""
        info = self._image_info[image_id]
        h, w = int(info["height"]), int(info["width"])
        mask = np.zeros((h, w), dtype=np.uint8)
        anns = self.coco.imgToAnns.get(info["id"], [])
        crowd = [a for a in anns if a.get("iscrowd", 0)]
        # Stable sort by decreasing area: ties keep annotation order, so the result is stable.
        things = sorted(
            (a for a in anns if not a.get("iscrowd", 0)), key=lambda a: -float(a.get("area", 0.0))
        )
        for ann in crowd:
            mask[self._ann_mask(ann, image_id, h, w)] = IGNORE_INDEX
        for ann in things:
            mask[self._ann_mask(ann, image_id, h, w)] = self.category_to_index[ann["category_id"]]
        return mask

    def _ann_mask(self, ann: dict[str, Any], image_id: str, h: int, w: int) -> np.ndarray:
        try:
            with warnings.catch_warnings():
                # pycocotools 2.0.x's Cython decoder trips a NumPy 2 DeprecationWarning
                # (``__array__`` without ``copy``) on every call; it is harmless noise.
                warnings.simplefilter("ignore", DeprecationWarning)
                m = self.coco.annToMask(ann)
        except Exception as e:  # pycocotools raises bare Exceptions/TypeErrors on bad input
            raise DatasetError(
                self.annotation_path,
                f"segmentation of annotation {ann.get('id')} (image '{image_id}') "
                f"cannot be rendered ({e!r})",
            ) from e
        if m.shape != (h, w):
            raise DatasetError(
                self.annotation_path,
                f"annotation {ann.get('id')} renders to {m.shape[1]}x{m.shape[0]}, "
                f"not the image size {w}x{h} of '{image_id}'",
            )
        return m.astype(bool)
