"""A DeepLabV3+ checkpoint with its test-time augmentation, images in, class-index masks out,
at a bounded cost per request (:class:`~pnoc.serving.limits.ServingLimits`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pnoc.errors import PnocError
from pnoc.serving.limits import ServingLimits
from pnoc.serving.payloads import ImageInput, PayloadError, as_image_array

#: Output rows computed at once when a mask is scaled back up to a large image.
_STRIP_ROWS = 256


class ServerBusy(PnocError):
    """No segmentation slot came free before the request's deadline (retry later)."""


class RequestTimeout(PnocError):
    """The request ran past its deadline; its remaining images were not segmented."""


class Segmenter:
    """A DeepLabV3+ with its test-time augmentation: H×W×3 uint8 images -> H×W class masks.

    An image whose longer side exceeds ``limits.max_side`` is scaled down to it for the network
    and its mask scaled back to the image's size (the class probabilities bilinearly upsampled a
    strip of rows at a time, then the arg-max), so memory and time stay bounded whatever the
    size. At most ``limits.max_concurrent`` calls of :meth:`predict` run at once.
    """

    def __init__(
        self,
        model: Any,
        *,
        scales: Sequence[float] = (1.0,),
        flip: bool = True,
        class_names: Sequence[str] | None = None,
        device: str = "cpu",
        limits: ServingLimits | None = None,
    ) -> None:
        if not scales or any(float(s) <= 0 for s in scales):
            raise PnocError(f"scales: expected positive numbers, got {list(scales)}")
        num_classes = int(model.num_classes)
        if class_names is not None and len(class_names) != num_classes:
            raise PnocError(
                f"class_names: {len(class_names)} names for a model with {num_classes} classes"
            )
        self.model = model.to(device).eval()
        self.scales = tuple(float(s) for s in scales)
        self.flip = bool(flip)
        self.class_names = list(class_names) if class_names is not None else None
        self.device = device
        self.limits = limits or ServingLimits()
        self._slots = threading.BoundedSemaphore(self.limits.max_concurrent)

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        scales: Sequence[float] = (1.0,),
        flip: bool = True,
        *,
        device: str = "cpu",
        limits: ServingLimits | None = None,
    ) -> Segmenter:
        """Load a DeepLabV3+ checkpoint (:func:`pnoc.models.backbones.save_model`, read with
        ``weights_only``); its ``meta["class_names"]``, when present, names the mask values."""
        from pnoc.models.backbones import load_model_checkpoint
        from pnoc.models.deeplab import DeepLabV3Plus

        model = DeepLabV3Plus.from_checkpoint(path)
        _, meta = load_model_checkpoint(path)
        names = meta.get("class_names")
        if names is not None and (
            not isinstance(names, list) or not all(isinstance(n, str) for n in names)
        ):
            raise PnocError(f"{path}: meta 'class_names' must be a list of strings")
        if names is not None and len(names) != model.num_classes:
            raise PnocError(
                f"{path}: meta 'class_names' has {len(names)} names for {model.num_classes} classes"
            )
        return cls(model, scales=scales, flip=flip, class_names=names, device=device, limits=limits)

    def segment(
        self, image: np.ndarray, *, with_probs: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """H×W×3 uint8 -> (mask H×W uint8, probabilities (C, H, W) float32 or None)."""
        import torch

        from pnoc.data.transforms import eval_transform
        from pnoc.segmentation.inference import predict_probs

        image = as_image_array(image, limits=self.limits)
        h, w = image.shape[:2]
        factor = min(1.0, self.limits.max_side / max(h, w))
        if with_probs and (factor < 1.0 or h * w > self.limits.max_probability_pixels):
            raise PayloadError(
                f"probabilities are returned for images of at most {self.limits.max_side} px a "
                f"side and {self.limits.max_probability_pixels} pixels; this one is {h}×{w} "
                "(ask for the mask alone)"
            )
        work = image if factor == 1.0 else _resize(image, factor)
        x, _ = eval_transform()(work, None, np.random.default_rng(0))
        probs = predict_probs(
            model=self.model,
            image=torch.as_tensor(x).to(self.device),
            scales=self.scales,
            flip=self.flip,
        ).cpu()
        if factor == 1.0:
            mask = probs.argmax(0).numpy().astype(np.uint8)
        else:
            mask = upsampled_argmax(probs, (h, w))
        return mask, (probs.numpy() if with_probs else None)

    def predict(
        self,
        images: Sequence[np.ndarray | ImageInput],
        *,
        with_probs: bool = False,
        deadline: float | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """(mask, probabilities or None) per image, each at the image's size.

        Waits for a free slot (``limits.max_concurrent``), decodes each :class:`ImageInput`
        only when its turn comes, and stops at ``deadline`` (a ``time.monotonic()`` value;
        ``limits.timeout_s`` after the call when None): raises
        :class:`ServerBusy` when no slot came free in time, :class:`RequestTimeout` when the work
        ran past it.
        """
        if deadline is None:
            deadline = time.monotonic() + self.limits.timeout_s
        if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise ServerBusy(
                f"server busy: {self.limits.max_concurrent} request(s) in progress for "
                f"{self.limits.timeout_s:g} s; retry later"
            )
        try:
            results = []
            for i, item in enumerate(images):
                if time.monotonic() > deadline:
                    raise RequestTimeout(
                        f"request took longer than {self.limits.timeout_s:g} s; "
                        f"{len(images) - i} of {len(images)} images not segmented"
                    )
                image = item.decode() if isinstance(item, ImageInput) else item
                results.append(self.segment(image, with_probs=with_probs))
                del image
            return results
        finally:
            self._slots.release()


def _resize(image: np.ndarray, factor: float) -> np.ndarray:
    """H×W×3 uint8 scaled by ``factor`` (< 1) with Pillow's antialiased bilinear filter."""
    from PIL import Image

    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def upsampled_argmax(probs: Any, size: tuple[int, int], rows: int = _STRIP_ROWS) -> np.ndarray:
    """The arg-max of ``probs`` (C, h, w) bilinearly resized to ``size`` (as
    ``F.interpolate(..., align_corners=False)``), computed ``rows`` output rows at a time so
    the full C×H×W volume never exists. -> H×W uint8."""
    import torch
    import torch.nn.functional as F

    c, h, w = probs.shape
    out_h, out_w = size
    out = np.empty((out_h, out_w), dtype=np.uint8)
    scale = h / out_h
    for y0 in range(0, out_h, rows):
        y1 = min(out_h, y0 + rows)
        src = ((torch.arange(y0, y1, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
        i0 = src.floor().long().clamp(max=h - 1)
        i1 = (i0 + 1).clamp(max=h - 1)
        lam = (src - i0.float()).view(1, -1, 1)
        lo, hi = int(i0.min()), int(i1.max())
        # Only the width is resized here: the height stays, so its mapping is the identity.
        part = F.interpolate(
            probs[None, :, lo : hi + 1], (hi - lo + 1, out_w), mode="bilinear", align_corners=False
        )[0]
        strip = part[:, i0 - lo] * (1 - lam) + part[:, i1 - lo] * lam
        out[y0:y1] = strip.argmax(0).numpy().astype(np.uint8)
    return out
