"""MS COCO 2014 reader (pycocotools) with the same interface and Sample structure as VOCDataset.

Layout under ``root``::

    train2014/*.jpg   val2014/*.jpg
    annotations/instances_train2014.json   annotations/instances_val2014.json

Split names are ``train`` and ``val``. Ids are the image file names without extension
(``COCO_train2014_000000000009``), in increasing COCO image id order.

Classes: background first, then the annotation file's categories sorted by category id and
renumbered contiguously 1..K (COCO's ids 1..90 have gaps; K = 80).

Masks are rendered from the instance annotations by :func:`render_mask`, the one renderer
(the reader on the fly and :mod:`pnoc.data.prepare_coco` use it):

1. crowd regions (``iscrowd=1``) are painted 255 (ignore) first;
2. non-crowd instances are painted in decreasing area order, so where instances overlap the
   **smaller instance wins** (a cup on a table stays a cup), and explicit instances also win
   over a crowd region they lie in.

Overlaps of instances are not made 255: COCO's polygons overlap mostly where one object lies on
or in front of another, and those pixels show the front, usually smaller, object; marking them
ignore would erase small objects that lie wholly inside a larger one (a cup on a dining table).

Image-level labels count every annotation, crowd ones included: a crowd of people means the
class is present even though its pixels are ignored in the mask.

With ``prepared`` (the ``prepare`` stage's folder, :mod:`pnoc.data.prepare_coco`) holding
``labels/<split>2014.json``, the reader takes ids, classes and labels from it and masks from
``masks/<split>2014/<id>.png`` instead of loading the annotation file.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pnoc.data.base import IGNORE_INDEX, SampleKey, key_index
from pnoc.data.files import check_mask_values, list_dir, read_mask
from pnoc.data.reader import ImageLabelDataset
from pnoc.errors import DatasetError

YEAR = 2014
#: Folders of a prepared COCO split under the prepared root: labels/<split>2014.json, masks/...
LABELS_DIR, MASKS_DIR = "labels", "masks"


def prepared_paths(prepared: str | Path, split: str) -> tuple[Path, Path]:
    """(labels file, masks folder) of ``split`` in a prepared folder."""
    prepared = Path(prepared)
    return (
        prepared / LABELS_DIR / f"{split}{YEAR}.json",
        prepared / MASKS_DIR / f"{split}{YEAR}",
    )


def render_mask(
    anns: Sequence[Mapping[str, Any]],
    height: int,
    width: int,
    category_to_index: Mapping[int, int],
    *,
    source: Path,
    image_id: str,
) -> np.ndarray:
    """H×W uint8 class mask of one image's annotations: crowd 255, smaller instance wins.

    ``source`` (the annotation file) and ``image_id`` name the culprit of an error.
    """
    mask = np.zeros((height, width), dtype=np.uint8)
    crowd = [a for a in anns if a.get("iscrowd", 0)]
    # Stable sort by decreasing area: ties keep annotation order, so the result is stable.
    things = sorted(
        (a for a in anns if not a.get("iscrowd", 0)), key=lambda a: -float(a.get("area", 0.0))
    )
    for ann in crowd:
        mask[_ann_mask(ann, height, width, source, image_id)] = IGNORE_INDEX
    for ann in things:
        k = category_to_index.get(ann["category_id"])
        if k is None:
            raise DatasetError(
                source,
                f"annotation {ann.get('id')} of image '{image_id}' has category_id "
                f"{ann['category_id']}, which is not among the file's categories",
            )
        mask[_ann_mask(ann, height, width, source, image_id)] = k
    return mask


def _ann_mask(ann: Mapping[str, Any], h: int, w: int, source: Path, image_id: str) -> np.ndarray:
    """The boolean mask of one annotation (polygons, uncompressed or compressed RLE), as
    pycocotools' ``COCO.annToMask`` decodes it."""
    from pycocotools import mask as mask_utils  # imported lazily: only COCO users need it

    try:
        with warnings.catch_warnings():
            # pycocotools 2.0.x's Cython decoder trips a NumPy 2 DeprecationWarning
            # (``__array__`` without ``copy``) on every call; it is harmless noise.
            warnings.simplefilter("ignore", DeprecationWarning)
            segm = ann["segmentation"]
            if isinstance(segm, list):  # polygons: one object may have several parts
                rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
            elif isinstance(segm["counts"], list):  # uncompressed RLE
                rle = mask_utils.frPyObjects(segm, h, w)
            else:  # compressed RLE
                rle = segm
            m = mask_utils.decode(rle)
    except Exception as e:  # pycocotools raises bare Exceptions/TypeErrors on bad input
        raise DatasetError(
            source,
            f"segmentation of annotation {ann.get('id')} (image '{image_id}') "
            f"cannot be rendered ({e!r})",
        ) from e
    if m.shape != (h, w):
        raise DatasetError(
            source,
            f"annotation {ann.get('id')} renders to {m.shape[1]}x{m.shape[0]}, "
            f"not the image size {w}x{h} of '{image_id}'",
        )
    return m.astype(bool)


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
        prepared: a folder written by :func:`pnoc.data.prepare_coco.prepare_coco`; used when
            it holds the split's labels file (masks then come from its PNGs).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        skip_bad: bool = False,
        drop_empty: bool = False,
        prepared: str | Path | None = None,
    ) -> None:
        super().__init__(root, split, skip_bad=skip_bad)
        self.image_dir = self.root / f"{split}{YEAR}"
        self.annotation_path = self.root / "annotations" / f"instances_{split}{YEAR}.json"
        self._image_info: dict[str, dict[str, Any]] = {}
        self.mask_dir: Path | None = None
        labels_path = prepared_paths(prepared, split)[0] if prepared is not None else None
        if labels_path is not None and labels_path.is_file():
            self._read_prepared(labels_path)
            self.mask_dir = prepared_paths(prepared, split)[1]  # type: ignore[arg-type]
            self._mask_names = list_dir(self.mask_dir)
        else:
            self._read_annotations()

        bad: dict[str, str] = {}
        files = list_dir(self.image_dir)
        missing = [i for i in self.ids if self._image_info[i]["file_name"] not in files]
        for image_id in missing:
            err = DatasetError(
                self.image_path(image_id),
                f"image '{image_id}' listed in {self.annotation_path.name} does not exist "
                f"({len(missing)} of {len(self.ids)} images are missing)",
            )
            if not skip_bad:
                raise err
            bad[image_id] = str(err)
        self._drop(bad, during="construction")
        if drop_empty:
            empty = {i: "no annotations" for i in self.ids if not self._labels[i].any()}
            self._drop(empty, during="construction (drop_empty)")

    def _read_annotations(self) -> None:
        """Ids, classes and labels from the instances JSON (pycocotools)."""
        from pycocotools.coco import COCO  # imported lazily: only COCO users need it

        if not self.annotation_path.is_file():
            raise DatasetError(
                self.annotation_path,
                f"COCO annotation file for split '{self.split}' does not exist",
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
            raise DatasetError(self.annotation_path, f"split '{self.split}' lists no images")
        self.ids = ids

    def _read_prepared(self, path: Path) -> None:
        """Ids, classes and labels from a prepared labels file (see :func:`labels_document`)."""
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            names = [str(n) for n in doc["classes"]]
            cat_ids = [int(c) for c in doc["category_ids"]]
            images = doc["images"]
            if len(names) != len(cat_ids) + 1 or not images:
                raise ValueError(f"{len(names)} classes, {len(cat_ids)} category ids, no images")
            self.class_names = names
            self.category_to_index = {c: k + 1 for k, c in enumerate(cat_ids)}
            ids = []
            for entry in images:
                image_id = str(entry["id"])
                self._image_info[image_id] = {
                    "id": int(entry["coco_id"]),
                    "file_name": str(entry["file_name"]),
                    "height": int(entry["height"]),
                    "width": int(entry["width"]),
                }
                labels = np.zeros(self.num_classes, dtype=np.float32)
                labels[[int(k) - 1 for k in entry["labels"]]] = 1.0
                self._labels[image_id] = labels
                ids.append(image_id)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise DatasetError(
                path, f"prepared COCO labels file cannot be read ({e!r}); rerun the prepare stage"
            ) from e
        self.ids = ids

    def labels_document(self) -> dict[str, Any]:
        """What a prepared labels file holds: classes, COCO category ids and, per image in id
        order, its COCO id, file name, size and class indices (1..K)."""
        by_index = sorted(self.category_to_index.items(), key=lambda kv: kv[1])
        return {
            "split": self.split,
            "classes": self.class_names,
            "category_ids": [c for c, _ in by_index],
            "images": [
                {
                    "id": image_id,
                    "coco_id": int(self._image_info[image_id]["id"]),
                    "file_name": self._image_info[image_id]["file_name"],
                    "height": int(self._image_info[image_id]["height"]),
                    "width": int(self._image_info[image_id]["width"]),
                    "labels": [int(k) + 1 for k in np.flatnonzero(self._labels[image_id])],
                }
                for image_id in self.ids
            ],
        }

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / self._image_info[image_id]["file_name"]

    def mask_path(self, image_id: str) -> Path:
        """The prepared PNG; without one masks are rendered from the annotation file, which
        errors then name."""
        if self.mask_dir is not None:
            return self.mask_dir / f"{image_id}.png"
        return self.annotation_path

    def labels(self, i: int | SampleKey) -> np.ndarray:
        index, _ = key_index(i)
        return self._labels[self.ids[index]].copy()

    def annotations(self, image_id: str) -> list[dict[str, Any]]:
        """The id's instance annotations (needs the annotation file, not a prepared folder)."""
        return list(self.coco.imgToAnns.get(self._image_info[image_id]["id"], []))

    def image_size(self, image_id: str) -> tuple[int, int]:
        """(height, width) the annotation file gives the id."""
        info = self._image_info[image_id]
        return int(info["height"]), int(info["width"])

    def load_mask(self, image_id: str) -> np.ndarray:
        """H×W uint8 mask: the prepared PNG, or rendered by :func:`render_mask`."""
        if self.mask_dir is not None:
            path = self.mask_path(image_id)
            if f"{image_id}.png" not in self._mask_names:
                raise DatasetError(
                    path, f"prepared mask of '{image_id}' does not exist; rerun the prepare stage"
                )
            mask = read_mask(path)
            check_mask_values(path, mask, self.num_classes)
            return mask
        h, w = self.image_size(image_id)
        return render_mask(
            self.annotations(image_id),
            h,
            w,
            self.category_to_index,
            source=self.annotation_path,
            image_id=image_id,
        )
