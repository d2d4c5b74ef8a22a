"""Loss terms and tensor helpers of Puzzle-CAM, OC-CSE and P-NOC (pure functions of tensors).

Shapes: B batch, K foreground classes, C channels, H×W image size, h×w map size.
Labels ``y`` are multi-hot (B, K) in {0, 1}; smoothed labels ``ỹ`` are in [ε/2, 1 − ε/2].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pnoc.errors import ConfigError

EPS = 1e-5


def smooth_labels(y: Tensor, eps: float) -> Tensor:
    """Label smoothing for independent binary targets: (1 − eps)·y + eps/2. (B, K) -> (B, K)."""
    if not 0.0 <= eps < 1.0:
        raise ConfigError(f"label_smoothing: expected 0 <= eps < 1, got {eps}")
    return y * (1.0 - eps) + eps / 2.0


def mlsm(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """Multi-label soft margin loss, computed in float32 (safe under autocast).

    logits (B, K), targets (B, K) in [0, 1] -> scalar (``"mean"``), or (B,) with ``"none"``
    (each sample's loss averaged over its K classes).
    """
    return F.multilabel_soft_margin_loss(logits.float(), targets.float(), reduction=reduction)


def gap(maps: Tensor) -> Tensor:
    """Global average pooling: (B, K, h, w) -> (B, K)."""
    return maps.mean((2, 3))


# --------------------------------------------------------------------------------------------
# Puzzle-CAM


def tile_2x2(x: Tensor) -> Tensor:
    """Cut each image into its 4 quadrants, stacked quadrant-major.

    (B, C, H, W) -> (4B, C, H/2, W/2): rows [0, B) are the top-left tiles, then top-right,
    bottom-left, bottom-right. H and W must be even (raise :class:`ConfigError` otherwise —
    choose an image size that is a multiple of 2 × output stride so the merged tile maps also
    line up with the full-image maps).
    """
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        raise ConfigError(
            f"puzzle tiling needs an even image size, got {h}×{w}; use a multiple of 32"
        )
    h2, w2 = h // 2, w // 2
    return torch.cat(
        [x[..., :h2, :w2], x[..., :h2, w2:], x[..., h2:, :w2], x[..., h2:, w2:]], dim=0
    )


def merge_2x2(t: Tensor) -> Tensor:
    """Inverse of :func:`tile_2x2`: (4B, C, h, w) -> (B, C, 2h, 2w). Exact round trip."""
    if t.shape[0] % 4:
        raise ValueError(f"merge_2x2 expects a batch of 4B tiles, got {t.shape[0]}")
    tl, tr, bl, br = t.chunk(4, dim=0)
    return torch.cat([torch.cat([tl, tr], dim=3), torch.cat([bl, br], dim=3)], dim=2)


def puzzle_reconstruction_loss(maps: Tensor, merged: Tensor, y: Tensor) -> Tensor:
    """Puzzle reconstruction: mean(|A − Â| · y), the mean over all B·K·h·w entries.

    maps A and merged tile maps Â: (B, K, h, w) (same shape); y: (B, K) hard labels, so only the
    maps of present classes are pulled together. Returns a scalar.
    """
    if maps.shape != merged.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and merged {tuple(merged.shape)} differ")
    return ((maps - merged).abs() * y[:, :, None, None].to(maps.dtype)).float().mean()


# --------------------------------------------------------------------------------------------
# OC-CSE / P-NOC


def sample_present_class(
    y: Tensor, generator: torch.Generator | None = None, *, noise: Tensor | None = None
) -> Tensor:
    """One class drawn uniformly among each image's present classes.

    y: (B, K) multi-hot -> r: (B,) long; r = −1 for images with no present class.
    ``noise`` (B, K) uniform in [0, 1), when given, is the draw (the class of the largest noise
    among the present ones): drawn per sample from its seed, it makes the class of an image the
    same whatever batch or worker the image lands in. Otherwise the noise comes from
    ``generator`` (optional; it may live on any device) or torch's global RNG.
    """
    present = y > 0.5
    if noise is None:
        device = generator.device if generator is not None else y.device
        noise = torch.rand(y.shape, generator=generator, device=device)
    elif noise.shape != y.shape:
        raise ValueError(f"noise: expected shape {tuple(y.shape)}, got {tuple(noise.shape)}")
    noise = noise.to(y.device)
    r = noise.masked_fill(~present, -1.0).argmax(dim=1)
    return torch.where(present.any(dim=1), r, torch.full_like(r, -1))


def class_mask(
    maps: Tensor, r: Tensor, size: tuple[int, int], *, global_norm: bool = False
) -> Tensor:
    """The normalised activation map of class r: M = upsample(relu(A_r)) / max.

    maps: (B, K, h, w); r: (B,) class indices (−1 = none -> M = 0); size: (H, W) ->
    M: (B, 1, H, W) in [0, 1] (bilinear, align_corners=False). The maximum is taken per image
    (``global_norm=False``, this project's default) or over the whole batch (``True``, the
    authors' OC-CSE default); eps 1e-5 keeps an all-zero map at zero. Differentiable wrt maps.
    """
    b = maps.shape[0]
    valid = r >= 0
    a = maps[torch.arange(b, device=maps.device), r.clamp(min=0)].unsqueeze(1)
    a = F.interpolate(F.relu(a), size=size, mode="bilinear", align_corners=False)
    a = a * valid.view(b, 1, 1, 1).to(a.dtype)
    peak = a.amax() if global_norm else a.amax(dim=(2, 3), keepdim=True)
    return a / (peak + EPS)


def erase(x: Tensor, mask: Tensor) -> Tensor:
    """Soft erasing x·(1 − M). x (B, C, H, W), M (B, 1, H, W) -> (B, C, H, W)."""
    return x * (1.0 - mask)


def hard_erase(x: Tensor, mask: Tensor, delta: float) -> Tensor:
    """Hard erasing x·[M ≤ δ]: zero (the dataset mean, for normalised images) where M > δ."""
    return x * (mask <= delta).to(x.dtype)


def labels_without(y: Tensor, r: Tensor) -> Tensor:
    """y with class r_i removed from image i (ignored where r_i = −1). (B, K), (B,) -> (B, K)."""
    out = y.clone()
    rows = torch.nonzero(r >= 0).squeeze(1)
    out[rows, r[rows]] = 0.0
    return out


def masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` (B,) over ``valid`` (B,) bool entries; 0 (with graph) when none is."""
    w = valid.to(values.dtype)
    return (values * w).sum() / w.sum().clamp(min=1.0)
