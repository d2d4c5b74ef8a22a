"""Serving logic without MLflow: the champion policy, request payloads, the segmenter.

- :func:`decide`: whether a newly registered model replaces the champion.
- :func:`decode_image_bytes`, :func:`as_image_array`, :func:`decode_image`: turn one request
  value (encoded PNG/JPEG bytes, base64 text, or an array of pixels) into an H×W×3 uint8 RGB
  image, or raise :class:`PayloadError` saying which value is wrong and what was expected.
- :class:`Segmenter`: a DeepLabV3+ checkpoint with its test-time augmentation, images in,
  class-index masks out.

The MLflow side (pyfunc wrapper, logging, aliases) lives in ``pipelines/serving.py``.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pnoc.errors import PnocError

#: Largest image accepted, in pixels (height × width), whether encoded or sent as an array.
MAX_PIXELS = 4096 * 4096
#: Largest encoded image accepted, in bytes (after base64 decoding).
MAX_BYTES = 32 * 1024 * 1024
#: Most images accepted in one request.
MAX_IMAGES = 64
#: Encoded formats accepted by :func:`decode_image_bytes` (Pillow format names).
IMAGE_FORMATS = ("PNG", "JPEG")


class PayloadError(PnocError, ValueError):
    """A request value is not an acceptable image; the message names the value and the rule."""


# --------------------------------------------------------------------------------------------
# Champion policy


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(new_value: float | None, champion_value: float | None) -> Decision:
    """Promote the new model iff its metric (higher is better) is strictly above the champion's.

    No champion (or a champion without a usable value) -> promote. A missing or non-finite new
    value -> never promote. Ties keep the champion.
    """
    if new_value is None or not math.isfinite(float(new_value)):
        return Decision(False, f"new value {new_value} is not a finite number: never promoted")
    new = float(new_value)
    if champion_value is None:
        return Decision(True, f"no champion yet: {new:.4f} becomes the champion")
    champ = float(champion_value)
    if not math.isfinite(champ):
        return Decision(True, f"champion value {champ} is not a finite number: {new:.4f} wins")
    if new > champ:
        return Decision(True, f"{new:.4f} > champion {champ:.4f}")
    if new == champ:
        return Decision(False, f"{new:.4f} ties champion {champ:.4f}: the champion stays")
    return Decision(False, f"{new:.4f} < champion {champ:.4f}: the champion stays")


# --------------------------------------------------------------------------------------------
# Payloads

_EXPECTED = "expected base64-encoded PNG/JPEG bytes or an H×W×3 array of integers 0..255"


def decode_image_bytes(data: bytes | str, *, where: str = "image") -> np.ndarray:
    """PNG/JPEG bytes, or their base64 text (a ``data:...;base64,`` prefix is allowed), -> H×W×3
    uint8 RGB. Grayscale, palette and RGBA images are converted to RGB (alpha dropped)."""
    from PIL import Image

    if isinstance(data, str):
        text = data.strip()
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        if len(text) * 3 // 4 > MAX_BYTES:
            raise PayloadError(
                f"{where}: about {len(text) * 3 // 4} bytes once decoded, more than the limit "
                f"of {MAX_BYTES} bytes"
            )
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PayloadError(f"{where}: not valid base64 ({exc}); {_EXPECTED}") from None
    elif isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
    else:
        raise PayloadError(f"{where}: got {type(data).__name__}; {_EXPECTED}")
    if not raw:
        raise PayloadError(f"{where}: empty image data; {_EXPECTED}")
    if len(raw) > MAX_BYTES:
        raise PayloadError(f"{where}: {len(raw)} bytes, more than the limit of {MAX_BYTES}")
    try:
        im = Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise PayloadError(
            f"{where}: declared size over the limit of {MAX_PIXELS} pixels (4096×4096): {exc}"
        ) from None
    except (OSError, SyntaxError, ValueError):
        raise PayloadError(
            f"{where}: not a PNG or JPEG image ({len(raw)} bytes starting {raw[:8]!r}); {_EXPECTED}"
        ) from None
    with im:
        w, h = im.size
        _check_size(h, w, where)
        try:
            im.load()
            rgb = im.convert("RGB")
        except (OSError, SyntaxError, ValueError) as exc:
            raise PayloadError(f"{where}: corrupt or truncated {im.format} image ({exc})") from None
    return np.asarray(rgb, dtype=np.uint8)


def encode_image_b64(image: np.ndarray, fmt: str = "PNG") -> str:
    """H×W×3 uint8 -> base64 text of its PNG (or JPEG) file, as requests carry images."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def as_image_array(obj: Any, *, where: str = "image") -> np.ndarray:
    """An H×W×3 array or nested list of integers 0..255 -> H×W×3 uint8 (a copy if converted)."""
    try:
        arr = np.asarray(obj)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise PayloadError(f"{where}: not a rectangular array ({exc}); {_EXPECTED}") from None
    if arr.size == 0:
        raise PayloadError(f"{where}: empty array (shape {arr.shape}); {_EXPECTED}")
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise PayloadError(f"{where}: array of shape {arr.shape}; expected H×W×3 (RGB)")
    if arr.dtype == np.uint8:
        _check_size(arr.shape[0], arr.shape[1], where)
        return arr
    if arr.dtype.kind not in "iu":
        kind = {"f": "floating-point", "b": "boolean", "U": "text", "O": "mixed/object"}
        raise PayloadError(
            f"{where}: {kind.get(arr.dtype.kind, str(arr.dtype))} values; expected integers "
            "0..255 (uint8 RGB)"
        )
    _check_size(arr.shape[0], arr.shape[1], where)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 255:
        raise PayloadError(f"{where}: values range over {lo}..{hi}; expected integers 0..255")
    return arr.astype(np.uint8)


def decode_image(value: Any, *, where: str = "image") -> np.ndarray:
    """One request value -> H×W×3 uint8: text/bytes are decoded as an image file, anything else
    is read as an array of pixels."""
    if value is None:
        raise PayloadError(f"{where}: missing (null); {_EXPECTED}")
    if isinstance(value, str | bytes | bytearray | memoryview):
        return decode_image_bytes(value, where=where)
    return as_image_array(value, where=where)


def check_batch_size(n: int) -> None:
    if n == 0:
        raise PayloadError(f"no images in the request; {_EXPECTED}")
    if n > MAX_IMAGES:
        raise PayloadError(f"{n} images in one request; the limit is {MAX_IMAGES}")


def _check_size(h: int, w: int, where: str) -> None:
    if h <= 0 or w <= 0:
        raise PayloadError(f"{where}: empty image ({h}×{w} pixels)")
    if h * w > MAX_PIXELS:
        raise PayloadError(
            f"{where}: {h}×{w} pixels, more than the limit of {MAX_PIXELS} (4096×4096)"
        )


# --------------------------------------------------------------------------------------------
# Segmenter


class Segmenter:
    """A DeepLabV3+ with its test-time augmentation: H×W×3 uint8 images -> H×W class masks."""

    def __init__(
        self,
        model: Any,
        *,
        scales: Sequence[float] = (1.0,),
        flip: bool = True,
        class_names: Sequence[str] | None = None,
        device: str = "cpu",
    ) -> None:
        if not scales or any(float(s) <= 0 for s in scales):
            raise PnocError(f"scales: expected positive numbers, got {list(scales)}")
        num_classes = int(model.num_classes)
        if class_names is not None and len(class_names) != num_classes:
            raise PnocError(
                f"class_names: {len(class_names)} names for a model with {num_classes} classes"
            )
        self.model = model.to(device).eval()
        self.scales = tuple(float(s) for s in scales)
        self.flip = bool(flip)
        self.class_names = list(class_names) if class_names is not None else None
        self.device = device

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        scales: Sequence[float] = (1.0,),
        flip: bool = True,
        *,
        device: str = "cpu",
    ) -> Segmenter:
        """Load a DeepLabV3+ checkpoint (:func:`pnoc.models.backbones.save_model`); its
        ``meta["class_names"]``, when present, names the mask values."""
        from pnoc.models.backbones import load_model_checkpoint
        from pnoc.models.deeplab import DeepLabV3Plus

        model = DeepLabV3Plus.from_checkpoint(path)
        _, meta = load_model_checkpoint(path)
        names = meta.get("class_names")
        if names is not None and (
            not isinstance(names, list) or not all(isinstance(n, str) for n in names)
        ):
            raise PnocError(f"{path}: meta 'class_names' must be a list of strings")
        if names is not None and len(names) != model.num_classes:
            raise PnocError(
                f"{path}: meta 'class_names' has {len(names)} names for {model.num_classes} classes"
            )
        return cls(model, scales=scales, flip=flip, class_names=names, device=device)

    def segment(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """H×W×3 uint8 -> (mask H×W uint8, probabilities (C, H, W) float32)."""
        from pnoc.segmentation.inference import segment_image

        image = as_image_array(image)
        return segment_image(
            self.model, image, scales=self.scales, flip=self.flip, device=self.device
        )

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One H×W uint8 class-index mask per image, at the image's size."""
        return [self.segment(im)[0] for im in images]

    def predict_with_probs(
        self, images: Sequence[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(mask, probabilities (C, H, W)) per image."""
        return [self.segment(im) for im in images]
