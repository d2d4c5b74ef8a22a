"""Sweep objectives: train with a trial's typed params, report metrics after every epoch.

Both objectives run the library's own recipes (:func:`~pnoc.saliency.training.train_c2amh`,
:func:`~pnoc.cam.training.train_cam_classifier`) with an epoch-end callback that evaluates the
network being trained and calls ``report(metrics)``; a scheduler such as ASHA may then stop the
trial between epochs. The callback saves and restores every global RNG (and the saliency's
orientation flag) around its work, so evaluating does not change what the trial trains.

Saliency sweep — metrics on ``pseudo_masks.split`` (ground truth needed; WSSS papers tune and
report pseudo-mask quality on train):

* ``proxy`` (default, cheap: one saliency pass per epoch) reports :data:`PROXY_METRICS`. The
  headline ``cam_saliency_miou`` scores the mask "argmax of the image's CAMs where saliency ≥
  ``saliency.threshold``, background elsewhere". δfg and λh act on the pseudo-masks only
  through the saliency map, whose job downstream is to decide *where the objects end*: it sets
  the affinity labels' background, from which AffinityNet learns where the walk must stop,
  while the classes come from the CAMs. This mask combines exactly those two roles without
  the AffinityNet and the walk, so it ranks saliency maps by what they give the pseudo-masks
  at a fraction of the cost. It ignores the affinity thresholds; the affinity-label metrics
  (``affinity_label_miou``, ``affinity_precision``, ``affinity_confident_share``) use them.
* ``pseudo_masks`` (the real target, slow) also trains AffinityNet on the trial's affinity
  labels and walks the CAMs after every epoch, as the ``train_affinity`` and ``pseudo_masks``
  stages do, and reports ``pseudo_mask_miou``.

Adversarial sweep — ``cam_miou``: after every epoch the generator's CAMs of
``cams.eval_split`` are computed at scale 1.0 only (with ``cams.flip``; the stage's 4-scale
inference costs ~15× more) and scored at their best background threshold of
``cams.thresholds``. Multi-scale CAMs score higher, but the ranking between trials is what the
sweep needs.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pnoc.cam.export import cam_path, evaluate_cams, export_cams
from pnoc.cam.inference import load_cam_npz
from pnoc.cam.training import train_cam_classifier
from pnoc.config import Params
from pnoc.data.factory import open_dataset
from pnoc.data.transforms import eval_transform
from pnoc.data.voc import write_mask_png
from pnoc.engine import rng_state, set_rng_state
from pnoc.errors import DatasetError, PnocError
from pnoc.metrics import ConfusionMatrix, iou_from_confusion
from pnoc.models.cam import CAMNet
from pnoc.models.ccam import CCAMNet
from pnoc.refine.affinity import train_affinity
from pnoc.refine.affinity_labels import IGNORE, make_affinity_labels
from pnoc.refine.pseudo_masks import cam_fallback_mask, saliency_gate, walk_pseudo_mask
from pnoc.saliency.inference import predict_saliency, saliency_confusion
from pnoc.saliency.training import HintSet, fix_orientation, train_c2amh
from pnoc.tune.settings import CAM_METRICS, PROXY_METRICS

log = logging.getLogger(__name__)

Report = Callable[[dict[str, float]], None]


class ModuleTap(AbstractContextManager["ModuleTap"]):
    """Catch the network a library recipe builds internally, to evaluate it between epochs.

    While active, a global forward pre-hook records the first module of type ``cls`` that runs
    a *training* forward (train mode, gradients on, trainable parameters): the network being
    trained. Frozen judges (the OC of OC-CSE / P-OC, P-NOC's noc during the generator step)
    fail that test, and every recipe forwards its trained network first in a step.
    """

    def __init__(self, cls: type[nn.Module]) -> None:
        self.cls = cls
        self.module: nn.Module | None = None
        self._handle: Any = None

    def _hook(self, module: nn.Module, args: Any) -> None:
        if (
            self.module is None
            and isinstance(module, self.cls)
            and module.training
            and torch.is_grad_enabled()
            and any(p.requires_grad for p in module.parameters())
        ):
            self.module = module
            self._remove()

    def _remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> ModuleTap:
        self._handle = nn.modules.module.register_module_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def get(self) -> nn.Module:
        if self.module is None:
            raise PnocError(f"no {self.cls.__name__} has run a training step yet")
        return self.module


def _epoch_metrics(epoch: int, train_means: Mapping[str, float]) -> dict[str, float]:
    out = {"epoch": float(epoch)}
    out.update({f"train/{k}": float(v) for k, v in train_means.items()})
    return out


def check_cams(dataset: Any, cam_dir: str | Path) -> None:
    """Every image of ``dataset`` has its CAM file, or a DatasetError naming the first missing."""
    for image_id in dataset.ids:
        path = cam_path(cam_dir, image_id)
        if not path.is_file():
            raise DatasetError(
                path,
                f"CAM file of split '{dataset.split}' not found (run `dvc repro cams` with "
                f"'{dataset.split}' in cams.splits)",
            )


# --------------------------------------------------------------------------------------------
# Saliency sweep


def saliency_maps(model: CCAMNet, dataset: Any, *, flip: bool) -> dict[str, np.ndarray]:
    """(H, W) float32 saliency per image id, quantised to 8 bits as the saliency stage stores it."""
    transform = eval_transform()
    device = next(model.parameters()).device
    out = {}
    for image_id in dataset.ids:
        x, _ = transform(dataset.load_image(image_id), None, np.random.default_rng(0))
        sal = predict_saliency(model, torch.as_tensor(x).to(device), flip=flip)
        out[image_id] = (np.rint(sal * 255.0) / 255.0).astype(np.float32)
    return out


def cam_saliency_mask(cams: np.ndarray, classes: np.ndarray, sal: np.ndarray, threshold: float):
    """The proxy pseudo-mask: CAM argmax where saliency ≥ ``threshold``, background elsewhere."""
    mask = np.zeros(sal.shape, dtype=np.uint8)
    if len(classes):
        lut = np.asarray(classes, dtype=np.uint8)
        fg = sal >= threshold
        mask[fg] = lut[np.asarray(cams, dtype=np.float32).argmax(axis=0)][fg]
    return mask


def proxy_metrics(
    dataset: Any, cam_dir: str | Path, saliency: Mapping[str, np.ndarray], params: Params
) -> dict[str, float]:
    """:data:`PROXY_METRICS` of saliency maps (by image id) with the CAMs of ``cam_dir``."""
    n = len(dataset.class_names)
    proxy, labels_cm = ConfusionMatrix(n), ConfusionMatrix(n)
    sal_counts = np.zeros((2, 2), dtype=np.int64)
    confident = correct = total = 0
    for image_id in dataset.ids:
        gt = dataset.load_mask(image_id)
        if gt is None:
            raise DatasetError(dataset.mask_path(image_id), "no ground truth to score the sweep")
        cams, classes = load_cam_npz(cam_path(cam_dir, image_id))
        sal = saliency[image_id]
        proxy.update(cam_saliency_mask(cams, classes, sal, params.saliency.threshold), gt)
        sal_counts += saliency_confusion(sal, gt, params.saliency.threshold)
        labels = make_affinity_labels(
            cams,
            classes,
            sal,
            fg_threshold=params.affinity.fg_threshold,
            bg_threshold=params.affinity.bg_threshold,
            fg_saliency=params.affinity.fg_saliency,
        )
        known = (labels != IGNORE) & (gt != IGNORE)
        labels_cm.update(labels[known], gt[known])
        confident += int((labels != IGNORE).sum())
        correct += int((labels[known] == gt[known]).sum())
        total += labels.size
    label_miou = labels_cm.miou() if labels_cm.matrix.sum() else 0.0
    return {
        "cam_saliency_miou": proxy.miou(),
        "saliency_miou": float(np.nanmean(iou_from_confusion(sal_counts))),
        "affinity_label_miou": float(label_miou),
        "affinity_precision": correct / max(confident, 1),
        "affinity_confident_share": confident / max(total, 1),
    }


def pseudo_mask_miou(
    params: Params,
    train: Any,
    dataset: Any,
    cam_dir: str | Path,
    saliency: Mapping[str, np.ndarray],
    *,
    device: str,
    work_dir: str | Path,
) -> float:
    """The full objective: AffinityNet on the affinity labels of ``train``, then the walk.

    Mirrors the ``train_affinity`` and ``pseudo_masks`` stages (labels, training, walk,
    background threshold, optional CRF, the saliency gate with ``background: saliency``, CAM
    fallback for images without a confident pixel)
    and returns the mIoU of the walked masks of ``dataset`` against its ground truth.
    ``saliency`` must hold the maps of both datasets' images.
    """
    a = params.affinity
    label_dir = Path(work_dir) / "affinity_labels"
    label_dir.mkdir(parents=True, exist_ok=True)
    confident: dict[str, bool] = {}
    for ds in (train, dataset):
        for image_id in ds.ids:
            if image_id in confident:
                continue
            cams, classes = load_cam_npz(cam_path(cam_dir, image_id))
            labels = make_affinity_labels(
                cams,
                classes,
                saliency[image_id],
                fg_threshold=a.fg_threshold,
                bg_threshold=a.bg_threshold,
                fg_saliency=a.fg_saliency,
            )
            confident[image_id] = bool((labels != IGNORE).any())
            if ds is train:
                write_mask_png(label_dir / f"{image_id}.png", labels)
    model, _ = train_affinity(
        a,
        train,
        label_dir,
        image_size=params.data.image_size,
        seed=params.base.seed,
        device=device,
        amp=params.base.amp,
        progress=False,
    )
    model = model.to(device).eval()
    cfg = params.pseudo_masks
    cm = ConfusionMatrix(len(dataset.class_names))
    for image_id in dataset.ids:
        cams, classes = load_cam_npz(cam_path(cam_dir, image_id))
        sal = saliency[image_id] if cfg.background == "saliency" else None
        if not confident[image_id]:
            mask = saliency_gate(
                cam_fallback_mask(cams, classes, cfg.bg_threshold), sal, params.saliency.threshold
            )
        else:
            mask = walk_pseudo_mask(
                model,
                dataset.load_image(image_id),
                cams,
                classes,
                cfg,
                device=device,
                saliency=sal,
                saliency_threshold=params.saliency.threshold,
            )
        gt = dataset.load_mask(image_id)
        if gt is not None:
            cm.update(np.where(mask == IGNORE, 0, mask), gt)
    return cm.miou()


class _SaliencyProbe:
    """Epoch-end callback of the saliency sweep (see the module docstring)."""

    def __init__(
        self,
        tap: ModuleTap,
        params: Params,
        train: Any,
        dataset: Any,
        cam_dir: Path,
        *,
        objective: str,
        device: str,
        report: Report,
        orientation_images: int,
    ) -> None:
        self.tap, self.params, self.train, self.dataset = tap, params, train, dataset
        self.cam_dir, self.objective, self.device = cam_dir, objective, device
        self.report, self.orientation_images = report, orientation_images
        self.last: dict[str, float] = {}

    def on_step_end(self, ctx: Any, metrics: Mapping[str, float]) -> None:
        return None

    def on_train_end(self, ctx: Any) -> None:
        return None

    def on_epoch_end(self, ctx: Any, metrics: Mapping[str, float]) -> None:
        model = self.tap.get()
        assert isinstance(model, CCAMNet)
        s = self.params.saliency
        rng = rng_state()
        inverted = model.is_inverted
        try:
            # Orientation as train_c2amh fixes it after training; restored below.
            fix_orientation(
                model,
                HintSet(self.train, self.cam_dir),
                delta_fg=s.delta_fg,
                max_images=self.orientation_images,
            )
            sal = saliency_maps(model, self.dataset, flip=s.flip)
            if self.objective == "pseudo_masks" and not set(self.train.ids) <= set(sal):
                sal |= saliency_maps(model, self.train, flip=s.flip)
            out = _epoch_metrics(ctx.epoch + 1, metrics)
            out.update(proxy_metrics(self.dataset, self.cam_dir, sal, self.params))
            if self.objective == "pseudo_masks":
                with tempfile.TemporaryDirectory(prefix="pnoc-sweep-") as work:
                    out["pseudo_mask_miou"] = pseudo_mask_miou(
                        self.params,
                        self.train,
                        self.dataset,
                        self.cam_dir,
                        sal,
                        device=self.device,
                        work_dir=work,
                    )
        finally:
            model.set_inverted(inverted)
            set_rng_state(rng)
        self.last = out
        self.report(out)


def saliency_objective(
    params: Params,
    cam_dir: str | Path,
    *,
    report: Report,
    objective: str = "proxy",
    device: str = "cpu",
    progress: bool = False,
    orientation_images: int = 64,
) -> dict[str, float]:
    """Train C²AM-H with ``params`` on the CAMs of ``cam_dir``; ``report`` after every epoch.

    Returns the last epoch's metrics (:data:`PROXY_METRICS`, plus ``pseudo_mask_miou`` for the
    ``pseudo_masks`` objective, ``epoch`` and the epoch's mean training losses as ``train/*``).
    """
    if objective not in ("proxy", "pseudo_masks"):
        raise PnocError(f"saliency objective '{objective}': expected proxy or pseudo_masks")
    cam_dir = Path(cam_dir)
    train = open_dataset(params.data, params.data.train_split)
    dataset = open_dataset(params.data, params.pseudo_masks.split)
    check_cams(train, cam_dir)
    check_cams(dataset, cam_dir)
    s = params.saliency
    tap = ModuleTap(CCAMNet)
    probe = _SaliencyProbe(
        tap,
        params,
        train,
        dataset,
        cam_dir,
        objective=objective,
        device=device,
        report=report,
        orientation_images=orientation_images,
    )
    with tap:
        train_c2amh(
            s,
            train,
            cam_dir,
            image_size=params.data.image_size,
            seed=params.base.seed,
            device=device,
            amp=params.base.amp,
            num_workers=params.base.num_workers,
            callbacks=[probe],
            progress=progress,
            orientation_images=orientation_images,
        )
    return probe.last


# --------------------------------------------------------------------------------------------
# Adversarial sweep


class _CamProbe:
    """Epoch-end callback of the adversarial sweep: scale-1.0 CAMs of the eval split, scored."""

    def __init__(
        self,
        tap: ModuleTap,
        dataset: Any,
        thresholds: Sequence[float],
        *,
        scales: Sequence[float],
        flip: bool,
        device: str,
        report: Report,
    ) -> None:
        self.tap, self.dataset, self.thresholds = tap, dataset, thresholds
        self.scales, self.flip, self.device, self.report = scales, flip, device, report
        self.last: dict[str, float] = {}

    def on_step_end(self, ctx: Any, metrics: Mapping[str, float]) -> None:
        return None

    def on_train_end(self, ctx: Any) -> None:
        return None

    def on_epoch_end(self, ctx: Any, metrics: Mapping[str, float]) -> None:
        model = self.tap.get()
        rng = rng_state()
        try:
            with tempfile.TemporaryDirectory(prefix="pnoc-sweep-cams-") as cam_dir:
                export_cams(
                    model,  # type: ignore[arg-type]
                    self.dataset,
                    cam_dir,
                    scales=self.scales,
                    flip=self.flip,
                    device=self.device,
                    progress=False,
                )
                sweep = evaluate_cams(self.dataset, cam_dir, self.thresholds)
        finally:
            set_rng_state(rng)
        out = _epoch_metrics(ctx.epoch + 1, metrics)
        out.update({"cam_miou": sweep.best_miou, "cam_best_threshold": sweep.best_threshold})
        self.last = out
        self.report(out)


def adversarial_objective(
    params: Params,
    oc: CAMNet,
    *,
    report: Report,
    device: str = "cpu",
    progress: bool = False,
    scales: Sequence[float] = (1.0,),
) -> dict[str, float]:
    """Train the CAM generator (``params.cam``) from the ordinary classifier ``oc``.

    After every epoch ``report`` gets :data:`CAM_METRICS` (CAM mIoU on ``cams.eval_split`` at
    the best threshold, CAMs at ``scales``), ``epoch`` and the epoch's mean losses
    (``train/*``). Returns the last epoch's metrics.
    """
    train = open_dataset(params.data, params.data.train_split)
    evaluation = open_dataset(params.data, params.cams.eval_split)
    tap = ModuleTap(CAMNet)
    probe = _CamProbe(
        tap,
        evaluation,
        params.cams.thresholds.values(),
        scales=scales,
        flip=params.cams.flip,
        device=device,
        report=report,
    )
    with tap:
        train_cam_classifier(
            params.cam,
            train,
            image_size=params.data.image_size,
            seed=params.base.seed,
            oc=oc,
            device=device,
            amp=params.base.amp,
            num_workers=params.base.num_workers,
            callbacks=[probe],
            progress=progress,
        )
    return probe.last


__all__ = [
    "CAM_METRICS",
    "PROXY_METRICS",
    "ModuleTap",
    "adversarial_objective",
    "cam_saliency_mask",
    "check_cams",
    "proxy_metrics",
    "pseudo_mask_miou",
    "saliency_maps",
    "saliency_objective",
]
