"""AffinityNet: a stride-4 embedding whose L1 distances give pairwise affinities.

Features of the backbone's stride-4 stage and of its last stage (upsampled) are projected,
concatenated and fused by a 1×1 conv into ``dim`` channels f. The affinity of pixels i and j is
``exp(−mean_c |f_i − f_j|)`` (Ahn & Kwak, CVPR 2018), computed for neighbours within a radius
by :mod:`pnoc.refine.random_walk`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pnoc.models.backbones import ModelSpec, backbone_head_groups, build_backbone, load_spec_model

ARCH = "affinitynet"


class AffinityNet(nn.Module):
    """Backbone + two projections + a fusion conv -> (B, dim, ⌈H/4⌉, ⌈W/4⌉) embedding."""

    def __init__(
        self,
        backbone_name: str,
        *,
        weights: str | None = None,
        output_stride: int = 16,
        dim: int = 128,
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone_name, weights=weights, output_stride=output_stride)
        low, out = self.backbone.low_channels, self.backbone.out_channels
        self.proj_low = nn.Sequential(
            nn.Conv2d(low, 64, 1, bias=False), nn.GroupNorm(4, 64), nn.ReLU(inplace=True)
        )
        self.proj_out = nn.Sequential(
            nn.Conv2d(out, 128, 1, bias=False), nn.GroupNorm(8, 128), nn.ReLU(inplace=True)
        )
        self.fuse = nn.Conv2d(64 + 128, dim, 1)
        self.dim = dim

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(
            arch=ARCH,
            backbone=self.backbone.name,
            num_classes=self.dim,  # the embedding width plays the role of the output size
            output_stride=self.backbone.output_stride,
        )

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)
        low = self.proj_low(feats["low"])
        out = F.interpolate(
            self.proj_out(feats["out"]), size=low.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.fuse(torch.cat([low, out], dim=1))

    def param_groups(self) -> list[dict[str, Any]]:
        """Backbone at lr × 1, the projection and fusion heads at × 10 (biases × 2)."""
        return backbone_head_groups(self)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, expected_backbone: str | None = None):
        return load_spec_model(
            path,
            ARCH,
            lambda s: cls(s.backbone, output_stride=s.output_stride, dim=s.num_classes),
            expected_backbone=expected_backbone,
        )
