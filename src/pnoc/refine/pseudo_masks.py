"""Pseudo-masks: CAMs propagated by a random walk over AffinityNet's affinities.

Per image (IRN's recipe, with a sparse transition matrix):
1. AffinityNet features f at stride 4 (averaged with those of the mirrored image with ``flip``);
2. the image's present-class CAMs are reduced to the feature grid (area average);
3. random walk: x ← x·T^(2^exp_times), T the column-normalised a^β over neighbours within
   ``radius`` (:mod:`pnoc.refine.random_walk`);
4. upsampled back (bilinear) and divided by the maximum over all classes and pixels (IRN's and
   the authors' normalisation: a class the walk weakened stays weak, where a per-class maximum
   would lift a class's spill-over onto the background to the level of real objects);
   background is the constant ``bg_threshold``; argmax gives the mask. With ``uncertain_margin``
   > 0, pixels whose two best scores are closer than the margin get 255;
5. with ``background: saliency`` (P-NOC's use of C²AM-H, whose saliency is the background cue
   of the authors' pseudo-labels), pixels whose saliency is below the saliency threshold are
   background too (:func:`saliency_gate`): the saliency decides where objects end, the walked
   CAMs which class they are. On the embedded dataset, whose stride-16 CAMs spill well past the
   objects, this is what lifts the pseudo-masks above the CAMs.

Images whose affinity labels hold no confident pixel cannot be trusted to the walk (the net saw
no pair from them); :func:`cam_fallback_mask` gives their CAM argmax instead, and the stage counts
them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pnoc.cam.inference import cams_to_mask
from pnoc.config import PseudoMaskParams, SaliencyParams
from pnoc.data.base import IGNORE_INDEX
from pnoc.data.transforms import eval_transform
from pnoc.models.affinity import AffinityNet
from pnoc.refine.random_walk import feature_affinities, neighbour_offsets, random_walk


@torch.inference_mode()
def affinity_features(model: AffinityNet, image: Tensor, *, flip: bool = True) -> Tensor:
    """image (3, H, W) normalised -> features (C, ⌈H/4⌉, ⌈W/4⌉), flip-averaged.

    A batch of same-size images (B, 3, H, W) gives (B, C, ⌈H/4⌉, ⌈W/4⌉), each image's features
    those it gets alone within float rounding (the mirrored copies join the same forward).
    """
    model.eval()
    single = image.dim() == 3
    x = image.unsqueeze(0) if single else image
    b = x.shape[0]
    if flip:
        feats = model(torch.cat([x, x.flip(-1)]))
        feats = ((feats[:b] + feats[b:].flip(-1)) / 2).float()
    else:
        feats = model(x).float()
    return feats[0] if single else feats


@torch.inference_mode()
def propagate_cams(
    cams: np.ndarray | Tensor,
    features: Tensor,
    *,
    beta: float,
    exp_times: int,
    radius: int,
) -> Tensor:
    """cams (k, H, W) -> walked maps (k, H, W) float32, scaled so that the overall max is 1."""
    cams_t = torch.as_tensor(
        np.asarray(cams, dtype=np.float32) if not isinstance(cams, Tensor) else cams.float()
    )
    k, h, w = cams_t.shape
    if k == 0:
        return cams_t
    grid = features.shape[-2:]
    small = F.adaptive_avg_pool2d(cams_t[None], grid)[0]
    aff, valid = feature_affinities(features, radius)
    walked = random_walk(
        small, aff, valid, neighbour_offsets(radius), beta=beta, exp_times=exp_times
    )
    up = F.interpolate(walked[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    up = up.clamp(min=0)
    return up / up.max().clamp(min=1e-5)


def scores_to_mask(
    scores: np.ndarray | Tensor,
    classes: np.ndarray,
    *,
    bg_threshold: float,
    uncertain_margin: float = 0.0,
) -> np.ndarray:
    """scores (k, H, W) in [0, 1], classes (k,) 1-based -> (H, W) uint8 mask (0 = background)."""
    s = scores.cpu().numpy() if isinstance(scores, Tensor) else np.asarray(scores)
    mask = cams_to_mask(s, classes, bg_threshold)
    if uncertain_margin > 0 and len(classes):
        h, w = s.shape[-2:]
        full = np.concatenate([np.full((1, h, w), bg_threshold, dtype=np.float32), s], axis=0)
        top2 = np.sort(full, axis=0)[-2:]
        mask[(top2[1] - top2[0]) < uncertain_margin] = IGNORE_INDEX
    return mask


def saliency_gate(mask: np.ndarray, saliency: np.ndarray | None, threshold: float) -> np.ndarray:
    """Background (0) where ``saliency`` < ``threshold``; ``mask`` unchanged elsewhere.

    mask (H, W) uint8, saliency (H, W) in [0, 1] or None (no gate). Raises ``ValueError`` when
    the sizes differ.
    """
    if saliency is None:
        return mask
    sal = np.asarray(saliency)
    if sal.shape != mask.shape:
        raise ValueError(f"saliency of size {sal.shape} does not match the mask's {mask.shape}")
    return np.where(sal < threshold, 0, mask).astype(np.uint8)


def cam_fallback_mask(cams: np.ndarray, classes: np.ndarray, bg_threshold: float) -> np.ndarray:
    """The CAM argmax with a constant background: the mask of an image the walk cannot use."""
    return cams_to_mask(np.asarray(cams, dtype=np.float32), classes, bg_threshold)


def walk_pseudo_mask(
    model: AffinityNet,
    image: np.ndarray,
    cams: np.ndarray,
    classes: np.ndarray,
    cfg: PseudoMaskParams,
    *,
    device: str | torch.device = "cpu",
    saliency: np.ndarray | None = None,
    saliency_threshold: float = SaliencyParams().threshold,
) -> np.ndarray:
    """One image's pseudo-mask: AffinityNet features, random walk, background threshold (and
    the dense CRF when ``cfg.crf``), then the saliency gate when ``saliency`` is given (see
    :func:`saliency_gate`). image H×W×3 uint8, cams (k, H, W) -> (H, W) uint8."""
    x, _ = eval_transform()(image, None, np.random.default_rng(0))
    feats = affinity_features(model, torch.as_tensor(x).to(device), flip=cfg.flip).cpu()
    return features_pseudo_mask(
        image, cams, classes, feats, cfg, saliency=saliency, saliency_threshold=saliency_threshold
    )


def features_pseudo_mask(
    image: np.ndarray,
    cams: np.ndarray,
    classes: np.ndarray,
    features: Tensor,
    cfg: PseudoMaskParams,
    *,
    saliency: np.ndarray | None = None,
    saliency_threshold: float = SaliencyParams().threshold,
) -> np.ndarray:
    """:func:`walk_pseudo_mask` from the image's AffinityNet ``features`` (C, h, w) (on the CPU,
    e.g. one image's of a batch of :func:`affinity_features`): the walk, the background
    threshold (or the dense CRF) and the saliency gate."""
    scores = propagate_cams(
        cams, features, beta=cfg.beta, exp_times=cfg.exp_times, radius=cfg.radius
    )
    if cfg.crf:
        from pnoc.refine.crf import crf_mask

        mask = crf_mask(image, scores.numpy(), classes, bg_threshold=cfg.bg_threshold)
    else:
        mask = scores_to_mask(
            scores, classes, bg_threshold=cfg.bg_threshold, uncertain_margin=cfg.uncertain_margin
        )
    return saliency_gate(mask, saliency, saliency_threshold)
