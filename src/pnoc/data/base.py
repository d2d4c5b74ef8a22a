"""The sample structure every reader produces, and the key samplers hand to datasets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class SampleKey(NamedTuple):
    """What a sampler yields: which sample, and the seed for its random augmentation.

    Deriving augmentation randomness from the key (not from a worker's global RNG) makes
    an epoch reproducible whatever the number of workers and after a mid-epoch resume.
    """

    index: int
    seed: int


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
