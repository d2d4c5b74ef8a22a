"""Optional dense CRF (Krähenbühl & Koltun) on top of the walked scores, via ``pydensecrf2``.

Install with ``pip install 'pnoc[crf]'`` (PyPI ``pydensecrf2``; it compiles a small C++
extension). Parameters are the ones AffinityNet/IRN use for pseudo-labels.
"""

from __future__ import annotations

import numpy as np

from pnoc.errors import PnocError

EPS = 1e-5


def dense_crf(image: np.ndarray, probs: np.ndarray, *, iterations: int = 10) -> np.ndarray:
    """image H×W×3 uint8, probs (C, H, W) (rows need not sum to 1) -> refined (C, H, W).

    Unary −log p; a Gaussian (sxy 3, compat 3) and a bilateral (sxy 80, srgb 13, compat 10)
    pairwise term; mean-field ``iterations``.
    """
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as exc:
        raise PnocError(
            "crf: true needs pydensecrf2 (pip install 'pnoc[crf]' or pip install pydensecrf2)"
        ) from exc
    probs = np.asarray(probs, dtype=np.float32)
    h, w = image.shape[:2]
    if probs.shape[1:] != (h, w):
        raise PnocError(f"crf: scores {probs.shape[1:]} do not match the image size {(h, w)}")
    prob = np.clip(probs, EPS, None)
    prob = prob / prob.sum(axis=0, keepdims=True)
    d = dcrf.DenseCRF2D(w, h, prob.shape[0])
    d.setUnaryEnergy(np.ascontiguousarray(-np.log(prob).reshape(prob.shape[0], -1)))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.ascontiguousarray(image), compat=10)
    return np.asarray(d.inference(iterations), dtype=np.float32).reshape(prob.shape)


def crf_mask(
    image: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    *,
    bg_threshold: float,
    iterations: int = 10,
) -> np.ndarray:
    """image H×W×3 uint8, scores (k, H, W) in [0, 1], classes (k,) 1-based -> (H, W) uint8.

    The unary is −log of the scores with the constant background score in front, normalised
    to a distribution per pixel; a Gaussian (sxy 3, compat 3) and a bilateral (sxy 80, srgb 13,
    compat 10) pairwise term follow.
    """
    scores = np.asarray(scores, dtype=np.float32)
    h, w = image.shape[:2]
    if len(classes) == 0:
        return np.zeros((h, w), dtype=np.uint8)
    full = np.concatenate([np.full((1,) + scores.shape[1:], bg_threshold, np.float32), scores])
    q = dense_crf(image, full, iterations=iterations)
    lut = np.concatenate([[0], np.asarray(classes, dtype=np.int64)]).astype(np.uint8)
    return lut[q.argmax(axis=0)]
