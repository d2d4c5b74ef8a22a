"""DeepLabV3+ (Chen et al., ECCV 2018) on the shared timm backbones.

ASPP (1×1, three atrous 3×3 convs, image pooling) on the backbone's last stage, then a decoder
that upsamples to stride 4, concatenates the projected stride-4 features (48 channels) and
refines with two 3×3 convs before the classifier; logits are upsampled to the input size.
Atrous rates are (6, 12, 18) at output stride 16 and doubled at 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pnoc.errors import ConfigError
from pnoc.models.backbones import build_backbone
from pnoc.models.base import BackboneNet, resize_bilinear

ARCH = "deeplabv3plus"


def _conv_bn_relu(cin: int, cout: int, k: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = 0 if k == 1 else dilation
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int, rates: tuple[int, int, int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(cin, cout)] + [_conv_bn_relu(cin, cout, 3, r) for r in rates]
        )
        # Image pooling without BatchNorm: it sees one value per image and channel, which
        # BatchNorm cannot normalise at batch size 1.
        self.pool = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(_conv_bn_relu(5 * cout, cout), nn.Dropout(0.1))

    def forward(self, x: Tensor) -> Tensor:
        outs = [b(x) for b in self.branches]
        pooled = self.pool(F.adaptive_avg_pool2d(x, 1))
        outs.append(pooled.expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3Plus(BackboneNet, arch=ARCH):
    """Segmentation network: (B, 3, H, W) normalised -> logits (B, num_classes, H, W).

    ``num_classes`` counts background (VOC: 21). :meth:`param_groups`: backbone at lr × 1,
    ASPP/decoder/classifier at × 10 (biases × 2).
    """

    def __init__(
        self,
        backbone_name: str,
        num_classes: int,
        *,
        weights: str | None = None,
        output_stride: int = 16,
        aspp_channels: int = 256,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(
                f"num_classes: expected >= 2 (background + classes), got {num_classes}"
            )
        if output_stride not in (8, 16):
            raise ConfigError(f"segmentation.output_stride: expected 8 or 16, got {output_stride}")
        self.backbone = build_backbone(backbone_name, weights=weights, output_stride=output_stride)
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.aspp = ASPP(self.backbone.out_channels, aspp_channels, rates)
        self.low_proj = _conv_bn_relu(self.backbone.low_channels, 48)
        self.decoder = nn.Sequential(
            _conv_bn_relu(aspp_channels + 48, 256, 3),
            _conv_bn_relu(256, 256, 3),
        )
        self.classifier = nn.Conv2d(256, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)
        low = self.low_proj(feats["low"])
        high = resize_bilinear(self.aspp(feats["out"]), low.shape[-2:])
        logits = self.classifier(self.decoder(torch.cat([high, low], dim=1)))
        return resize_bilinear(logits, x.shape[-2:])
