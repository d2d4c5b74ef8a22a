"""Photometric jitter and RandAugment: the CAM classifiers' appearance augmentations.

Both are transforms ``(image, mask, rng) -> (image, mask)`` on H×W×3 uint8 RGB images (see
:mod:`pnoc.data.transforms`); RandAugment's geometric ops move the mask with the image
(nearest neighbour, filled with 255 = ignore), its photometric ops and :class:`ColorJitter`
leave the mask alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from pnoc.data.base import IGNORE_INDEX, MEAN_RGB


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _luminance(image: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an H×W×3 array, as H×W float32 (what PIL's "L" conversion uses)."""
    return image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114


def _shift_hue(image: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue of a uint8 RGB image by ``shift`` turns (−0.5..0.5)."""
    hsv = np.array(Image.fromarray(image).convert("HSV"))
    # uint8 wrap-around is exactly the circular hue rotation we want.
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256
    hsv_img = Image.frombytes("HSV", (image.shape[1], image.shape[0]), hsv.tobytes())
    return np.asarray(hsv_img.convert("RGB"))


class ColorJitter:
    """Photometric jitter (torchvision semantics): factors drawn from [1−x, 1+x], hue ±h turns.

    The four adjustments run in a random order. The mask is untouched.
    """

    def __init__(
        self,
        brightness: float = 0.3,
        contrast: float = 0.3,
        saturation: float = 0.3,
        hue: float = 0.1,
    ) -> None:
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = (
            brightness,
            contrast,
            saturation,
            hue,
        )

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        order = rng.permutation(4)
        # Draw every factor up front so the stream does not depend on which ops are enabled.
        fb = rng.uniform(1 - self.brightness, 1 + self.brightness)
        fc = rng.uniform(1 - self.contrast, 1 + self.contrast)
        fs = rng.uniform(1 - self.saturation, 1 + self.saturation)
        fh = rng.uniform(-self.hue, self.hue)
        out = image
        for op in order:
            if op == 0 and self.brightness > 0:
                out = _to_uint8(out.astype(np.float32) * fb)
            elif op == 1 and self.contrast > 0:
                x = out.astype(np.float32)
                m = float(_luminance(x).mean())
                out = _to_uint8(m + (x - m) * fc)
            elif op == 2 and self.saturation > 0:
                x = out.astype(np.float32)
                g = _luminance(x)[..., None]
                out = _to_uint8(g + (x - g) * fs)
            elif op == 3 and self.hue > 0:
                out = _shift_hue(out, fh)
        return out, mask

    def __repr__(self) -> str:
        return (
            f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, "
            f"saturation={self.saturation}, hue={self.hue})"
        )


# --- RandAugment -----------------------------------------------------------------------------
# Each op takes (PIL image, PIL mask or None, level in [0, 1], sign ±1) and returns both.
# Geometric ops move the mask (nearest, fill 255); photometric ops leave it alone.

_PilPair = tuple[Image.Image, "Image.Image | None"]


def _affine(img: Image.Image, mask: Image.Image | None, coeffs: tuple[float, ...]) -> _PilPair:
    out = img.transform(
        img.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=MEAN_RGB
    )
    if mask is not None:
        mask = mask.transform(
            mask.size,
            Image.Transform.AFFINE,
            coeffs,
            Image.Resampling.NEAREST,
            fillcolor=IGNORE_INDEX,
        )
    return out, mask


def _op_identity(img: Image.Image, mask: Image.Image | None, level: float, sign: int) -> _PilPair:
    return img, mask


def _op_autocontrast(
    img: Image.Image, mask: Image.Image | None, level: float, sign: int
) -> _PilPair:
    return ImageOps.autocontrast(img), mask


def _op_equalize(img: Image.Image, mask: Image.Image | None, level: float, sign: int) -> _PilPair:
    return ImageOps.equalize(img), mask


def _op_rotate(img: Image.Image, mask: Image.Image | None, level: float, sign: int) -> _PilPair:
    angle = sign * 30.0 * level
    out = img.rotate(angle, Image.Resampling.BILINEAR, fillcolor=MEAN_RGB)
    if mask is not None:
        mask = mask.rotate(angle, Image.Resampling.NEAREST, fillcolor=IGNORE_INDEX)
    return out, mask


def _op_solarize(img: Image.Image, mask: Image.Image | None, level: float, sign: int) -> _PilPair:
    return ImageOps.solarize(img, threshold=int(256 - 256 * level)), mask


def _op_posterize(img: Image.Image, mask: Image.Image | None, level: float, sign: int) -> _PilPair:
    return ImageOps.posterize(img, max(1, 8 - int(round(4 * level)))), mask


def _enhance(kind: type) -> Callable[..., _PilPair]:
    def op(img: Image.Image, mask: Image.Image | None, level: float, sign: int) -> _PilPair:
        return kind(img).enhance(1.0 + sign * 0.9 * level), mask

    op.__name__ = f"_op_{kind.__name__.lower()}"
    return op


def _op_shear_x(img: Image.Image, mask: Image.Image | None, level: float, sign: int) -> _PilPair:
    return _affine(img, mask, (1.0, sign * 0.3 * level, 0.0, 0.0, 1.0, 0.0))


def _op_shear_y(img: Image.Image, mask: Image.Image | None, level: float, sign: int) -> _PilPair:
    return _affine(img, mask, (1.0, 0.0, 0.0, sign * 0.3 * level, 1.0, 0.0))


def _op_translate_x(
    img: Image.Image, mask: Image.Image | None, level: float, sign: int
) -> _PilPair:
    return _affine(img, mask, (1.0, 0.0, sign * 0.3 * level * img.size[0], 0.0, 1.0, 0.0))


def _op_translate_y(
    img: Image.Image, mask: Image.Image | None, level: float, sign: int
) -> _PilPair:
    return _affine(img, mask, (1.0, 0.0, 0.0, 0.0, 1.0, sign * 0.3 * level * img.size[1]))


RANDAUGMENT_OPS: dict[str, Callable[..., _PilPair]] = {
    "identity": _op_identity,
    "autocontrast": _op_autocontrast,
    "equalize": _op_equalize,
    "rotate": _op_rotate,
    "solarize": _op_solarize,
    "color": _enhance(ImageEnhance.Color),
    "posterize": _op_posterize,
    "contrast": _enhance(ImageEnhance.Contrast),
    "brightness": _enhance(ImageEnhance.Brightness),
    "sharpness": _enhance(ImageEnhance.Sharpness),
    "shear_x": _op_shear_x,
    "shear_y": _op_shear_y,
    "translate_x": _op_translate_x,
    "translate_y": _op_translate_y,
}


class RandAugment:
    """RandAugment (Cubuk et al. 2020): ``n`` ops drawn with replacement, magnitude ``m``/30.

    Magnitude ``m`` is on the 0–30 scale (the authors' OC uses n=2, m=10); each op's
    strength is its maximum × m/30, with a random sign for signed ops.
    """

    def __init__(self, n: int = 2, m: float = 10, ops: Sequence[str] | None = None) -> None:
        if n < 0 or not 0 <= m <= 30:
            raise ValueError(f"RandAugment needs n >= 0 and 0 <= m <= 30, got n={n}, m={m}")
        self.n, self.m = int(n), float(m)
        self.op_names = list(ops) if ops is not None else list(RANDAUGMENT_OPS)
        unknown = [o for o in self.op_names if o not in RANDAUGMENT_OPS]
        if unknown:
            raise ValueError(f"unknown RandAugment ops {unknown}; known: {list(RANDAUGMENT_OPS)}")

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        picks = rng.integers(0, len(self.op_names), size=self.n)
        signs = np.where(rng.random(self.n) < 0.5, -1, 1)
        img = Image.fromarray(image)
        pm = Image.fromarray(mask) if mask is not None else None
        level = self.m / 30.0
        for k, sign in zip(picks, signs, strict=True):
            img, pm = RANDAUGMENT_OPS[self.op_names[k]](img, pm, level, int(sign))
        out = np.asarray(img.convert("RGB"))
        return out, (np.asarray(pm) if pm is not None else None)

    def __repr__(self) -> str:
        return f"RandAugment(n={self.n}, m={self.m})"
