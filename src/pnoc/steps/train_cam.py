"""Stages ``train_oc`` and ``train_cam``: a CAM classifier from typed params.

``OCParams`` trains the ordinary classifier (vanilla CAM + RandAugment + label smoothing);
``CamParams`` trains the CAM generator of ``cam.method`` (vanilla, puzzle, occse, poc, pnoc),
judged by (occse, poc) or adversarial against (pnoc, as the initial noc) the ordinary classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pnoc.cam.methods import build_method
from pnoc.cam.schedules import Ramp
from pnoc.config import CamParams, ClassifierParams, OCParams
from pnoc.data.torch_sets import ClassificationSet
from pnoc.data.transforms import classification_train_transform
from pnoc.engine import FitResult, Runtime, fit
from pnoc.models.cam import CAMNet
from pnoc.steps.training import sgd, train_data


@dataclass
class TrainedCAM:
    """model: the trained classifier (eval mode); noc: P-NOC's adversary (else None)."""

    model: CAMNet
    noc: CAMNet | None
    result: FitResult


def method_from_params(cfg: ClassifierParams, model: CAMNet, oc: CAMNet | None = None) -> Any:
    """The training method ``cfg`` describes around ``model``: vanilla for the OC's params,
    ``cam.method`` with its ramps, δ_noc, mask normalisation and noc BatchNorm mode for the
    generator's (``oc``: the trained ordinary classifier, for occse, poc and pnoc)."""
    if not isinstance(cfg, CamParams):
        return build_method("vanilla", model, label_smoothing=cfg.label_smoothing)
    return build_method(
        cfg.method,
        model,
        label_smoothing=cfg.label_smoothing,
        oc=oc,
        alpha_p=Ramp.from_config(cfg.puzzle.alpha),
        alpha_oc=Ramp.from_config(cfg.occse.alpha),
        ow=Ramp.from_config(cfg.pnoc.ow),
        mask_threshold=cfg.pnoc.mask_threshold,
        mask_norm=cfg.occse.mask_norm,
        noc_bn=cfg.pnoc.noc_bn,
    )


def run(
    cfg: ClassifierParams,
    dataset: Any,
    runtime: Runtime,
    *,
    image_size: int,
    oc: CAMNet | None = None,
) -> TrainedCAM:
    """Train the classifier ``cfg`` describes on ``dataset`` (a reader of the training split).

    image_size: the training crop (``data.image_size``).
    oc: the trained ordinary classifier, required by the occse, poc and pnoc generators.
    """
    runtime.seed_all()
    randaugment = None
    if isinstance(cfg, OCParams):
        randaugment = (cfg.randaugment.n, cfg.randaugment.m) if cfg.randaugment.n else None
    transform = classification_train_transform(
        image_size, randaugment, scale_range=tuple(cfg.scale_range)
    )
    model = CAMNet(
        cfg.backbone,
        dataset.num_classes,
        weights=cfg.weights,
        output_stride=cfg.output_stride,
        frozen_stages=cfg.frozen_stages,
    )
    method = method_from_params(cfg, model, oc.to(runtime.torch_device) if oc is not None else None)
    optimizers = {"generator": sgd(model, cfg)}
    noc = method.modules().get("noc")
    if noc is not None:
        ratio = cfg.pnoc.lr_ratio  # type: ignore[attr-defined]
        optimizers["noc"] = sgd(noc, cfg, lr=cfg.lr * ratio)
    data = train_data(ClassificationSet(dataset, transform), cfg)
    result = fit(method, data, optimizers, runtime.replace(channels_last=cfg.channels_last))
    model.eval()
    return TrainedCAM(model=model, noc=noc, result=result)
