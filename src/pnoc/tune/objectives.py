"""Sweep objectives: train with a trial's typed params, report metrics after every epoch.

Both objectives run the stages' own library calls (:mod:`pnoc.steps`: ``train_saliency``,
``train_cam``; for evaluation ``saliency``, ``cams``, ``train_affinity`` and ``pseudo_masks``)
with an epoch-end callback that evaluates the network being trained and calls
``report(metrics)``; a scheduler such as ASHA may then stop the
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
  labels and walks the CAMs after every epoch, through the ``train_affinity`` and
  ``pseudo_masks`` stages' library calls, and reports ``pseudo_mask_miou``.

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

import torch
from torch import nn

from pnoc.cam.export import cam_path
from pnoc.config import Params
from pnoc.data.factory import open_dataset
from pnoc.engine import Callback, Runtime, rng_state, set_rng_state
from pnoc.errors import DatasetError, PnocError
from pnoc.models.cam import CAMNet
from pnoc.models.ccam import CCAMNet
from pnoc.saliency.training import HintSet, fix_orientation
from pnoc.steps import cams, saliency, train_cam, train_saliency
from pnoc.tune.settings import CAM_METRICS, PROXY_METRICS
from pnoc.tune.trial_metrics import proxy_metrics, pseudo_mask_miou

log = logging.getLogger(__name__)

Report = Callable[[dict[str, float]], None]


def trial_runtime(params: Params, device: str, **changes: Any) -> Runtime:
    """A sweep trial's run settings: ``base`` of its params on ``device``, no progress bars."""
    return Runtime.from_params(params.base, device=device, progress=False, **changes)


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


class _SaliencyProbe(Callback):
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
        runtime: Runtime,
        report: Report,
        orientation_images: int,
    ) -> None:
        self.tap, self.params, self.train, self.dataset = tap, params, train, dataset
        self.cam_dir, self.objective, self.runtime = cam_dir, objective, runtime
        self.report, self.orientation_images = report, orientation_images
        self.last: dict[str, float] = {}

    def on_epoch_end(self, ctx: Any, metrics: Mapping[str, float]) -> None:
        model = self.tap.get()
        assert isinstance(model, CCAMNet)
        s = self.params.saliency
        datasets = {self.dataset.split: self.dataset}
        if self.objective == "pseudo_masks":
            datasets.setdefault(self.train.split, self.train)
        rng = rng_state()
        inverted = model.is_inverted
        try:
            # Orientation as the train_saliency step fixes it after training; restored below.
            fix_orientation(
                model,
                HintSet(self.train, self.cam_dir),
                delta_fg=s.delta_fg,
                max_images=self.orientation_images,
            )
            with tempfile.TemporaryDirectory(prefix="pnoc-sweep-") as work:
                saliency_dir = Path(work) / "saliency"
                saliency.run(
                    model,
                    datasets,
                    saliency_dir,
                    self.runtime,
                    threshold=s.threshold,
                    flip=s.flip,
                    eval_split=self.dataset.split,
                )
                out = _epoch_metrics(ctx.epoch + 1, metrics)
                out.update(proxy_metrics(self.dataset, self.cam_dir, saliency_dir, self.params))
                if self.objective == "pseudo_masks":
                    out["pseudo_mask_miou"] = pseudo_mask_miou(
                        self.params,
                        self.train,
                        self.dataset,
                        self.cam_dir,
                        saliency_dir,
                        self.runtime,
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
    tap = ModuleTap(CCAMNet)
    probe = _SaliencyProbe(
        tap,
        params,
        train,
        dataset,
        cam_dir,
        objective=objective,
        runtime=trial_runtime(params, device),
        report=report,
        orientation_images=orientation_images,
    )
    with tap:
        train_saliency.run(
            params.saliency,
            train,
            cam_dir,
            trial_runtime(params, device, callbacks=[probe]),
            image_size=params.data.image_size,
            orientation_images=orientation_images,
        )
    return probe.last


# --------------------------------------------------------------------------------------------
# Adversarial sweep


class _CamProbe(Callback):
    """Epoch-end callback of the adversarial sweep: CAMs of the eval split at ``scales``,
    scored at their best background threshold (the ``cams`` stage's library call)."""

    def __init__(
        self,
        tap: ModuleTap,
        params: Params,
        dataset: Any,
        *,
        scales: Sequence[float],
        runtime: Runtime,
        report: Report,
    ) -> None:
        self.tap, self.params, self.dataset = tap, params, dataset
        self.scales, self.runtime, self.report = scales, runtime, report
        self.last: dict[str, float] = {}

    def on_epoch_end(self, ctx: Any, metrics: Mapping[str, float]) -> None:
        model = self.tap.get()
        assert isinstance(model, CAMNet)
        rng = rng_state()
        try:
            with tempfile.TemporaryDirectory(prefix="pnoc-sweep-cams-") as cam_dir:
                sweep = cams.run(
                    model,
                    {self.dataset.split: self.dataset},
                    cam_dir,
                    self.runtime,
                    scales=self.scales,
                    flip=self.params.cams.flip,
                    thresholds=self.params.cams.thresholds.values(),
                )[self.dataset.split]
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
        tap, params, evaluation, scales=scales, runtime=trial_runtime(params, device), report=report
    )
    with tap:
        train_cam.run(
            params.cam,
            train,
            trial_runtime(params, device, callbacks=[probe]),
            image_size=params.data.image_size,
            oc=oc,
        )
    return probe.last


__all__ = [
    "CAM_METRICS",
    "PROXY_METRICS",
    "ModuleTap",
    "adversarial_objective",
    "check_cams",
    "saliency_objective",
]
