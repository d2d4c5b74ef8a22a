"""Reader of the Pascal VOC 2012 layout (real VOC, a custom VOC-layout folder, or synthetic data).

Layout under ``root``::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png          palette or grayscale PNG of class indices, 255 = ignore
    Annotations/<id>.xml                optional; image-level labels from its <object><name>s
    ImageSets/Segmentation/<split>.txt  one id per line
    class_names.txt                     optional; one name per line, "background" first
    SegmentationClassAug/<id>.png       optional train_aug convention (SBD-augmented masks),
    ImageSets/SegmentationAug/<split>.txt  used when both exist and ``use_aug`` is true

Every problem with the files raises :class:`~pnoc.errors.DatasetError` naming the file.
The torch wrappers :class:`ClassificationSet` and :class:`SegmentationSet` turn a reader into a
``torch.utils.data.Dataset`` whose items are dicts of tensors.
"""

from __future__ import annotations

import io
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pnoc.data.base import Sample, SampleKey
from pnoc.data.transforms import eval_transform, to_tensor_image, to_tensor_mask
from pnoc.errors import ConfigError, DatasetError
from pnoc.io import write_bytes

log = logging.getLogger(__name__)

#: Pascal VOC 2012 class names, background first (index = mask value).
VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane", "bicycle", "bird", "boat", "bottle",
    "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

IGNORE_INDEX = 255


def _voc_palette() -> tuple[int, ...]:
    """The standard VOC colour map: 256 RGB triplets, flattened (index 255 = (224, 224, 192))."""
    pal: list[int] = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return tuple(pal)


#: Flattened 768-value VOC palette, ready for ``PIL.Image.putpalette``.
VOC_PALETTE: tuple[int, ...] = _voc_palette()


def encode_mask_png(mask: np.ndarray) -> bytes:
    """Encode an H×W uint8 class-index mask as a VOC palette PNG (deterministic bytes)."""
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask must be a 2-D uint8 array, got {mask.dtype} {mask.shape}")
    im = Image.fromarray(mask)
    im.putpalette(VOC_PALETTE)  # "L" → "P": pixel values stay the class indices
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def write_mask_png(path: str | Path, mask: np.ndarray) -> None:
    """Write an H×W uint8 class-index mask as a VOC palette PNG, atomically."""
    write_bytes(path, encode_mask_png(mask))


def read_image(path: Path) -> np.ndarray:
    """Decode an image file fully into H×W×3 uint8 RGB.

    The whole file is decoded (``load()``), so a truncated JPEG is detected: Pillow raises on
    missing data unless ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is set, which pnoc never does.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return np.array(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(path, "image file does not exist") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(
            path, f"image cannot be decoded; the file is corrupt or truncated ({e})"
        ) from e


def read_mask(path: Path) -> np.ndarray:
    """Decode a class-index PNG (mode "P", "L" or 16-bit grayscale) into H×W uint8."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.array(im)
    except FileNotFoundError:
        raise DatasetError(path, "mask file does not exist") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(
            path, f"mask cannot be decoded; the file is corrupt or truncated ({e})"
        ) from e
    if mode in ("P", "L"):
        return arr.astype(np.uint8, copy=False)
    if mode in ("I", "I;16", "I;16B", "I;16L") and arr.ndim == 2:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DatasetError(
                path, f"mask holds values up to {int(arr.max())}; class indices must be 0–255"
            )
        return arr.astype(np.uint8)
    raise DatasetError(
        path,
        f"mask has image mode {mode!r}; expected a palette ('P') or grayscale ('L') PNG "
        "whose pixel values are class indices",
    )


def check_mask_values(path: Path, mask: np.ndarray, num_classes: int) -> None:
    """Raise unless every value is a class index 0..num_classes or 255 (ignore)."""
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    bad = [int(v) for v in present if v > num_classes and v != IGNORE_INDEX]
    if bad:
        raise DatasetError(
            path,
            f"mask contains value(s) {bad[:5]} that are neither a class index "
            f"(0..{num_classes}) nor 255 (ignore)",
        )


def labels_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(K,) float32 multi-hot of the foreground classes present in a checked mask."""
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256)[1 : num_classes + 1])
    labels = np.zeros(num_classes, dtype=np.float32)
    labels[present] = 1.0
    return labels


def read_class_names(path: Path) -> list[str]:
    """Read ``class_names.txt``: one name per line, "background" first, no duplicates."""
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(path, f"class name file cannot be read ({e})") from e
    names = [n for n in names if n]
    _check_class_names(names, lambda problem: DatasetError(path, problem))
    return names


def _check_class_names(names: Sequence[str], error: Callable[[str], Exception]) -> None:
    if len(names) < 2:
        raise error("needs 'background' and at least one foreground class name")
    if names[0].lower() != "background":
        raise error(f"the first class must be 'background' (index 0), found {names[0]!r}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise error(f"class names are repeated: {dup}")
    if len(names) > IGNORE_INDEX:
        raise error(f"{len(names)} classes do not fit in a uint8 mask with 255 = ignore")


def read_id_list(path: Path, split: str) -> list[str]:
    """Read a split list file: one id per line (extra columns, as in VOC's Main lists, dropped)."""
    if not path.is_file():
        raise DatasetError(
            path,
            f"split list file for split '{split}' does not exist (expected one image id per line)",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(path, f"split list file cannot be read ({e})") from e
    ids = [line.split()[0] for line in text.splitlines() if line.strip()]
    if not ids:
        raise DatasetError(path, f"split '{split}' is empty: the list file names no image ids")
    return ids


def _key_index(key: int | SampleKey) -> tuple[int, int]:
    """(index, augmentation seed) of an int or a SampleKey; a plain int seeds with itself."""
    if isinstance(key, SampleKey):
        return int(key.index), int(key.seed)
    index = int(key)
    return index, index


class ImageLabelDataset:
    """Common machinery of the VOC and COCO readers (subclasses fill ids, paths and labels).

    Attributes: ``root``, ``split``, ``ids`` (list of str), ``class_names`` (background
    first), ``num_classes`` (K foreground classes), ``skipped`` (list of (id, reason)).
    """

    root: Path
    split: str
    ids: list[str]
    class_names: list[str]
    skipped: list[tuple[str, str]]
    skip_bad: bool

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
        """Drop per-id caches of a removed id (subclasses with caches override)."""

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
        i, _ = _key_index(key)
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


def _list_dir(path: Path) -> set[str]:
    """File names in ``path`` (empty when it does not exist): one syscall instead of N stats."""
    try:
        return set(os.listdir(path))
    except FileNotFoundError:
        return set()


class VOCDataset(ImageLabelDataset):
    """Pascal VOC 2012 layout reader producing :class:`~pnoc.data.base.Sample`.

    Args:
        root: dataset folder (see the module docstring for the layout).
        split: list file name without ``.txt`` (``train``, ``val``, ``train_aug``, ...).
        class_names: names with background first; default: ``root/class_names.txt`` when
            present, else :data:`VOC_CLASSES`.
        use_aug: use ``SegmentationClassAug`` + ``ImageSets/SegmentationAug/<split>.txt``
            when both exist.
        skip_bad: drop ids whose image is missing or whose XML is bad (recorded in
            ``skipped`` and logged) instead of raising; :meth:`validate` then also drops
            undecodable samples. Corrupt files met by ``__getitem__`` always raise.

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
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.skip_bad = skip_bad
        self.skipped = []
        if not self.root.is_dir():
            raise DatasetError(self.root, "dataset root folder does not exist")

        aug_list = self.root / "ImageSets" / "SegmentationAug" / f"{split}.txt"
        aug_masks = self.root / "SegmentationClassAug"
        self.uses_aug = use_aug and aug_masks.is_dir() and aug_list.is_file()
        if self.uses_aug:
            self.list_path, self.mask_dir = aug_list, aug_masks
        else:
            self.list_path = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
            self.mask_dir = self.root / "SegmentationClass"
        self.image_dir = self.root / "JPEGImages"
        self.annotation_dir = self.root / "Annotations"

        if class_names is not None:
            names = list(class_names)
            _check_class_names(names, lambda p: ConfigError(f"class_names: {p}"))
            self.class_names = names
        elif (self.root / "class_names.txt").is_file():
            self.class_names = read_class_names(self.root / "class_names.txt")
        else:
            self.class_names = list(VOC_CLASSES)
        self._class_index = {n: k for k, n in enumerate(self.class_names)}

        self.ids = read_id_list(self.list_path, split)
        self._mask_names = _list_dir(self.mask_dir)
        self._labels: dict[str, np.ndarray] = {}
        bad: dict[str, str] = {}
        errors: list[DatasetError] = []

        images = _list_dir(self.image_dir)
        missing = [i for i in self.ids if f"{i}.jpg" not in images]
        for image_id in missing:
            err = DatasetError(
                self.image_path(image_id),
                f"image for id '{image_id}' listed in {self.list_path} does not exist "
                f"({len(missing)} of {len(self.ids)} listed images are missing)",
            )
            errors.append(err)
            bad[image_id] = str(err)

        annotations = _list_dir(self.annotation_dir)
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
        index, _ = _key_index(i)
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

    def _forget(self, image_id: str) -> None:
        self._labels.pop(image_id, None)


# --- torch wrappers ---------------------------------------------------------------------------


class ClassificationSet(torch.utils.data.Dataset):
    """Image-level view of a reader for CAM classifiers.

    Items (for an int or :class:`SampleKey`): ``image`` float32 3×H×W (normalised),
    ``labels`` float32 (K,), ``id`` str, ``index`` int. The transform receives
    ``np.random.default_rng(key.seed)`` (a plain int i uses seed i). Masks are not decoded.
    """

    def __init__(
        self, dataset: ImageLabelDataset, transform: Callable[..., Any] | None = None
    ) -> None:
        self.dataset = dataset
        self.transform = transform if transform is not None else eval_transform()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any]:
        index, seed = _key_index(key)
        sample = self.dataset.get(index, mask=False)
        image, _ = self.transform(sample.image, None, np.random.default_rng(seed))
        return {
            "image": to_tensor_image(image),
            "labels": torch.from_numpy(sample.labels),
            "id": sample.id,
            "index": index,
        }


class SegmentationSet(torch.utils.data.Dataset):
    """Dense view of a reader: like :class:`ClassificationSet` plus ``mask`` int64 H×W.

    ``mask_dir`` reads masks from ``<mask_dir>/<id>.png`` instead of the dataset's own (e.g.
    pseudo-masks); they are checked like dataset masks. A sample without a mask raises.
    """

    def __init__(
        self,
        dataset: ImageLabelDataset,
        transform: Callable[..., Any] | None = None,
        *,
        mask_dir: str | Path | None = None,
    ) -> None:
        self.dataset = dataset
        self.transform = transform if transform is not None else eval_transform()
        self.mask_dir = Path(mask_dir) if mask_dir is not None else None

    def __len__(self) -> int:
        return len(self.dataset)

    def _mask(self, sample: Sample) -> tuple[np.ndarray, Path]:
        if self.mask_dir is not None:
            path = self.mask_dir / f"{sample.id}.png"
            mask = read_mask(path)
            check_mask_values(path, mask, self.dataset.num_classes)
            return mask, path
        path = self.dataset.mask_path(sample.id)
        if sample.mask is None:
            raise DatasetError(path, f"id '{sample.id}' has no segmentation mask")
        return sample.mask, path

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any]:
        index, seed = _key_index(key)
        sample = self.dataset.get(index, mask=self.mask_dir is None)
        mask, path = self._mask(sample)
        if mask.shape != sample.image.shape[:2]:
            raise DatasetError(
                path,
                f"mask size {mask.shape[1]}x{mask.shape[0]} differs from the image size "
                f"{sample.image.shape[1]}x{sample.image.shape[0]}",
            )
        image, mask = self.transform(sample.image, mask, np.random.default_rng(seed))
        return {
            "image": to_tensor_image(image),
            "mask": to_tensor_mask(mask),
            "labels": torch.from_numpy(sample.labels),
            "id": sample.id,
            "index": index,
        }


def collate(batch: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors of a list of items; ``id`` stays a list of str, ``index`` an int64 tensor."""
    items = list(batch)
    if not items:
        raise ValueError("cannot collate an empty batch")
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif key == "index":
            out[key] = torch.as_tensor(values, dtype=torch.long)
        else:
            out[key] = values
    return out
