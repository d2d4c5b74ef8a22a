"""Assemble and train a CAM classifier (the OC or a generator) from typed params.

One function serves ``train_oc``, ``train_cam``, the ablation and the adversarial sweep, so the
recipe (transforms, parameter groups, optimizers, engine) is written once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pnoc.cam.methods import build_method
from pnoc.cam.schedules import Ramp
from pnoc.config import CamParams, ClassifierParams, OCParams
from pnoc.data.transforms import classification_train_transform
from pnoc.data.voc import ClassificationSet, collate
from pnoc.engine import CheckpointConfig, FitResult, build_sgd, fit
from pnoc.models.cam import CAMNet


@dataclass
class TrainedCAM:
    model: CAMNet
    noc: CAMNet | None
    result: FitResult


def fingerprint(*parts: Any) -> str:
    """Stable hash of the config a checkpoint belongs to (pydantic models or JSON-like values)."""
    norm = [p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts]
    return hashlib.sha256(json.dumps(norm, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_cam_classifier(
    cfg: ClassifierParams,
    dataset,
    *,
    image_size: int,
    seed: int,
    oc: CAMNet | None = None,
    device: str = "cpu",
    amp: bool = False,
    num_workers: int = 0,
    checkpoint: CheckpointConfig | None = None,
    callbacks: Sequence[Any] = (),
    progress: bool = True,
) -> TrainedCAM:
    """Train the ordinary classifier (``OCParams``: vanilla + RandAugment) or a generator.

    dataset: a reader (VOCDataset/COCODataset) of the training split.
    oc: the trained ordinary classifier, required by occse/poc/pnoc generators.
    """
    randaugment = None
    method_name = "vanilla"
    method_kw: dict[str, Any] = {}
    if isinstance(cfg, OCParams):
        randaugment = (cfg.randaugment.n, cfg.randaugment.m) if cfg.randaugment.n else None
    if isinstance(cfg, CamParams):
        method_name = cfg.method
        method_kw = dict(
            oc=oc.to(device) if oc is not None else None,
            alpha_p=Ramp.from_config(cfg.puzzle.alpha),
            alpha_oc=Ramp.from_config(cfg.occse.alpha),
            ow=Ramp.from_config(cfg.pnoc.ow),
            mask_threshold=cfg.pnoc.mask_threshold,
        )
    transform = classification_train_transform(
        image_size, randaugment, scale_range=tuple(cfg.scale_range)
    )
    train_set = ClassificationSet(dataset, transform)
    model = CAMNet(
        cfg.backbone,
        dataset.num_classes,
        weights=cfg.weights,
        output_stride=cfg.output_stride,
        frozen_stages=cfg.frozen_stages,
    )
    method = build_method(method_name, model, label_smoothing=cfg.label_smoothing, **method_kw)
    optimizers = {
        "generator": build_sgd(
            model.param_groups(), lr=cfg.lr, weight_decay=cfg.weight_decay, nesterov=True
        )
    }
    noc = method.modules().get("noc")
    if noc is not None:
        ratio = cfg.pnoc.lr_ratio  # type: ignore[attr-defined]
        optimizers["noc"] = build_sgd(
            noc.param_groups(), lr=cfg.lr * ratio, weight_decay=cfg.weight_decay, nesterov=True
        )
    result = fit(
        method,
        train_set,
        optimizers=optimizers,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        seed=seed,
        checkpoint=checkpoint,
        device=device,
        amp=amp,
        num_workers=num_workers,
        collate_fn=collate,
        callbacks=callbacks,
        progress=progress,
        max_steps_per_epoch=cfg.max_steps_per_epoch,
        channels_last=cfg.channels_last,
    )
    model.eval()
    return TrainedCAM(model=model, noc=noc, result=result)


def load_cam_model(path: str | Path, device: str = "cpu") -> CAMNet:
    model = CAMNet.from_checkpoint(path)
    return model.to(torch.device(device)).eval()
