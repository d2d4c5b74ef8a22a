"""Stage ``train_saliency``: C²AM-H, CCAM's class-agnostic fg/bg bi-partition trained with the
CAMs as hints (pixels whose max CAM is ≥ δfg supervised as foreground, < δbg as background,
weighted by λh), then the bi-partition's orientation fixed with the hints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pnoc.config import SaliencyParams
from pnoc.data.transforms import classification_train_transform
from pnoc.engine import FitResult, Runtime, fit
from pnoc.models.ccam import CCAMNet
from pnoc.saliency.losses import HINT_SMOOTHING
from pnoc.saliency.training import C2AMH, HintSet, OrientationCheck, fix_orientation
from pnoc.steps.training import sgd, train_data


@dataclass
class TrainedCCAM:
    model: CCAMNet
    result: FitResult
    orientation: OrientationCheck


def run(
    cfg: SaliencyParams,
    dataset: Any,
    cam_dir: str | Path,
    runtime: Runtime,
    *,
    image_size: int,
    orientation_images: int = 64,
) -> TrainedCCAM:
    """Train C²AM-H on ``dataset`` (a reader of the training split) with hints from ``cam_dir``.

    Augmentation: the CAM classifiers' pipeline (random resize of the long side to
    ``scale_range × image_size``, flip, colour jitter, ``image_size`` crop), applied jointly to
    image and hint. SGD (Nesterov, the 1/2/10/20 parameter groups, poly LR) through the engine.
    Afterwards the orientation is fixed on up to ``orientation_images`` un-augmented training
    images (:func:`~pnoc.saliency.training.fix_orientation`) and the model is returned in eval
    mode.
    """
    runtime.seed_all()
    transform = classification_train_transform(image_size, None, scale_range=tuple(cfg.scale_range))
    train_set = HintSet(dataset, cam_dir, transform)
    model = CCAMNet(
        cfg.backbone, weights=cfg.weights, output_stride=cfg.output_stride, features=cfg.features
    )
    method = C2AMH(
        model,
        alpha=cfg.alpha,
        delta_fg=cfg.delta_fg,
        delta_bg=cfg.delta_bg,
        lambda_h=cfg.lambda_h,
        smoothing=HINT_SMOOTHING,
    )
    optimizers = {"ccam": sgd(model, cfg)}
    result = fit(method, train_data(train_set, cfg), optimizers, runtime)
    model.eval()
    check = fix_orientation(
        model, HintSet(dataset, cam_dir), delta_fg=cfg.delta_fg, max_images=orientation_images
    )
    return TrainedCCAM(model=model, result=result, orientation=check)
