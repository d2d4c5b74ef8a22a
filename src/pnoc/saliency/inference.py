"""Saliency inference, storage (8-bit PNG), orientation check, evaluation counts and overlays.

Storage: one grayscale (mode "L") PNG per image, value = round(255 · saliency), at the image's
resolution.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from pnoc.data.base import IGNORE_INDEX
from pnoc.errors import DatasetError
from pnoc.io import write_bytes
from pnoc.models.ccam import CCAMNet
from pnoc.saliency.losses import DELTA_FG
from pnoc.viz import PANEL, Panel, grid_figure, overlay_heat, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def predict_saliency(model: CCAMNet, image: Tensor, flip: bool = True) -> np.ndarray:
    """Foreground probability of one image: (3, H, W) normalised -> (H, W) float32 in [0, 1].

    With ``flip`` the mirrored image goes through the same batch and its map, mirrored back, is
    averaged in. Runs in eval mode (restored after) under ``torch.inference_mode`` on the
    model's device; the model's orientation flag applies.
    """
    if image.dim() != 3:
        raise ValueError(f"image: expected (3, H, W), got {tuple(image.shape)}")
    return predict_saliency_batch(model, image.unsqueeze(0), flip=flip)[0]


def predict_saliency_batch(model: CCAMNet, images: Tensor, flip: bool = True) -> np.ndarray:
    """:func:`predict_saliency` of a batch of same-size images: (B, 3, H, W) -> (B, H, W).

    Each map is the one :func:`predict_saliency` gives its image alone, within float rounding
    (the flipped copies go through the same forward: one 2B batch).
    """
    if images.dim() != 4:
        raise ValueError(f"images: expected (B, 3, H, W), got {tuple(images.shape)}")
    device = next(model.parameters()).device
    x = images.to(device)
    b = x.shape[0]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if flip:
                sal = model.saliency(torch.cat([x, x.flip(-1)]))
                sal = (sal[:b] + sal[b:].flip(-1)) / 2
            else:
                sal = model.saliency(x)
    finally:
        model.train(was_training)
    return sal[:, 0].float().clamp(0.0, 1.0).cpu().numpy()


def orientation_means(
    saliency: np.ndarray | Tensor | Sequence[np.ndarray | Tensor],
    hints: np.ndarray | Tensor | Sequence[np.ndarray | Tensor],
    delta_fg: float = DELTA_FG,
) -> tuple[float, float]:
    """(mean saliency where hint ≥ δ_fg, mean saliency where hint < δ_fg) over all pixels.

    saliency/hints: equally shaped arrays (any shape), or sequences of them (one per image; the
    images may differ in size). A side with no pixel gives NaN.
    """
    sal_list = _as_list(saliency)
    hint_list = _as_list(hints)
    if len(sal_list) != len(hint_list):
        raise ValueError(f"{len(sal_list)} saliency maps but {len(hint_list)} hints")
    sums = np.zeros(2)
    counts = np.zeros(2)
    for s, h in zip(sal_list, hint_list, strict=True):
        if s.shape != h.shape:
            raise ValueError(f"saliency shape {s.shape} differs from hint shape {h.shape}")
        fg = h >= delta_fg
        sums += (float(s[fg].sum()), float(s[~fg].sum()))
        counts += (int(fg.sum()), int((~fg).sum()))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return float(means[0]), float(means[1])


def orientation(
    saliency: np.ndarray | Tensor | Sequence[np.ndarray | Tensor],
    hints: np.ndarray | Tensor | Sequence[np.ndarray | Tensor],
    delta_fg: float = DELTA_FG,
) -> bool:
    """True when the saliency looks inverted: lower on the hinted foreground than elsewhere.

    Compares the two means of :func:`orientation_means`; when either side has no pixel there
    is no evidence and the answer is False.
    """
    fg, bg = orientation_means(saliency, hints, delta_fg)
    return bool(np.isfinite(fg) and np.isfinite(bg) and fg < bg)


def _as_list(x: np.ndarray | Tensor | Sequence[np.ndarray | Tensor]) -> list[np.ndarray]:
    items = [x] if isinstance(x, np.ndarray | Tensor) else list(x)
    return [
        i.detach().float().cpu().numpy() if isinstance(i, Tensor) else np.asarray(i, np.float32)
        for i in items
    ]


# --------------------------------------------------------------------------------------------
# Storage


def saliency_path(saliency_dir: str | Path, image_id: str) -> Path:
    """Where the saliency PNG of ``image_id`` lives under ``saliency_dir``."""
    return Path(saliency_dir) / f"{image_id}.png"


def save_saliency_png(path: str | Path, sal: np.ndarray) -> None:
    """Write an (H, W) map in [0, 1] as an 8-bit grayscale PNG (round(255·s)), atomically."""
    from PIL import Image

    arr = np.asarray(sal, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"saliency: expected (H, W), got {arr.shape}")
    q = np.rint(np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(q).save(buf, format="PNG")
    write_bytes(path, buf.getvalue())


def load_saliency_png(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a saliency PNG -> (H, W) float32 in [0, 1] (value / 255).

    ``expected_size`` is (H, W). A missing, undecodable or wrongly sized file raises
    :class:`~pnoc.errors.DatasetError` (a ``PnocError``) naming it. Colour PNGs are converted
    to luminance.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "saliency map not found (run the saliency stage first)")
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im if im.mode == "L" else im.convert("L"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(path, f"corrupt saliency map ({exc})") from exc
    if expected_size is not None and arr.shape != tuple(expected_size):
        raise DatasetError(
            path,
            f"saliency map size {arr.shape[1]}x{arr.shape[0]} differs from the expected "
            f"{expected_size[1]}x{expected_size[0]}",
        )
    return arr.astype(np.float32) / 255.0


# --------------------------------------------------------------------------------------------
# Evaluation


def saliency_confusion(sal: np.ndarray, gt_mask: np.ndarray, threshold: float) -> np.ndarray:
    """2×2 int64 counts [[TN, FP], [FN, TP]]: rows = truth (bg, fg), columns = prediction.

    Predicted foreground: ``sal >= threshold``; true foreground: ``0 < gt < 255``; pixels with
    gt == 255 are ignored.
    """
    sal = np.asarray(sal)
    gt = np.asarray(gt_mask)
    if sal.shape != gt.shape:
        raise ValueError(f"saliency shape {sal.shape} differs from mask shape {gt.shape}")
    valid = gt != IGNORE_INDEX
    truth = (gt > 0)[valid].astype(np.int64)
    pred = (sal >= threshold)[valid].astype(np.int64)
    return np.bincount(truth * 2 + pred, minlength=4).reshape(2, 2).astype(np.int64)


def saliency_sweep_confusion(
    sal: np.ndarray, gt_mask: np.ndarray, thresholds: Sequence[float] | np.ndarray
) -> np.ndarray:
    """(T, 2, 2) int64: :func:`saliency_confusion` at every threshold, in one pass.

    Each valid pixel's saliency is ranked against the sorted thresholds once; the counts of
    predicted foreground at threshold t are the pixels whose saliency is ≥ t.
    """
    sal = np.asarray(sal)
    gt = np.asarray(gt_mask)
    if sal.shape != gt.shape:
        raise ValueError(f"saliency shape {sal.shape} differs from mask shape {gt.shape}")
    t = np.asarray(thresholds, dtype=np.float64)
    order = np.argsort(t)
    valid = gt != IGNORE_INDEX
    truth = (gt > 0)[valid]
    values = sal[valid].astype(np.float64)
    out = np.zeros((len(t), 2, 2), dtype=np.int64)
    for row, pixels in ((0, values[~truth]), (1, values[truth])):
        # number of sorted thresholds <= each value -> pixel is fg for those thresholds
        rank = np.searchsorted(t[order], pixels, side="right")
        hist = np.bincount(rank, minlength=len(t) + 1)
        fg_counts = hist[::-1].cumsum()[::-1][1:]  # fg at sorted threshold j: rank > j
        out[order, row, 1] = fg_counts
        out[order, row, 0] = len(pixels) - fg_counts
    return out


# --------------------------------------------------------------------------------------------
# Overlays


def saliency_overlay_figure(
    images: Sequence[np.ndarray],
    saliencies: Sequence[np.ndarray],
    *,
    alpha: float = 0.5,
    panel: int = PANEL,
) -> Figure:
    """One row per image: the image, the saliency over it and the map (see
    :func:`saliency_overlay_grid`)."""
    if len(images) != len(saliencies) or not images:
        raise ValueError("saliency_overlay_grid: images and saliencies must be non-empty and align")
    rows: list[list[Panel | None]] = []
    for img, sal in zip(images, saliencies, strict=True):
        base = np.asarray(img, dtype=np.uint8)
        s = np.clip(np.asarray(sal, dtype=np.float32), 0.0, 1.0)
        gray = np.repeat(np.rint(s * 255.0).astype(np.uint8)[..., None], 3, axis=2)
        rows.append([Panel(base), Panel(overlay_heat(base, s, alpha)), Panel(gray)])
    h, w = np.asarray(images[0]).shape[:2]
    return grid_figure(
        rows,
        column_titles=["image", "saliency overlay", "saliency map"],
        title="saliency: probability of foreground (1 = red / white)",
        panel=panel,
        aspect=h / w,
        colorbar="saliency (overlay colours)",
    )


def saliency_overlay_grid(
    images: Sequence[np.ndarray],
    saliencies: Sequence[np.ndarray],
    path: str | Path,
    *,
    alpha: float = 0.5,
    panel: int = PANEL,
) -> None:
    """Write a PNG grid: one row per image with the image, a jet overlay and the gray map.

    images: H×W×3 uint8 RGB; saliencies: (H, W) in [0, 1]. The figure and its columns are
    titled and a colour bar gives the overlay's scale. Panels are ``panel`` px on their longer
    side, shaped like the first image. Written atomically.
    """
    save_figure(saliency_overlay_figure(images, saliencies, alpha=alpha, panel=panel), path)


__all__ = [
    "load_saliency_png",
    "orientation",
    "orientation_means",
    "predict_saliency",
    "predict_saliency_batch",
    "save_saliency_png",
    "saliency_confusion",
    "saliency_sweep_confusion",
    "saliency_overlay_figure",
    "saliency_overlay_grid",
]
