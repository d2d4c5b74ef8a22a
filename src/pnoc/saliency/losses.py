"""C²AM-H losses: CCAM's contrastive terms and the CAM-hint term.

CCAM (Xie et al., CVPR 2022) splits the pooled features of each image into a foreground
embedding ``fg`` and a background embedding ``bg`` (see :class:`pnoc.models.ccam.CCAMNet`) and
contrasts them across the batch with the cosine similarity clamped to [0.0005, 0.9995]:

    L_ccam = SimMax(fg) + SimMin(bg, fg) + SimMax(bg)

C²AM-H (P-NOC, arXiv 2305.12522) adds a hint term that anchors the bi-partition on the
foreground the CAMs are confident about:

    L = L_ccam + λ_h · BCE(z, 1 − ε/2) over the pixels where hint ≥ δ_fg

with hint = the per-pixel maximum over the image's CAMs. The target 1 − ε/2 is the project's
label smoothing ỹ = (1 − ε)·y + ε/2 applied to y = 1 (ε = 0.1 → 0.95).

With ``delta_bg`` set, the pixels where hint < δ_bg are hinted too, with target ε/2 (the
authors' earlier two-cue variant of the hint loss, with δ_bg = 0.1), and the term is the mean
of the two cues' averages, each cue weighing half whatever its pixel count:

    L_h = ½·mean_{hint ≥ δ_fg} BCE(z, 1 − ε/2) + ½·mean_{hint < δ_bg} BCE(z, ε/2)

Foreground cues alone give the head no reason to stay low anywhere; where the contrastive
terms do not split objects from background by themselves (the embedded dataset) the saliency
then saturates towards 1 everywhere. Pooling both cues' pixels in one mean instead lets the
cue with more pixels set the calibration (the best saliency threshold moved between 0.2 and
0.9 with δ_fg, δ_bg); with the two halves it stayed at 0.8–0.85.

All terms are computed in float32, whatever the autocast dtype of their inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pnoc.config import SaliencyParams

SIM_MIN = 0.0005
SIM_MAX = 0.9995
# Knob defaults are params.yaml's (pnoc.config's defaults, which tests keep equal).
_SALIENCY = SaliencyParams()
ALPHA = _SALIENCY.alpha
DELTA_FG = _SALIENCY.delta_fg
DELTA_BG = _SALIENCY.delta_bg
#: ε of the hint target 1 − ε/2 (CCAM's smoothed foreground target).
HINT_SMOOTHING = 0.1


def cosine_similarity_matrix(a: Tensor, b: Tensor) -> Tensor:
    """(B, C), (B', C) -> (B, B') cosine similarities clamped to [0.0005, 0.9995] (float32)."""
    a = F.normalize(a.float(), dim=1)
    b = F.normalize(b.float(), dim=1)
    return (a @ b.T).clamp(SIM_MIN, SIM_MAX)


def sim_max_loss(emb: Tensor, alpha: float = ALPHA) -> Tensor:
    """CCAM's SimMaxLoss: pull every pair of embeddings (B, C) together, rank-weighted.

    loss_ij = −log(sim_ij) · exp(−α·(r_ij − 1)), where r_ij is the rank of sim_ij in row i
    sorted descending (0 = most similar, normally the image itself, which therefore gets weight
    exp(α), as in the authors' code); the mean over all B×B pairs.
    """
    sim = cosine_similarity_matrix(emb, emb)
    loss = (-torch.log(sim)).clamp_min(0.0)
    _, indices = sim.sort(descending=True, dim=1)
    _, rank = indices.sort(dim=1)
    weights = torch.exp(-(rank - 1).float() * alpha)
    return (loss * weights).mean()


def sim_min_loss(bg: Tensor, fg: Tensor) -> Tensor:
    """CCAM's SimMinLoss: push background (B, C) and foreground (B, C) embeddings apart.

    mean over the B×B pairs of −log(1 − sim(bg_i, fg_j)).
    """
    sim = cosine_similarity_matrix(bg, fg)
    return (-torch.log(1.0 - sim)).mean()


def ccam_loss(fg: Tensor, bg: Tensor, alpha: float = ALPHA) -> tuple[Tensor, dict[str, Tensor]]:
    """CCAM's total loss and its terms ``{"fg_fg", "fg_bg", "bg_bg"}``.

    fg_fg = SimMax(fg), fg_bg = SimMin(bg, fg), bg_bg = SimMax(bg); total = their sum.
    """
    terms = {
        "fg_fg": sim_max_loss(fg, alpha),
        "fg_bg": sim_min_loss(bg, fg),
        "bg_bg": sim_max_loss(bg, alpha),
    }
    return terms["fg_fg"] + terms["fg_bg"] + terms["bg_bg"], terms


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Area averaging when shrinking in both dimensions, bilinear otherwise."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def hint_map(
    cams: Tensor | np.ndarray | Sequence[Tensor | np.ndarray], size: tuple[int, int]
) -> Tensor:
    """Per-pixel maximum over classes of CAMs, resized: -> (B, 1, *size) float32 in [0, 1].

    cams: a tensor/array (B, K, H, W), or a sequence of one (k, H, W) record per image (as
    :func:`pnoc.cam.inference.load_cam_npz` returns; k may be 0, giving a zero hint, and the
    images may differ in size). Shrinking uses area averaging, enlarging bilinear
    interpolation. Values are clipped to [0, 1].
    """
    size = (int(size[0]), int(size[1]))
    if isinstance(cams, Tensor | np.ndarray):
        t = torch.as_tensor(np.asarray(cams) if isinstance(cams, np.ndarray) else cams).float()
        if t.dim() != 4:
            raise ValueError(f"hint_map: expected (B, K, H, W) CAMs, got {tuple(t.shape)}")
        maxed = t.amax(1, keepdim=True) if t.shape[1] else t.new_zeros(t.shape[0], 1, *t.shape[2:])
        return _resize(maxed, size).clamp(0.0, 1.0)
    out = []
    for record in cams:
        t = torch.as_tensor(np.asarray(record) if isinstance(record, np.ndarray) else record)
        if t.dim() != 3:
            raise ValueError(f"hint_map: expected (k, H, W) CAMs per image, got {tuple(t.shape)}")
        out.append(hint_map(t.float().unsqueeze(0), size))
    if not out:
        raise ValueError("hint_map: no CAMs given")
    return torch.cat(out)


def hint_loss(
    logits: Tensor,
    hints: Tensor,
    delta_fg: float = DELTA_FG,
    smoothing: float = HINT_SMOOTHING,
    delta_bg: float | None = None,
) -> Tensor:
    """BCE-with-logits of z (B, 1, h, w) towards 1 − ε/2 where hint ≥ δ_fg, averaged there;
    with ``delta_bg``, the mean of that and of the BCE towards ε/2 averaged where hint < δ_bg.

    hints: (B, 1, H, W) in [0, 1]; resized to the logits' size with :func:`hint_map` when they
    differ. Means run over the selected pixels of the whole batch; a cue with no pixel in the
    batch gives 0 (still attached to the graph, so ``backward`` works).
    """
    if delta_bg is not None and not 0.0 <= delta_bg <= delta_fg:
        raise ValueError(f"delta_bg: expected 0 <= delta_bg <= delta_fg={delta_fg}, got {delta_bg}")
    if hints.shape[-2:] != logits.shape[-2:]:
        hints = hint_map(hints, tuple(logits.shape[-2:]))
    z = logits.float()
    h = hints.to(z.device).float()
    fg = (h >= delta_fg).to(z.dtype)
    bce_fg = F.binary_cross_entropy_with_logits(
        z, torch.full_like(z, 1.0 - smoothing / 2.0), reduction="none"
    )
    loss = (bce_fg * fg).sum() / fg.sum().clamp_min(1.0)
    if delta_bg is None:
        return loss
    bg = (h < delta_bg).to(z.dtype)
    bce_bg = F.binary_cross_entropy_with_logits(
        z, torch.full_like(z, smoothing / 2.0), reduction="none"
    )
    return (loss + (bce_bg * bg).sum() / bg.sum().clamp_min(1.0)) / 2.0


__all__ = [
    "SIM_MAX",
    "SIM_MIN",
    "ccam_loss",
    "cosine_similarity_matrix",
    "hint_loss",
    "hint_map",
    "sim_max_loss",
    "sim_min_loss",
]
