"""Joint image/mask transforms on numpy arrays, driven by an explicit random generator.

Every transform is a callable ``(image, mask, rng) -> (image, mask)``:

- ``image``: H×W×3 uint8 RGB (until :class:`Normalize`, which makes it float32);
- ``mask``:  H×W uint8 class indices with 255 = ignore, or ``None`` (classification);
- ``rng``:   a :class:`numpy.random.Generator`; all randomness comes from it, so a transform
  is a pure function of its inputs and the generator state (the datasets seed it from the
  sampler's :class:`~pnoc.data.base.SampleKey`).

Geometric transforms move the mask with the image: images are resampled bilinearly and
filled with the ImageNet mean colour (zero after normalisation); masks are resampled with
nearest neighbour and filled with 255 (ignore), so padding never counts as background.

:class:`ToTensor` ends a pipeline: image → float32 tensor 3×H×W, mask → int64 tensor H×W.
The appearance augmentations (:class:`ColorJitter`, :class:`RandAugment`) are in
:mod:`pnoc.data.augment`; the recipes at the end of this module assemble the pipelines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from pnoc.data.augment import ColorJitter, RandAugment
from pnoc.data.base import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, MEAN_RGB

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MEAN_RGB",
    "ColorJitter",
    "Compose",
    "Normalize",
    "RandAugment",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResize",
    "Resize",
    "ToTensor",
    "Transform",
    "classification_train_transform",
    "eval_transform",
    "segmentation_train_transform",
    "to_tensor_image",
    "to_tensor_mask",
]

Transform = Callable[[Any, Any, np.random.Generator], tuple[Any, Any]]


class Compose:
    """Apply transforms in order, threading the same generator through all of them."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any, mask: Any, rng: np.random.Generator) -> tuple[Any, Any]:
        for t in self.transforms:
            image, mask = t(image, mask, rng)
        return image, mask

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


def _resize_pair(
    image: np.ndarray, mask: np.ndarray | None, height: int, width: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize image bilinearly and mask with nearest neighbour to height×width."""
    if image.shape[:2] == (height, width):
        return image, mask
    out = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
    out_mask = None
    if mask is not None:
        out_mask = np.asarray(
            Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST)
        )
    return out, out_mask


class RandomResize:
    """Rescale so the long side becomes ``s · base`` with ``s ~ U(scale_range)``.

    ``base`` is ``base_size`` when given (the authors' "long side 320–640" at crop 512 is
    ``scale_range=(0.625, 1.25), base_size=512``), else the image's own long side.
    """

    def __init__(
        self, scale_range: tuple[float, float] = (0.5, 1.5), base_size: int | None = None
    ) -> None:
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = (float(lo), float(hi))
        self.base_size = base_size

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        s = rng.uniform(*self.scale_range)
        h, w = image.shape[:2]
        long_side = max(h, w)
        factor = s * (self.base_size or long_side) / long_side
        return _resize_pair(image, mask, max(1, round(h * factor)), max(1, round(w * factor)))

    def __repr__(self) -> str:
        return f"RandomResize(scale_range={self.scale_range}, base_size={self.base_size})"


class Resize:
    """Deterministically rescale so the long side equals ``long_side``."""

    def __init__(self, long_side: int) -> None:
        self.long_side = long_side

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        h, w = image.shape[:2]
        f = self.long_side / max(h, w)
        return _resize_pair(image, mask, max(1, round(h * f)), max(1, round(w * f)))

    def __repr__(self) -> str:
        return f"Resize({self.long_side})"


class RandomCrop:
    """Crop a size×size window; smaller images are first placed at a random spot on a canvas.

    The canvas is max(H, size)×max(W, size), filled with ``image_fill`` (ImageNet mean by
    default) and, for the mask, 255, so padded pixels are ignored by segmentation losses.
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        image_fill: Sequence[int] = MEAN_RGB,
        mask_fill: int = IGNORE_INDEX,
    ) -> None:
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.image_fill = tuple(int(c) for c in image_fill)
        self.mask_fill = mask_fill

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        ch, cw = self.size
        h, w = image.shape[:2]
        ph, pw = max(h, ch), max(w, cw)
        # Always draw all four offsets so the generator advances the same way for any size.
        oy, ox = int(rng.integers(0, ph - h + 1)), int(rng.integers(0, pw - w + 1))
        cy, cx = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
        if (ph, pw) != (h, w):
            canvas = np.empty((ph, pw, 3), dtype=image.dtype)
            canvas[:] = np.asarray(self.image_fill, dtype=image.dtype)
            canvas[oy : oy + h, ox : ox + w] = image
            image = canvas
            if mask is not None:
                mcanvas = np.full((ph, pw), self.mask_fill, dtype=mask.dtype)
                mcanvas[oy : oy + h, ox : ox + w] = mask
                mask = mcanvas
        image = np.ascontiguousarray(image[cy : cy + ch, cx : cx + cw])
        if mask is not None:
            mask = np.ascontiguousarray(mask[cy : cy + ch, cx : cx + cw])
        return image, mask

    def __repr__(self) -> str:
        return f"RandomCrop({self.size})"


class RandomHorizontalFlip:
    """Mirror image and mask left–right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if rng.random() < self.p:
            image = np.ascontiguousarray(image[:, ::-1])
            if mask is not None:
                mask = np.ascontiguousarray(mask[:, ::-1])
        return image, mask

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """uint8 RGB → float32 H×W×3, ``(x/255 − mean) / std`` (ImageNet statistics by default)."""

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        x = image.astype(np.float32) / 255.0
        return (x - self.mean) / self.std, mask

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


def to_tensor_image(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """H×W×3 array → float32 tensor 3×H×W; a uint8 array is ImageNet-normalised first."""
    if isinstance(image, torch.Tensor):
        return image
    if image.dtype == np.uint8:
        image, _ = Normalize()(image, None)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


def to_tensor_mask(mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    """H×W class-index array → int64 tensor H×W (255 stays 255 = ignore)."""
    if isinstance(mask, torch.Tensor):
        return mask.long()
    return torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))


class ToTensor:
    """Final step: image → float32 tensor 3×H×W (normalised if still uint8), mask → int64 H×W."""

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return to_tensor_image(image), (to_tensor_mask(mask) if mask is not None else None)

    def __repr__(self) -> str:
        return "ToTensor()"


def classification_train_transform(
    size: int,
    randaugment: tuple[int, float] | None = None,
    *,
    scale_range: tuple[float, float] = (0.625, 1.25),
    flip: bool = True,
    color_jitter: tuple[float, float, float, float] | None = (0.3, 0.3, 0.3, 0.1),
) -> Compose:
    """The CAM classifiers' training pipeline (Puzzle-CAM / P-NOC recipe, sizes made relative).

    Random resize of the long side to ``scale_range × size`` (VOC: 320–640 at size 512),
    flip, colour jitter, optional RandAugment ``(n, m)`` (the OC uses (2, 10)), normalise,
    random size×size crop padded with the mean. Output: image tensor 3×size×size.
    """
    steps: list[Transform] = [RandomResize(scale_range, base_size=size)]
    if flip:
        steps.append(RandomHorizontalFlip())
    if color_jitter is not None:
        steps.append(ColorJitter(*color_jitter))
    if randaugment is not None:
        steps.append(RandAugment(*randaugment))
    steps += [RandomCrop(size), Normalize(), ToTensor()]
    return Compose(steps)


def segmentation_train_transform(
    size: int,
    scale_range: tuple[float, float] = (0.5, 1.5),
    *,
    flip: bool = True,
    color_jitter: tuple[float, float, float, float] | None = None,
) -> Compose:
    """Segmentation (DeepLab / affinity) training: random scale, flip, crop padded with 255.

    The long side becomes ``s × size`` with ``s ~ U(scale_range)``. Output: image tensor
    3×size×size and mask int64 size×size with 255 where padded or ignored.
    """
    steps: list[Transform] = [RandomResize(scale_range, base_size=size)]
    if flip:
        steps.append(RandomHorizontalFlip())
    if color_jitter is not None:
        steps.append(ColorJitter(*color_jitter))
    steps += [RandomCrop(size), Normalize(), ToTensor()]
    return Compose(steps)


def eval_transform(long_side: int | None = None) -> Compose:
    """Evaluation: optional deterministic resize of the long side, normalise, to tensor."""
    steps: list[Transform] = [Resize(long_side)] if long_side else []
    steps += [Normalize(), ToTensor()]
    return Compose(steps)
