"""The reader interface every dataset implements, and the machinery readers share.

A reader lists sample ids, decodes an id's image and mask and gives its image-level labels;
:class:`ImageLabelDataset` builds indexing, validation and the skipping of bad samples on that.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pnoc.data.base import Sample, SampleKey, key_index
from pnoc.data.files import read_image
from pnoc.errors import DatasetError

log = logging.getLogger(__name__)


class ImageLabelDataset:
    """Common machinery of the VOC and COCO readers (subclasses fill ids, paths and labels).

    Attributes: ``root``, ``split``, ``ids`` (list of str), ``class_names`` (background
    first), ``num_classes`` (K foreground classes), ``skipped`` (list of (id, reason)).
    """

    ids: list[str]
    class_names: list[str]

    def __init__(self, root: str | Path, split: str, *, skip_bad: bool = False) -> None:
        self.root = Path(root)
        self.split = split
        self.skip_bad = skip_bad
        self.skipped: list[tuple[str, str]] = []
        self._labels: dict[str, np.ndarray] = {}  # image-level labels per id, where known

    @property
    def num_classes(self) -> int:
        """K: the number of foreground classes (``len(class_names) - 1``)."""
        return len(self.class_names) - 1

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"images={len(self)}, classes={self.num_classes}, skipped={len(self.skipped)})"
        )

    # -- to be provided by subclasses ------------------------------------------------------
    def image_path(self, image_id: str) -> Path:
        raise NotImplementedError

    def mask_path(self, image_id: str) -> Path:
        """Where the id's mask would be (for error messages); it need not exist."""
        raise NotImplementedError

    def load_mask(self, image_id: str) -> np.ndarray | None:
        """H×W uint8 class indices (255 = ignore), checked; ``None`` when the id has no mask."""
        raise NotImplementedError

    def labels(self, i: int | SampleKey) -> np.ndarray:
        """(K,) float32 multi-hot image-level labels of sample ``i``."""
        raise NotImplementedError

    def _forget(self, image_id: str) -> None:
        """Drop the per-id caches of a removed id."""
        self._labels.pop(image_id, None)

    # -- shared ----------------------------------------------------------------------------
    def load_image(self, image_id: str) -> np.ndarray:
        """H×W×3 uint8 RGB image of ``image_id``, fully decoded (corruption raises)."""
        return read_image(self.image_path(image_id))

    def label_matrix(self) -> np.ndarray:
        """(N, K) float32 matrix of image-level labels, row i = ``labels(i)``."""
        if not self.ids:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        return np.stack([self.labels(i) for i in range(len(self.ids))])

    def get(self, key: int | SampleKey, *, mask: bool = True) -> Sample:
        """The sample at ``key``; ``mask=False`` skips decoding the mask (classification)."""
        i, _ = key_index(key)
        image_id = self.ids[i]
        image = self.load_image(image_id)
        m = self.load_mask(image_id) if mask else None
        if m is not None and m.shape != image.shape[:2]:
            raise DatasetError(
                self.mask_path(image_id),
                f"mask size {m.shape[1]}x{m.shape[0]} differs from the image size "
                f"{image.shape[1]}x{image.shape[0]} of {self.image_path(image_id)}",
            )
        return Sample(id=image_id, image=image, labels=self.labels(i), mask=m)

    def __getitem__(self, key: int | SampleKey) -> Sample:
        return self.get(key)

    def _check_one(self, i: int) -> DatasetError | None:
        try:
            self.get(i)
        except DatasetError as e:
            return e
        return None

    def validate(self, workers: int = 4) -> int:
        """Decode every image and mask and check sizes, values and labels; return the count.

        Without ``skip_bad`` the first bad sample (in list order) raises. With ``skip_bad``
        bad samples are removed, recorded in ``skipped`` and reported in a warning.
        """
        n = len(self.ids)
        with ThreadPoolExecutor(max_workers=max(1, min(workers, os.cpu_count() or 1))) as pool:
            # PIL decoding releases the GIL, so threads give a real speed-up on big datasets.
            errors = list(pool.map(self._check_one, range(n)))
        bad = {self.ids[i]: e for i, e in enumerate(errors) if e is not None}
        if bad and not self.skip_bad:
            raise next(iter(bad.values()))
        if bad:
            self._drop({k: str(e) for k, e in bad.items()}, during="validation")
        return len(self.ids)

    def _drop(self, bad: dict[str, str], *, during: str) -> None:
        """Remove ``bad`` ids (id → reason), record and report them; never drop silently."""
        if not bad:
            return
        before = len(self.ids)
        self.ids = [i for i in self.ids if i not in bad]
        for image_id in bad:
            self._forget(image_id)
        self.skipped.extend(bad.items())
        examples = "; ".join(f"{k}: {v}" for k, v in list(bad.items())[:3])
        log.warning(
            "%s split '%s': skipped %d of %d images during %s (e.g. %s)",
            self.root,
            self.split,
            len(bad),
            before,
            during,
            examples,
        )
        if not self.ids:
            raise DatasetError(
                self.root,
                f"split '{self.split}' has no usable image left after skipping {len(bad)}",
            )
