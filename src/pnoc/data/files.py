"""Decoding and checking of the files a VOC-layout dataset is made of.

Images decode fully into H×W×3 uint8 RGB; masks are palette or grayscale PNGs of class indices
(255 = ignore) and are written with the VOC colour map; class-name and split lists are text
files of one entry per line. Every problem raises :class:`~pnoc.errors.DatasetError` naming
the file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pnoc.data.base import IGNORE_INDEX
from pnoc.errors import DatasetError
from pnoc.io import write_bytes


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
    check_class_names(names, lambda problem: DatasetError(path, problem))
    return names


def check_class_names(names: Sequence[str], error: Callable[[str], Exception]) -> None:
    """Raise ``error(problem)`` unless the names fit a mask: background first, no repeats."""
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


def list_dir(path: Path) -> set[str]:
    """File names in ``path`` (empty when it does not exist): one syscall instead of N stats."""
    try:
        return set(os.listdir(path))
    except FileNotFoundError:
        return set()
