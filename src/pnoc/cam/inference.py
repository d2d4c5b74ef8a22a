"""CAM inference (multi-scale + flip), normalisation, compact storage and overlays.

Storage format of one image's CAMs (``.npz``, compressed):
    cams:    (k, H, W) float16, the normalised maps of the image's k present classes, in [0, 1]
    classes: (k,) int64, their class indices, 1-based (0 is background, never stored)
Background is not stored: it is a constant threshold chosen at evaluation time
(:func:`cams_to_mask`).
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pnoc.errors import DatasetError, PnocError
from pnoc.io import atomic_path
from pnoc.models.cam import CAMNet
from pnoc.viz import PANEL, Panel, class_label, grid_figure, overlay_heat, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_SCALES = (0.5, 1.0, 1.5, 2.0)
EPS = 1e-5


def multiscale_cams(
    model: nn.Module,
    image: Tensor,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
) -> Tensor:
    """Sum over scales of ReLU'd class maps, each upsampled to the input size.

    model: maps images (B, 3, h, w) to class maps (B, K, h', w') (e.g. a CAMNet);
    image: (B, 3, H, W) or (3, H, W), normalised -> (B, K, H, W) float32, unnormalised.

    For each scale s the image is resized to round(s·H) × round(s·W) (bilinear,
    align_corners=False); with ``flip`` its mirror image goes through the same forward (one
    2B batch) and its maps are mirrored back and added. Runs under ``torch.inference_mode``
    with the model temporarily in eval mode. By construction
    ``multiscale_cams(flip(x)) == flip(multiscale_cams(x))`` when ``flip`` is on.
    """
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4:
        raise ValueError(f"image: expected (B, 3, H, W) or (3, H, W), got {tuple(image.shape)}")
    if not scales or any(s <= 0 for s in scales):
        raise PnocError(f"cams.scales: expected positive scales, got {list(scales)}")
    b, _, h, w = image.shape
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            total: Tensor | None = None
            for s in scales:
                size = (max(1, round(h * s)), max(1, round(w * s)))
                x = image if size == (h, w) else _resize(image, size)
                if flip:
                    maps = F.relu(model(torch.cat([x, x.flip(-1)], dim=0)).float())
                    maps = maps[:b] + maps[b:].flip(-1)
                else:
                    maps = F.relu(model(x).float())
                maps = _resize(maps, (h, w))
                total = maps if total is None else total + maps
    finally:
        model.train(was_training)
    assert total is not None
    return total


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def normalize_cams(cams: Tensor, labels: Tensor | None = None, eps: float = EPS) -> Tensor:
    """Divide each class map by its maximum: (B, K, H, W) -> same shape, values in [0, 1).

    With ``labels`` (B, K) multi-hot, maps of absent classes are set to zero.
    """
    out = F.relu(cams)
    out = out / (out.amax(dim=(-2, -1), keepdim=True) + eps)
    if labels is not None:
        out = out * (labels > 0.5).to(out.dtype)[..., None, None]
    return out


def cams_to_record(
    cams: Tensor | np.ndarray, labels: Tensor | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One image's maps of its present classes, compactly.

    cams (K, H, W) normalised, labels (K,) multi-hot -> (cams (k, H, W) float16,
    classes (k,) int64, 1-based class indices).
    """
    cams_np = cams.detach().cpu().numpy() if isinstance(cams, Tensor) else np.asarray(cams)
    labels_np = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if cams_np.ndim != 3 or labels_np.shape != (cams_np.shape[0],):
        raise ValueError(
            f"cams_to_record: expected cams (K, H, W) and labels (K,), got "
            f"{cams_np.shape} and {labels_np.shape}"
        )
    present = np.flatnonzero(labels_np > 0.5)
    return cams_np[present].astype(np.float16), (present + 1).astype(np.int64)


def cams_to_mask(cams: np.ndarray, classes: np.ndarray, threshold: float) -> np.ndarray:
    """Label map from stored CAMs with a constant background score.

    cams (k, H, W), classes (k,) 1-based -> (H, W) uint8: the argmax over
    [threshold, cams...] mapped to 0 (background) or the class index.
    """
    h, w = cams.shape[-2:]
    if len(classes) == 0:
        return np.zeros((h, w), dtype=np.uint8)
    scores = np.concatenate([np.full((1, h, w), threshold, dtype=np.float32), cams], axis=0)
    lut = np.concatenate([[0], np.asarray(classes, dtype=np.int64)]).astype(np.uint8)
    return lut[scores.argmax(axis=0)]


def save_cam_npz(path: str | Path, cams_fp16: np.ndarray, classes: np.ndarray) -> None:
    """Atomically write one image's record (see module docstring) as a compressed ``.npz``."""
    cams_arr = np.asarray(cams_fp16)
    classes_arr = np.asarray(classes)
    _validate_record(Path(path), cams_arr, classes_arr, cast_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # A file object, not a path: savez would append '.npz' to the temporary name.
        np.savez_compressed(
            f, cams=cams_arr.astype(np.float16), classes=classes_arr.astype(np.int64)
        )


def load_cam_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a record written by :func:`save_cam_npz`: (cams (k, H, W) float16, classes (k,) int64).

    Raises :class:`DatasetError` naming the file if it is missing, corrupt or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "CAM file not found (run the cams stage first)")
    try:
        with np.load(path, allow_pickle=False) as data:
            cams, classes = data["cams"], data["classes"]
    except KeyError as exc:
        raise DatasetError(path, f"CAM file lacks the array {exc}") from exc
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DatasetError(path, f"corrupt CAM file ({exc})") from exc
    _validate_record(path, cams, classes, cast_ok=False)
    return cams, classes


def _validate_record(path: Path, cams: np.ndarray, classes: np.ndarray, *, cast_ok: bool) -> None:
    problems = []
    if cams.ndim != 3:
        problems.append(f"cams must be (k, H, W), got shape {cams.shape}")
    if not (np.issubdtype(cams.dtype, np.floating) if cast_ok else cams.dtype == np.float16):
        problems.append(f"cams must be float16, got {cams.dtype}")
    if classes.ndim != 1 or (cams.ndim == 3 and classes.shape[0] != cams.shape[0]):
        problems.append(f"classes must be (k,) matching cams, got shape {classes.shape}")
    if not np.issubdtype(classes.dtype, np.integer):
        problems.append(f"classes must be integers, got {classes.dtype}")
    elif classes.size and classes.min() < 1:
        problems.append("classes must be 1-based foreground indices (>= 1)")
    if problems:
        err = DatasetError(path, "; ".join(problems))
        if cast_ok:  # writing: a programming error, not a bad file
            raise PnocError(str(err))
        raise err


# --------------------------------------------------------------------------------------------
# Overlays


def jet(values: np.ndarray) -> np.ndarray:
    """The jet colormap: values in [0, 1] (any shape) -> uint8 RGB (..., 3)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25])  # r, g, b
    rgb = np.clip(1.5 - np.abs(4.0 * v - 4.0 * centres), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def cam_overlay_figure(
    images: Sequence[np.ndarray],
    cams: Sequence[np.ndarray],
    classes: Sequence[np.ndarray],
    class_names: Sequence[str],
    *,
    alpha: float = 0.5,
    panel: int = PANEL,
) -> Figure:
    """One row per image: the image, then one jet overlay per present class (see
    :func:`cam_overlay_grid`)."""
    if not (len(images) == len(cams) == len(classes)) or not images:
        raise ValueError("cam_overlay_grid: images, cams and classes must be non-empty and align")
    rows: list[list[Panel | None]] = []
    for img, maps, cls in zip(images, cams, classes, strict=True):
        base = np.asarray(img, dtype=np.uint8)
        rows.append(
            [Panel(base)]
            + [
                Panel(overlay_heat(base, m, alpha), caption=class_label(int(c), class_names))
                for m, c in zip(maps, cls, strict=True)
            ]
        )
    cols = max(len(r) for r in rows)
    h, w = np.asarray(images[0]).shape[:2]
    return grid_figure(
        rows,
        column_titles=["image"] + ["CAM"] * (cols - 1),
        title="CAMs of each image's classes",
        panel=panel,
        aspect=h / w,
        colorbar="CAM activation (max = 1)",
    )


def cam_overlay_grid(
    images: Sequence[np.ndarray],
    cams: Sequence[np.ndarray],
    classes: Sequence[np.ndarray],
    class_names: Sequence[str],
    path: str | Path,
    *,
    alpha: float = 0.5,
    panel: int = PANEL,
) -> None:
    """Write a PNG grid: one row per image, the image then one jet overlay per present class.

    images: H×W×3 uint8 RGB; cams: (k, H, W) in [0, 1] (as stored); classes: (k,) 1-based;
    class_names: indexed by class index, background first (as ``class_names.txt``). Columns
    are titled (``image``, ``CAM``), each CAM captioned with its class name, and a colour bar
    gives the activation scale. Panels are ``panel`` px on their longer side, shaped like the
    first image. Written atomically.
    """
    save_figure(
        cam_overlay_figure(images, cams, classes, class_names, alpha=alpha, panel=panel), path
    )


def load_cam_model(path: str | Path, device: str | torch.device = "cpu") -> CAMNet:
    """A trained CAM classifier (``models/oc.pt``, ``models/cam.pt``) in eval mode on ``device``."""
    return CAMNet.from_checkpoint(path).to(torch.device(device)).eval()
