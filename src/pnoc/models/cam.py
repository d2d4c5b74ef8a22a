"""The CAM classifier: backbone -> 1×1 conv (no bias) -> K class activation maps.

Logits are the global average of the maps (equivalently the 1×1 conv applied to pooled
features), so the maps are exactly the class evidence the classifier scores with.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from pnoc.errors import ConfigError
from pnoc.models.backbones import build_backbone
from pnoc.models.base import BackboneNet

ARCH = "camnet"


class CAMNet(BackboneNet, arch=ARCH):
    """CAM network.

    Args:
        backbone_name: a timm model name (``resnet50``, ``resnest269e``, ``efficientnet_lite0`` ...;
            see :func:`pnoc.models.backbones.build_backbone`).
        num_classes: K, the number of foreground classes (background is not a class here).
        weights: backbone weights, see :func:`pnoc.models.backbones.build_backbone`.
        output_stride: 8, 16 or 32.
        frozen_stages: backbone stages kept fixed (0 none, 1 stem, 2 stem and the stride-4
            stage; see :mod:`pnoc.models.freezing`).
    """

    def __init__(
        self,
        backbone_name: str,
        num_classes: int,
        *,
        weights: str | None = None,
        output_stride: int = 16,
        frozen_stages: int = 0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes: expected >= 1, got {num_classes}")
        self.backbone = build_backbone(backbone_name, weights=weights, output_stride=output_stride)
        self.backbone.freeze_stages(frozen_stages)
        self.classifier = nn.Conv2d(self.backbone.out_channels, num_classes, 1, bias=False)
        nn.init.kaiming_normal_(self.classifier.weight)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 3, H, W) normalised image -> class maps (B, K, ⌈H/os⌉, ⌈W/os⌉), pre-ReLU."""
        return self.classifier(self.backbone(x)["out"])

    @staticmethod
    def logits(maps: Tensor) -> Tensor:
        """Global average pooling of the maps: (B, K, h, w) -> (B, K)."""
        return maps.mean((2, 3))

    def forward_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x -> (logits (B, K), maps (B, K, h, w))."""
        maps = self(x)
        return self.logits(maps), maps


def copy_camnet(model: CAMNet) -> CAMNet:
    """An independent copy (same spec, same weights, same device), e.g. the noc from the OC."""
    return copy.deepcopy(model)


__all__ = ["ARCH", "CAMNet", "copy_camnet"]
