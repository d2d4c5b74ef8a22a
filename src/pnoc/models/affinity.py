"""AffinityNet: a stride-4 embedding whose L1 distances give pairwise affinities.

Features of the backbone's stride-4 stage and of its last stage (upsampled) are projected,
concatenated and fused by a 1×1 conv into ``dim`` channels f. The affinity of pixels i and j is
``exp(−mean_c |f_i − f_j|)`` (Ahn & Kwak, CVPR 2018), computed for neighbours within a radius
by :mod:`pnoc.refine.random_walk`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pnoc.models.backbones import ModelSpec, build_backbone
from pnoc.models.base import BackboneNet, resize_bilinear

ARCH = "affinitynet"


class AffinityNet(BackboneNet, arch=ARCH):
    """Backbone + two projections + a fusion conv -> (B, dim, ⌈H/4⌉, ⌈W/4⌉) embedding.

    :meth:`param_groups`: backbone at lr × 1, the projection and fusion heads at × 10 (biases
    × 2). Checkpoints record the embedding width ``dim`` as ``num_classes``.
    """

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
    def output_width(self) -> int:
        return self.dim

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)
        low = self.proj_low(feats["low"])
        out = resize_bilinear(self.proj_out(feats["out"]), low.shape[-2:])
        return self.fuse(torch.cat([low, out], dim=1))

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> AffinityNet:
        return cls(spec.backbone, output_stride=spec.output_stride, dim=spec.num_classes)
