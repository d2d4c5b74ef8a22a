"""Segmentation inference: multi-scale + flip test-time augmentation, image in, mask out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pnoc.data.transforms import eval_transform


@torch.inference_mode()
def predict_probs(
    model: nn.Module, image: Tensor, scales: Sequence[float] = (1.0,), flip: bool = True
) -> Tensor:
    """image (3, H, W) normalised -> class probabilities (C, H, W): the mean of the softmax
    over scales (and mirrored copies), each resized back to H×W.

    A batch of same-size images (B, 3, H, W) gives (B, C, H, W), each image's probabilities
    those it gets alone within float rounding (the mirrored copies join the same forward).
    """
    was_training = model.training
    model.eval()
    try:
        single = image.dim() == 3
        x = image.unsqueeze(0) if single else image
        b = x.shape[0]
        h, w = x.shape[-2:]
        total: Tensor | None = None
        for s in scales:
            size = (max(8, round(h * s)), max(8, round(w * s)))
            xs = (
                x
                if size == (h, w)
                else F.interpolate(x, size, mode="bilinear", align_corners=False)
            )
            batch = torch.cat([xs, xs.flip(-1)]) if flip else xs
            probs = model(batch).float().softmax(dim=1)
            if flip:
                probs = (probs[:b] + probs[b:].flip(-1)) / 2
            probs = F.interpolate(probs, (h, w), mode="bilinear", align_corners=False)
            total = probs if total is None else total + probs
    finally:
        model.train(was_training)
    assert total is not None
    probs = total / len(scales)
    return probs[0] if single else probs


def segment_image(
    model: nn.Module,
    image: np.ndarray,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """image H×W×3 uint8 RGB -> (mask H×W uint8, probabilities (C, H, W) float32)."""
    x, _ = eval_transform()(image, None, np.random.default_rng(0))
    probs = predict_probs(model, torch.as_tensor(x).to(device), scales, flip).cpu()
    return probs.argmax(0).numpy().astype(np.uint8), probs.numpy()
