"""The CCAM network of C²AM-H: backbone -> disentangler -> class-agnostic saliency.

CCAM (Xie et al., CVPR 2022, "Contrastive learning of Class-agnostic Activation Map"):
features F (B, C, h, w) of the backbone go through the *disentangler*, a 3×3 conv
(C -> 1, no bias) + BatchNorm2d(1), giving logits z (B, 1, h, w) and P = σ(z). F is the last
stage's output (``features="out"``, stride ``output_stride``, CCAM's choice) or the stride-4
stage (``features="low"``): on small images (the embedded dataset's 96 px give a 6×6 last-stage
grid) the stride-4 features separate objects from background far better (a linear probe on
frozen EfficientNet-Lite0 features: fg/bg cell mIoU 0.71 at stride 4 against 0.48 at stride 16).
The image is split into a foreground and a background embedding

    fg = Σ_hw P·F / (h·w),   bg = Σ_hw (1 − P)·F / (h·w)      (B, C)

which the contrastive losses (:mod:`pnoc.saliency.losses`) pull and push across the batch.

The bi-partition is symmetric: training may end with P high on the background. The
``inverted`` buffer (saved in the state dict, hence in checkpoints) records that; it is set
after training by comparing the saliency with the CAM hints
(:func:`pnoc.saliency.training.fix_orientation`) and :meth:`CCAMNet.saliency` then returns
1 − P. ``forward`` always returns the raw partition.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from pnoc.models.backbones import (
    ModelSpec,
    build_backbone,
    load_model_checkpoint,
    load_spec_model,
)
from pnoc.models.base import BackboneNet, resize_bilinear

ARCH = "ccam"
FEATURES = ("out", "low")


class Disentangler(nn.Module):
    """3×3 conv (C -> 1, no bias) + BatchNorm2d(1): features (B, C, h, w) -> logits (B, 1, h, w)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(1)
        nn.init.kaiming_normal_(self.conv.weight)

    def forward(self, feats: Tensor) -> Tensor:
        return self.bn(self.conv(feats))


class CCAMNet(BackboneNet, arch=ARCH):
    """CCAM saliency network.

    Args:
        backbone_name: a timm model name (``resnet50``, ``resnest269e``, ``efficientnet_lite0`` ...;
            see :func:`pnoc.models.backbones.build_backbone`).
        weights: backbone weights, see :func:`pnoc.models.backbones.build_backbone`.
        output_stride: 8, 16 or 32.

    :meth:`param_groups` treats the disentangler as the head (its BatchNorm shift is the head
    bias).
    """

    def __init__(
        self,
        backbone_name: str,
        *,
        weights: str | None = None,
        output_stride: int = 16,
        features: str = "out",
    ) -> None:
        super().__init__()
        if features not in FEATURES:
            raise ValueError(f"features: expected one of {FEATURES}, got {features!r}")
        self.backbone = build_backbone(backbone_name, weights=weights, output_stride=output_stride)
        self._features = "out"
        self.features = features
        channels = self.backbone.out_channels if features == "out" else self.backbone.low_channels
        self.head = Disentangler(channels)
        self.register_buffer("inverted", torch.tensor(False))

    @property
    def features(self) -> str:
        """``"out"`` or ``"low"``. With ``"low"`` the backbone's deeper stages are neither run
        nor trained (their parameters do not require gradients: they would get none)."""
        return self._features

    @features.setter
    def features(self, value: str) -> None:
        if value not in FEATURES:
            raise ValueError(f"features: expected one of {FEATURES}, got {value!r}")
        self._features = value
        for module in self.backbone.deep_modules():
            module.requires_grad_(value != "low")

    @property
    def output_width(self) -> int:
        return 1

    @property
    def is_inverted(self) -> bool:
        return bool(self.inverted.item())

    def set_inverted(self, flag: bool) -> None:
        """Record whether P is high on the background (then :meth:`saliency` returns 1 − P)."""
        self.inverted.fill_(bool(flag))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, 3, H, W) normalised -> (fg (B, C), bg (B, C), logits z (B, 1, h, w)).

        h, w = ⌈H/os⌉, ⌈W/os⌉ (``features="out"``) or ⌈H/4⌉, ⌈W/4⌉ (``"low"``). The embeddings
        are float32 (pooled under autocast in full precision); the orientation flag is not
        applied here.
        """
        feats = self.backbone(x, low_only=self.features == "low")[self.features]
        logits = self.head(feats)
        b, c, h, w = feats.shape
        p = torch.sigmoid(logits.float()).reshape(b, 1, h * w)
        f = feats.float().reshape(b, c, h * w)
        fg = (p * f).sum(-1) / (h * w)
        bg = ((1.0 - p) * f).sum(-1) / (h * w)
        return fg, bg, logits

    def saliency(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """x (B, 3, H, W) -> foreground probability (B, 1, *size) float32 in [0, 1].

        ``size`` defaults to the input's (H, W); P is upsampled bilinearly. The orientation
        flag is applied (1 − P when ``inverted``). Mode and gradients are the caller's.
        """
        _, _, logits = self(x)
        sal = torch.sigmoid(logits.float())
        out_size = tuple(x.shape[-2:]) if size is None else (int(size[0]), int(size[1]))
        if tuple(sal.shape[-2:]) != out_size:
            sal = resize_bilinear(sal, out_size)
        return torch.where(self.inverted, 1.0 - sal, sal)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, expected_backbone: str | None = None) -> CCAMNet:
        """Rebuild a CCAMNet saved with :func:`pnoc.models.backbones.save_model` (on CPU).

        The feature level is read off the disentangler's input width in the saved weights.
        """
        state, _ = load_model_checkpoint(path, expected_backbone=expected_backbone)
        head = state.get("head.conv.weight")
        in_channels = int(head.shape[1]) if head is not None else -1

        def build(spec: ModelSpec) -> CCAMNet:
            model = cls(spec.backbone, output_stride=spec.output_stride)
            if in_channels == model.backbone.low_channels != model.backbone.out_channels:
                model.features = "low"
                model.head = Disentangler(in_channels)
            return model

        return load_spec_model(path, ARCH, build, expected_backbone=expected_backbone)


__all__ = ["ARCH", "FEATURES", "CCAMNet", "Disentangler"]
