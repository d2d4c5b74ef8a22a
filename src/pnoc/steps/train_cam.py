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
    method_name = "vanilla"
    method_kw: dict[str, Any] = {}
    if isinstance(cfg, OCParams):
        randaugment = (cfg.randaugment.n, cfg.randaugment.m) if cfg.randaugment.n else None
    if isinstance(cfg, CamParams):
        method_name = cfg.method
        method_kw = dict(
            oc=oc.to(runtime.torch_device) if oc is not None else None,
            alpha_p=Ramp.from_config(cfg.puzzle.alpha),
            alpha_oc=Ramp.from_config(cfg.occse.alpha),
            ow=Ramp.from_config(cfg.pnoc.ow),
            mask_threshold=cfg.pnoc.mask_threshold,
            mask_norm=cfg.occse.mask_norm,
            noc_bn=cfg.pnoc.noc_bn,
        )
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
    method = build_method(method_name, model, label_smoothing=cfg.label_smoothing, **method_kw)
    optimizers = {"generator": sgd(model, cfg)}
    noc = method.modules().get("noc")
    if noc is not None:
        ratio = cfg.pnoc.lr_ratio  # type: ignore[attr-defined]
        optimizers["noc"] = sgd(noc, cfg, lr=cfg.lr * ratio)
    data = train_data(ClassificationSet(dataset, transform), cfg)
    result = fit(method, data, optimizers, runtime.replace(channels_last=cfg.channels_last))
    model.eval()
    return TrainedCAM(model=model, noc=noc, result=result)
