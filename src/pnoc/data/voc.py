"""Reader of the Pascal VOC 2012 layout (real VOC, a custom VOC-layout folder, or synthetic data).

Layout under ``root``::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png          palette or grayscale PNG of class indices, 255 = ignore
    Annotations/<id>.xml                optional; image-level labels from its <object><name>s
    ImageSets/Segmentation/<split>.txt  one id per line
    class_names.txt                     optional; one name per line, "background" first
    SegmentationClassAug/<id>.png       optional train_aug convention (SBD-augmented masks),
    ImageSets/SegmentationAug/<split>.txt  used when both exist and ``use_aug`` is true
    SBD/                                the SBD release, from which the ``prepare`` stage
                                        builds the two above (:mod:`pnoc.data.prepare_voc`)

``SegmentationClassAug`` and its lists are looked for first in ``prepared`` (the ``prepare``
stage's output folder, where it writes them when it builds them from SBD), then in ``root``.

Every problem with the files raises :class:`~pnoc.errors.DatasetError` naming the file.
The torch views of a reader are in :mod:`pnoc.data.torch_sets`, the image and mask file
helpers in :mod:`pnoc.data.files`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pnoc.data.base import SampleKey, key_index
from pnoc.data.files import (
    check_class_names,
    check_mask_values,
    labels_from_mask,
    list_dir,
    read_class_names,
    read_id_list,
    read_mask,
)
from pnoc.data.reader import ImageLabelDataset
from pnoc.errors import ConfigError, DatasetError

__all__ = ["VOC_CLASSES", "VOCDataset", "train_aug_missing"]


#: Pascal VOC 2012 class names, background first (index = mask value).
VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane", "bicycle", "bird", "boat", "bottle",
    "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


#: The SBD-augmented training split and where its masks and list live (in a VOC root or in
#: the ``prepare`` stage's folder).
TRAIN_AUG = "train_aug"
AUG_MASK_DIR = Path("SegmentationClassAug")
AUG_LIST_DIR = Path("ImageSets") / "SegmentationAug"
#: Where the SBD release goes in a VOC root: its ``dataset`` folder's contents (cls/, train.txt,
#: val.txt), the ``dataset`` folder itself, or the whole ``benchmark_RELEASE`` folder.
SBD_DIR = "SBD"


def train_aug_missing(root: Path, prepared: str | Path | None = None) -> DatasetError:
    """The error for a ``train_aug`` split that neither ``root`` nor ``prepared`` holds."""
    where = f"{root}" + (f" or {prepared}" if prepared is not None else "")
    return DatasetError(
        root / AUG_LIST_DIR / f"{TRAIN_AUG}.txt",
        f"split '{TRAIN_AUG}' needs {AUG_MASK_DIR}/ and {AUG_LIST_DIR}/{TRAIN_AUG}.txt, found in "
        f"neither {where}. Put the SBD release at {root / SBD_DIR} (the contents of "
        "benchmark_RELEASE/dataset: cls/*.mat, train.txt, val.txt) and run the prepare stage "
        f"(`dvc repro prepare`), which builds them; or put both into {root}; or train on VOC's "
        "own masks with data.train_split=train",
    )


class VOCDataset(ImageLabelDataset):
    """Pascal VOC 2012 layout reader producing :class:`~pnoc.data.base.Sample`.

    Args:
        root: dataset folder (see the module docstring for the layout).
        split: list file name without ``.txt`` (``train``, ``val``, ``train_aug``, ...).
        class_names: names with background first; default: ``root/class_names.txt`` when
            present, else :data:`VOC_CLASSES`.
        use_aug: use ``SegmentationClassAug`` + ``ImageSets/SegmentationAug/<split>.txt``
            when both exist (in ``prepared``, else in ``root``).
        skip_bad: drop ids whose image is missing or whose XML is bad (recorded in
            ``skipped`` and logged) instead of raising; :meth:`validate` then also drops
            undecodable samples. Corrupt files met by ``__getitem__`` always raise.
        prepared: the ``prepare`` stage's output folder (:mod:`pnoc.data.prepare_voc`), looked
            in first for ``SegmentationClassAug`` and its lists; ``None``: ``root`` only.

    Image-level labels come from ``Annotations/<id>.xml`` (every <object>, difficult ones
    included), parsed at construction; ids without an XML get labels from their mask
    (values other than 0 and 255), computed on first use and cached.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        class_names: Sequence[str] | None = None,
        use_aug: bool = True,
        skip_bad: bool = False,
        prepared: str | Path | None = None,
    ) -> None:
        super().__init__(root, split, skip_bad=skip_bad)
        if not self.root.is_dir():
            raise DatasetError(self.root, "dataset root folder does not exist")

        self.uses_aug = False
        self.list_path = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        self.mask_dir = self.root / "SegmentationClass"
        for base in ([Path(prepared)] if prepared is not None else []) + [self.root]:
            aug_list = base / AUG_LIST_DIR / f"{split}.txt"
            aug_masks = base / AUG_MASK_DIR
            if use_aug and aug_masks.is_dir() and aug_list.is_file():
                self.uses_aug, self.list_path, self.mask_dir = True, aug_list, aug_masks
                break
        if split == TRAIN_AUG and not self.list_path.is_file():
            raise train_aug_missing(self.root, prepared)
        self.image_dir = self.root / "JPEGImages"
        self.annotation_dir = self.root / "Annotations"

        if class_names is not None:
            names = list(class_names)
            check_class_names(names, lambda p: ConfigError(f"class_names: {p}"))
            self.class_names = names
        elif (self.root / "class_names.txt").is_file():
            self.class_names = read_class_names(self.root / "class_names.txt")
        else:
            self.class_names = list(VOC_CLASSES)
        self._class_index = {n: k for k, n in enumerate(self.class_names)}

        self.ids = read_id_list(self.list_path, split)
        self._mask_names = list_dir(self.mask_dir)
        bad: dict[str, str] = {}
        errors: list[DatasetError] = []

        images = list_dir(self.image_dir)
        missing = [i for i in self.ids if f"{i}.jpg" not in images]
        for image_id in missing:
            err = DatasetError(
                self.image_path(image_id),
                f"image for id '{image_id}' listed in {self.list_path} does not exist "
                f"({len(missing)} of {len(self.ids)} listed images are missing)",
            )
            errors.append(err)
            bad[image_id] = str(err)

        annotations = list_dir(self.annotation_dir)
        for image_id in self.ids:
            if image_id in bad or f"{image_id}.xml" not in annotations:
                continue
            try:
                self._labels[image_id] = self._parse_xml(self.annotation_dir / f"{image_id}.xml")
            except DatasetError as e:
                errors.append(e)
                bad[image_id] = str(e)

        if errors and not skip_bad:
            raise errors[0]
        self._drop(bad, during="construction")

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path:
        return self.mask_dir / f"{image_id}.png"

    def _parse_xml(self, path: Path) -> np.ndarray:
        """(K,) multi-hot labels from a VOC annotation's <object><name> entries."""
        try:
            tree = ET.parse(path)
        except (ET.ParseError, OSError) as e:
            raise DatasetError(path, f"annotation is not valid XML ({e})") from e
        labels = np.zeros(self.num_classes, dtype=np.float32)
        for obj in tree.getroot().iter("object"):
            name = (obj.findtext("name") or "").strip()
            if not name:
                raise DatasetError(path, "an <object> has no <name>")
            k = self._class_index.get(name)
            if k is None or k == 0:
                raise DatasetError(
                    path,
                    f"object name '{name}' is not one of the {self.num_classes} foreground "
                    f"class names {self.class_names[1:6]}{'...' if self.num_classes > 5 else ''}",
                )
            labels[k - 1] = 1.0
        return labels

    def load_mask(self, image_id: str) -> np.ndarray | None:
        """H×W uint8 mask (``SegmentationClassAug`` for train_aug), value-checked; or None."""
        if f"{image_id}.png" not in self._mask_names:
            return None
        path = self.mask_path(image_id)
        mask = read_mask(path)
        check_mask_values(path, mask, self.num_classes)
        return mask

    def labels(self, i: int | SampleKey) -> np.ndarray:
        index, _ = key_index(i)
        image_id = self.ids[index]
        cached = self._labels.get(image_id)
        if cached is None:
            mask = self.load_mask(image_id)
            if mask is None:
                raise DatasetError(
                    self.mask_path(image_id),
                    f"id '{image_id}' has neither an annotation XML nor a segmentation mask, "
                    "so it has no image-level labels",
                )
            cached = self._labels[image_id] = labels_from_mask(mask, self.num_classes)
        return cached.copy()
