"""Training C²AM-H: the engine Method, the image + hint dataset, the orientation fix, the recipe.

Hints travel through the project's joint image/mask transforms as a uint8 "mask": the hint
h ∈ [0, 1] (per-pixel max of the image's CAMs) is quantised to round(254·h) ∈ 0..254, so the
geometric transforms (resize with nearest neighbour, flip, crop, RandAugment's affine ops) move
it exactly with the image, and the value 255 they write where they pad means "no hint" and is
read back as 0 (below any δ_fg, so padding is never supervised). The quantisation error
(≤ 1/508) is far below the hint's own precision (CAMs are stored as float16).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pnoc.cam.export import cam_path
from pnoc.cam.inference import load_cam_npz
from pnoc.data.base import IGNORE_INDEX, SampleKey, key_index
from pnoc.data.transforms import eval_transform, to_tensor_image
from pnoc.engine import TrainContext
from pnoc.errors import ConfigError
from pnoc.models.ccam import CCAMNet
from pnoc.saliency.inference import orientation_means, predict_saliency
from pnoc.saliency.losses import (
    ALPHA,
    DELTA_BG,
    DELTA_FG,
    HINT_SMOOTHING,
    ccam_loss,
    hint_loss,
    hint_map,
)

log = logging.getLogger(__name__)

HINT_LEVELS = 254  # hint h is carried as round(254·h); 255 = padding (no hint)
PAD_VALUE = IGNORE_INDEX  # what the joint transforms write where they pad a mask


class C2AMH:
    """C²AM-H as an engine Method: L = SimMax(fg) + SimMin(bg, fg) + SimMax(bg) + λ_h·L_h.

    Args:
        model: the CCAM network (optimizer ``"ccam"``).
        alpha: rank-weighting α of SimMax.
        delta_fg: hint threshold δ_fg: pixels with hint ≥ δ_fg are supervised as foreground.
        delta_bg: with a value, pixels with hint < δ_bg are supervised as background too.
        lambda_h: weight λ_h of the hint term (0 = plain CCAM; the batch then needs no hint).
        smoothing: ε; the hint target is 1 − ε/2.

    ``train_step`` reads ``image`` (B, 3, S, S) and ``hint`` (B, 1, S, S) in [0, 1] and returns
    floats ``loss, fg_fg, fg_bg, bg_bg, hint`` (``hint`` is logged even when λ_h = 0).
    """

    name = "c2amh"

    def __init__(
        self,
        model: CCAMNet,
        *,
        alpha: float = ALPHA,
        delta_fg: float = DELTA_FG,
        lambda_h: float = 1.0,
        smoothing: float = HINT_SMOOTHING,
        delta_bg: float | None = DELTA_BG,
    ) -> None:
        if lambda_h < 0:
            raise ConfigError(f"lambda_h: expected >= 0, got {lambda_h}")
        if not 0.0 <= smoothing < 1.0:
            raise ConfigError(f"smoothing: expected 0 <= eps < 1, got {smoothing}")
        if not 0.0 < delta_fg <= 1.0:
            raise ConfigError(f"delta_fg: expected 0 < delta_fg <= 1, got {delta_fg}")
        if delta_bg is not None and not 0.0 <= delta_bg <= delta_fg:
            raise ConfigError(
                f"delta_bg: expected 0 <= delta_bg <= delta_fg={delta_fg}, got {delta_bg}"
            )
        self.model = model
        self._net: torch.nn.Module = model
        self.alpha = alpha
        self.delta_fg = delta_fg
        self.delta_bg = delta_bg
        self.lambda_h = lambda_h
        self.smoothing = smoothing

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"ccam": self.model}

    def use_modules(self, modules: dict[str, torch.nn.Module]) -> None:
        """Where ``train_step``'s forward passes go: under data parallelism ``fit`` hands
        the modules' ``DistributedDataParallel`` wrappers here, and the modules again after."""
        self._net = modules["ccam"]

    def param_groups(self, lr_mult_head: float = 10.0) -> dict[str, list[dict[str, Any]]]:
        return {"ccam": self.model.param_groups(lr_mult_head)}

    def train_step(self, batch: dict[str, Any], ctx: TrainContext) -> dict[str, float]:
        x = batch["image"].to(ctx.device, non_blocking=True)
        hints = batch.get("hint")
        if hints is None and self.lambda_h > 0:
            raise ConfigError("C²AM-H with lambda_h > 0 needs a 'hint' entry in every batch")
        with ctx.autocast():
            fg, bg, logits = self._net(x)
            loss, terms = ccam_loss(fg, bg, self.alpha)
            if hints is not None:
                h = hint_map(hints.to(ctx.device, non_blocking=True), tuple(logits.shape[-2:]))
                if self.lambda_h > 0:
                    terms["hint"] = hint_loss(
                        logits, h, self.delta_fg, self.smoothing, self.delta_bg
                    )
                    loss = loss + self.lambda_h * terms["hint"]
                else:  # logged only
                    with torch.no_grad():
                        terms["hint"] = hint_loss(
                            logits, h, self.delta_fg, self.smoothing, self.delta_bg
                        )
            else:
                terms["hint"] = loss.new_zeros(())
        ctx.update("ccam", loss, terms)
        named = {"loss": loss, **terms}
        values = torch.stack([t.detach().float().reshape(()) for t in named.values()]).tolist()
        return dict(zip(named, values, strict=True))


# --------------------------------------------------------------------------------------------
# Data


def quantise_hint(hint: np.ndarray) -> np.ndarray:
    """(H, W) hint in [0, 1] -> uint8 round(254·h) (0..254; 255 is left for padding)."""
    return np.rint(np.clip(hint, 0.0, 1.0) * HINT_LEVELS).astype(np.uint8)


def dequantise_hint(q: np.ndarray | Tensor) -> Tensor:
    """uint8/int (H, W) from :func:`quantise_hint` (255 = padding) -> float32 (H, W) in [0, 1]."""
    t = torch.as_tensor(np.asarray(q) if not isinstance(q, Tensor) else q).float()
    return torch.where(t >= PAD_VALUE, torch.zeros_like(t), t / HINT_LEVELS)


class HintSet(torch.utils.data.Dataset):
    """A reader's images with their CAM hints, under the same random geometric transform.

    Items: ``image`` float32 (3, S, S) normalised, ``hint`` float32 (1, S, S) in [0, 1] (0 where
    the transform padded), ``labels`` (K,), ``id``, ``index``. The hint of id ``i`` is the
    per-pixel max of ``<cam_dir>/<i>.npz`` (:func:`pnoc.cam.inference.load_cam_npz`; no class
    → zero hint), resized bilinearly to the image when sizes differ; it goes through
    ``transform`` as a uint8 mask (see the module docstring). ``transform`` is a joint
    ``(image, mask, rng)`` pipeline seeded from the sampler's key (default: eval, no change).
    A missing or corrupt CAM file raises :class:`~pnoc.errors.DatasetError` naming it.
    """

    def __init__(
        self,
        dataset: Any,
        cam_dir: str | Path,
        transform: Callable[..., Any] | None = None,
    ) -> None:
        self.dataset = dataset
        self.cam_dir = Path(cam_dir)
        self.transform = transform if transform is not None else eval_transform()

    def __len__(self) -> int:
        return len(self.dataset)

    def load_hint(self, image_id: str, size: tuple[int, int]) -> np.ndarray:
        """(H, W) float32 hint of ``image_id`` at ``size`` = (H, W)."""
        cams, _ = load_cam_npz(cam_path(self.cam_dir, image_id))
        return hint_map([cams.astype(np.float32)], size)[0, 0].numpy()

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any]:
        index, seed = key_index(key)
        sample = self.dataset.get(index, mask=False)
        hint = self.load_hint(sample.id, sample.image.shape[:2])
        image, q = self.transform(sample.image, quantise_hint(hint), np.random.default_rng(seed))
        return {
            "image": to_tensor_image(image),
            "hint": dequantise_hint(q).unsqueeze(0),
            "labels": torch.from_numpy(np.asarray(sample.labels, dtype=np.float32)),
            "id": sample.id,
            "index": index,
        }


# --------------------------------------------------------------------------------------------
# Orientation


@dataclass
class OrientationCheck:
    """Result of :func:`fix_orientation`.

    fg_mean / bg_mean: mean saliency where hint ≥ δ_fg / elsewhere, measured with the flag as it
    was on entry; flipped: whether the flag was toggled; inverted: the flag on exit.
    """

    inverted: bool
    flipped: bool
    fg_mean: float
    bg_mean: float
    images: int


def fix_orientation(
    model: CCAMNet,
    hint_set: HintSet,
    *,
    delta_fg: float = DELTA_FG,
    max_images: int = 64,
    flip: bool = True,
) -> OrientationCheck:
    """Set ``model.inverted`` so that the saliency is high on the CAM-hinted foreground.

    Predicts (eval mode, :func:`predict_saliency`) on up to ``max_images`` images spread evenly
    over ``hint_set`` (use an un-augmented one), then compares the mean saliency at
    hint ≥ δ_fg with the mean elsewhere over all their pixels. If the foreground mean is lower
    the flag is toggled. Without evidence (no pixel on one side) the flag is kept, with a
    warning.
    """
    n = len(hint_set)
    if n == 0 or max_images < 1:
        raise ConfigError("fix_orientation needs at least one image")
    indices = sorted({int(i) for i in np.linspace(0, n - 1, min(n, max_images))})
    sals, hints = [], []
    for i in indices:
        item = hint_set[i]
        sals.append(predict_saliency(model, item["image"], flip=flip))
        hints.append(item["hint"][0].numpy())
    fg, bg = orientation_means(sals, hints, delta_fg)
    flipped = False
    if not (np.isfinite(fg) and np.isfinite(bg)):
        log.warning(
            "saliency orientation: no evidence on %d images (hint >= %g on %s pixels); "
            "keeping inverted=%s",
            len(indices),
            delta_fg,
            "all" if np.isfinite(fg) else "no",
            model.is_inverted,
        )
    elif fg < bg:
        model.set_inverted(not model.is_inverted)
        flipped = True
    log.info(
        "saliency orientation on %d images: mean %.3f on hinted foreground, %.3f elsewhere; "
        "inverted=%s%s",
        len(indices),
        fg,
        bg,
        model.is_inverted,
        " (flipped)" if flipped else "",
    )
    return OrientationCheck(model.is_inverted, flipped, fg, bg, len(indices))


__all__ = [
    "C2AMH",
    "HintSet",
    "OrientationCheck",
    "dequantise_hint",
    "fix_orientation",
    "quantise_hint",
]
