"""Affinity labels: where the CAMs and the saliency are confident, ignore elsewhere.

A pixel is *confident foreground* when its best CAM is ≥ ``fg_threshold`` (label = that class)
and its saliency is ≥ ``fg_saliency`` (0, the default, leaves the CAM alone to decide; a higher
value keeps CAM spill-over onto what saliency calls background out of the foreground labels),
*confident background* when its saliency is ≤ ``bg_threshold`` (label 0). Pixels that are
neither, or both (a CAM leaking into what saliency calls background), get 255 (ignored). The
AffinityNet learns from pairs of confident pixels only: same label → affine, different → not.
"""

from __future__ import annotations

import numpy as np

from pnoc.data.base import IGNORE_INDEX
from pnoc.errors import PnocError


def make_affinity_labels(
    cams: np.ndarray,
    classes: np.ndarray,
    saliency: np.ndarray,
    *,
    fg_threshold: float,
    bg_threshold: float,
    fg_saliency: float = 0.0,
) -> np.ndarray:
    """cams (k, H, W) in [0, 1], classes (k,) 1-based, saliency (H, W) in [0, 1] -> (H, W) uint8.

    Values: 0 background, c foreground class, 255 ignore.
    """
    cams = np.asarray(cams, dtype=np.float32)
    saliency = np.asarray(saliency, dtype=np.float32)
    if cams.ndim != 3 or cams.shape[0] != len(classes):
        raise PnocError(
            f"affinity labels: expected cams (k, H, W) for k={len(classes)} classes, "
            f"got {cams.shape}"
        )
    if saliency.shape != cams.shape[1:]:
        raise PnocError(
            f"affinity labels: saliency size {saliency.shape[::-1]} differs from the CAM size "
            f"{cams.shape[1:][::-1]} (W, H)"
        )
    h, w = saliency.shape
    labels = np.full((h, w), IGNORE_INDEX, dtype=np.uint8)
    if len(classes):
        best = cams.max(axis=0)
        fg = (best >= fg_threshold) & (saliency >= fg_saliency)
        lut = np.asarray(classes, dtype=np.uint8)
        labels[fg] = lut[cams.argmax(axis=0)][fg]
    else:
        fg = np.zeros((h, w), dtype=bool)
    bg = saliency <= bg_threshold
    labels[bg] = 0
    labels[bg & fg] = IGNORE_INDEX  # the two cues disagree: no supervision there
    return labels


def confident_fraction(labels: np.ndarray) -> float:
    """Share of pixels that carry a label (not 255)."""
    return float((labels != IGNORE_INDEX).mean()) if labels.size else 0.0
