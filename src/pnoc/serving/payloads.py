"""Request payloads: one value of a request (encoded PNG/JPEG bytes, their base64 text, or an
array of pixels) -> an H×W×3 uint8 RGB image, or a :class:`PayloadError` saying which value is
wrong and what was expected.

Reading is in two steps so a request's cost is known before it is paid: :func:`peek_image`
reads an encoded image's header (its size) without decoding the pixels, :func:`check_request`
bounds the count and total pixels of a request, and :meth:`ImageInput.decode` decodes one image
when its turn comes.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pnoc.errors import PnocError
from pnoc.serving.limits import ServingLimits

#: Encoded formats accepted (Pillow format names).
IMAGE_FORMATS = ("PNG", "JPEG")
DEFAULT_LIMITS = ServingLimits()

_EXPECTED = "expected base64-encoded PNG/JPEG bytes or an H×W×3 array of integers 0..255"


class PayloadError(PnocError, ValueError):
    """A request value is not an acceptable image; the message names the value and the rule."""


@dataclass
class ImageInput:
    """One image of a request, its size known and its pixels not decoded yet."""

    where: str
    height: int
    width: int
    raw: bytes | None = None  # encoded file
    array: np.ndarray | None = None  # pixels already sent as an array

    @property
    def pixels(self) -> int:
        return self.height * self.width

    def decode(self) -> np.ndarray:
        """H×W×3 uint8 RGB. Grayscale, palette and RGBA files are converted (alpha dropped)."""
        if self.array is not None:
            return self.array

        assert self.raw is not None
        with _open(self.raw, self.where) as im:
            try:
                im.load()
                rgb = im.convert("RGB")
            except (OSError, SyntaxError, ValueError) as exc:
                raise PayloadError(
                    f"{self.where}: corrupt or truncated {im.format} image ({exc})"
                ) from None
        if rgb.size != (self.width, self.height):  # pragma: no cover - Pillow keeps the header's
            raise PayloadError(f"{self.where}: decoded size differs from its header")
        return np.asarray(rgb, dtype=np.uint8)


def _open(raw: bytes, where: str) -> Any:
    from PIL import Image

    try:
        return Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise PayloadError(f"{where}: declared size over what can be decoded ({exc})") from None
    except (OSError, SyntaxError, ValueError):
        raise PayloadError(
            f"{where}: not a PNG or JPEG image ({len(raw)} bytes starting {raw[:8]!r}); {_EXPECTED}"
        ) from None


def _raw_bytes(data: Any, where: str, limits: ServingLimits) -> bytes:
    if isinstance(data, str):
        text = data.strip()
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        if len(text) * 3 // 4 > limits.max_bytes:
            raise PayloadError(
                f"{where}: about {len(text) * 3 // 4} bytes once decoded, more than the limit "
                f"of {limits.max_bytes} bytes"
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
    if len(raw) > limits.max_bytes:
        raise PayloadError(f"{where}: {len(raw)} bytes, more than the limit of {limits.max_bytes}")
    return raw


def peek_image(
    value: Any, *, where: str = "image", limits: ServingLimits = DEFAULT_LIMITS
) -> ImageInput:
    """One request value -> an :class:`ImageInput` whose size is checked against
    ``limits.max_pixels``; text/bytes are read as an image file (header only), anything else as
    an array of pixels."""
    if value is None:
        raise PayloadError(f"{where}: missing (null); {_EXPECTED}")
    if isinstance(value, str | bytes | bytearray | memoryview):
        raw = _raw_bytes(value, where, limits)
        with _open(raw, where) as im:
            width, height = im.size
        _check_size(height, width, where, limits)
        return ImageInput(where, height, width, raw=raw)
    array = as_image_array(value, where=where, limits=limits)
    return ImageInput(where, array.shape[0], array.shape[1], array=array)


def decode_image_bytes(
    data: bytes | str, *, where: str = "image", limits: ServingLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """PNG/JPEG bytes, or their base64 text (a ``data:...;base64,`` prefix is allowed), -> H×W×3
    uint8 RGB."""
    if not isinstance(data, str | bytes | bytearray | memoryview):
        raise PayloadError(f"{where}: got {type(data).__name__}; {_EXPECTED}")
    return peek_image(data, where=where, limits=limits).decode()


def decode_image(
    value: Any, *, where: str = "image", limits: ServingLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """One request value -> H×W×3 uint8 (see :func:`peek_image`)."""
    return peek_image(value, where=where, limits=limits).decode()


def encode_image_b64(image: np.ndarray, fmt: str = "PNG") -> str:
    """H×W×3 uint8 -> base64 text of its PNG (or JPEG) file, as requests carry images."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def as_image_array(
    obj: Any, *, where: str = "image", limits: ServingLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """An H×W×3 array or nested list of integers 0..255 -> H×W×3 uint8 (a copy if converted)."""
    try:
        arr = np.asarray(obj)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise PayloadError(f"{where}: not a rectangular array ({exc}); {_EXPECTED}") from None
    if arr.size == 0:
        raise PayloadError(f"{where}: empty array (shape {arr.shape}); {_EXPECTED}")
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise PayloadError(f"{where}: array of shape {arr.shape}; expected H×W×3 (RGB)")
    _check_size(arr.shape[0], arr.shape[1], where, limits)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind not in "iu":
        kind = {"f": "floating-point", "b": "boolean", "U": "text", "O": "mixed/object"}
        raise PayloadError(
            f"{where}: {kind.get(arr.dtype.kind, str(arr.dtype))} values; expected integers "
            "0..255 (uint8 RGB)"
        )
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 255:
        raise PayloadError(f"{where}: values range over {lo}..{hi}; expected integers 0..255")
    return arr.astype(np.uint8)


def check_batch_size(n: int, limits: ServingLimits = DEFAULT_LIMITS) -> None:
    if n == 0:
        raise PayloadError(f"no images in the request; {_EXPECTED}")
    if n > limits.max_images:
        raise PayloadError(f"{n} images in one request; the limit is {limits.max_images}")


def check_request(images: Sequence[ImageInput], limits: ServingLimits = DEFAULT_LIMITS) -> None:
    """Bound a request before any image is decoded: image count and total pixels."""
    check_batch_size(len(images), limits)
    total = sum(im.pixels for im in images)
    if total > limits.max_request_pixels:
        raise PayloadError(
            f"{len(images)} images of {total} pixels in all, more than the limit of "
            f"{limits.max_request_pixels} pixels a request; send them in several requests"
        )


def _check_size(h: int, w: int, where: str, limits: ServingLimits) -> None:
    if h <= 0 or w <= 0:
        raise PayloadError(f"{where}: empty image ({h}×{w} pixels)")
    if h * w > limits.max_pixels:
        raise PayloadError(
            f"{where}: {h}×{w} pixels, more than the limit of {limits.max_pixels} pixels"
        )
