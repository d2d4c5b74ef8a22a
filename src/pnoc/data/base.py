"""The sample structure every reader produces, the key samplers hand to datasets, and the
pixel conventions readers and transforms share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

#: Mask value of pixels left out of every loss and metric (object boundaries, padding, crowds).
IGNORE_INDEX = 255

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: The ImageNet mean as uint8 RGB: padding with it equals padding with 0 after normalisation.
MEAN_RGB: tuple[int, int, int] = (124, 116, 104)


class SampleKey(NamedTuple):
    """What a sampler yields: which sample, and the seed for its random augmentation.

    Deriving augmentation randomness from the key (not from a worker's global RNG) makes
    an epoch reproducible whatever the number of workers and after a mid-epoch resume.
    """

    index: int
    seed: int


def key_index(key: int | SampleKey) -> tuple[int, int]:
    """(index, augmentation seed) of an int or a SampleKey; a plain int seeds with itself."""
    if isinstance(key, SampleKey):
        return int(key.index), int(key.seed)
    index = int(key)
    return index, index


@dataclass
class Sample:
    """One image with its image-level labels and, when available, its segmentation mask.

    image:  H×W×3 uint8 RGB.
    mask:   H×W uint8 class indices (0 = background, 255 = ignore) or None.
    labels: (K,) float32 multi-hot over the K foreground classes (background excluded).
    """

    id: str
    image: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None = None
