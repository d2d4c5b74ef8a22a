"""CAM training methods (vanilla CAM, Puzzle-CAM, OC-CSE, P-OC, P-NOC) as engine Methods.

Each method is the shared generator step of :class:`~pnoc.cam.generator.CAMMethod` with some of
its parts on (puzzle: α_p; an adversary judging erased images: α_oc); P-NOC adds the update of
its trainable adversary, the noc. :func:`build_method` builds one from plain values.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, get_args

import torch
from torch import nn

from pnoc.cam.generator import CAMMethod, FrozenClassifier, StepContext, to_floats
from pnoc.cam.losses import class_mask, gap, hard_erase, mlsm
from pnoc.cam.schedules import Ramp
from pnoc.config import CamParams, NocBatchNorm
from pnoc.errors import ConfigError
from pnoc.models.cam import CAMNet, copy_camnet

# Defaults of the knobs are params.yaml's (pnoc.config's defaults, which tests keep equal).
_CAM = CamParams()
SMOOTHING = _CAM.label_smoothing
MASK_THRESHOLD = _CAM.pnoc.mask_threshold
NOC_BATCHNORM: tuple[str, ...] = get_args(NocBatchNorm)

__all__ = [
    "METHODS",
    "OCCSE",
    "PNOC",
    "POC",
    "Puzzle",
    "VanillaCAM",
    "build_method",
]


class VanillaCAM(CAMMethod):
    """Plain CAM classifier: L = MLSM(gap(A), ỹ). Also trains the ordinary classifier (OC)."""

    name = "vanilla"

    def __init__(self, model: CAMNet, label_smoothing: float = SMOOTHING) -> None:
        super().__init__(model, label_smoothing=label_smoothing)


class Puzzle(CAMMethod):
    """Puzzle-CAM: L = L_cls + L_pcls + α_p(t)·L_re (the 4 tiles go through one 4B-batch pass)."""

    name = "puzzle"

    def __init__(self, model: CAMNet, alpha: Ramp, label_smoothing: float = SMOOTHING) -> None:
        super().__init__(model, label_smoothing=label_smoothing, alpha_p=alpha)


class OCCSE(CAMMethod):
    """OC-CSE: L = L_cls + α_oc(t)·L_oc against a frozen ordinary classifier ``oc``.

    The OC is wrapped in :class:`FrozenClassifier` (eval mode, no parameter gradients); the
    gradient of L_oc reaches the generator through the mask M.
    """

    name = "occse"

    def __init__(
        self,
        model: CAMNet,
        oc: CAMNet,
        alpha_oc: Ramp,
        label_smoothing: float = SMOOTHING,
        *,
        generator: torch.Generator | None = None,
        mask_norm: str = "image",
    ) -> None:
        super().__init__(
            model,
            label_smoothing=label_smoothing,
            adversary=_frozen(oc),
            alpha_oc=alpha_oc,
            generator=generator,
            mask_norm=mask_norm,
        )


class POC(OCCSE):
    """P-OC = Puzzle-CAM + OC-CSE: L = L_cls + L_pcls + α_p·L_re + α_oc·L_oc (frozen OC).

    OC-CSE with the puzzle branch switched on by ``alpha_p``.
    """

    name = "poc"

    def __init__(self, model: CAMNet, oc: CAMNet, alpha_p: Ramp, *args: Any, **kwargs: Any) -> None:
        """``alpha_p``, then :class:`OCCSE`'s ``alpha_oc, label_smoothing, *, generator,
        mask_norm``."""
        super().__init__(model, oc, *args, **kwargs)
        self.alpha_p = alpha_p


class PNOC(CAMMethod):
    """P-NOC: P-OC whose OC is a trainable adversary (the noc), updated after every step.

    Generator step: exactly P-OC's loss with the noc in place of the OC; the noc is in eval mode
    and its parameters have ``requires_grad=False`` (gradients reach the generator through the
    noc's input, the noc accumulates no weight gradients); optimizer ``"generator"``.

    Noc step: with the generator's *detached* mask M of the same sampled class r,
    x_noc = x·[M ≤ δ_noc] (the generator's most discriminant region erased) and
    L_noc = ow(t)·MLSM(noc(x_noc), ỹ) with all of the image's labels: the noc must still find
    the classes without the region the generator relies on. The noc is in train mode (with
    ``noc_bn="frozen"`` its BatchNorms keep their running statistics and affine weights, as the
    authors' noc does; ``"train"`` trains them) and the generator gets no gradient (x_noc is
    built from detached tensors); optimizer ``"noc"``. M is each image's map over its own
    maximum here whatever ``mask_norm`` the generator step uses.

    Difference from the authors' code: there the noc's weights also accumulate the generator
    step's gradient of α_oc·L_oc (never zeroed before the noc update). Here they do not: the
    noc's weights take no gradient in the generator step, so its update uses L_noc only. (The
    noc's gradients are not zeroed explicitly: with gradient accumulation that would discard the
    earlier micro-batches' L_noc gradients; the engine zeroes them after each noc step.)

    ``noc`` should be initialised from the OC (e.g. :func:`pnoc.models.cam.copy_camnet`, or
    ``CAMNet.from_checkpoint(oc_path)``); its learning rate is the pipeline's business
    (``cam.pnoc.lr_ratio`` × the generator's).
    """

    name = "pnoc"

    def __init__(
        self,
        model: CAMNet,
        noc: CAMNet,
        alpha_p: Ramp,
        alpha_oc: Ramp,
        ow: Ramp,
        mask_threshold: float = MASK_THRESHOLD,
        label_smoothing: float = SMOOTHING,
        *,
        generator: torch.Generator | None = None,
        mask_norm: str = "image",
        noc_bn: str = "train",
    ) -> None:
        if noc_bn not in NOC_BATCHNORM:
            raise ConfigError(f"noc_bn: expected one of {NOC_BATCHNORM}, got {noc_bn!r}")
        if not 0.0 <= mask_threshold <= 1.0:
            raise ConfigError(
                f"mask_threshold: expected a fraction in [0, 1], got {mask_threshold}"
            )
        if noc is model:
            raise ConfigError("the noc must be a separate network from the generator")
        super().__init__(
            model,
            label_smoothing=label_smoothing,
            alpha_p=alpha_p,
            adversary=noc,
            alpha_oc=alpha_oc,
            generator=generator,
            mask_norm=mask_norm,
        )
        self.noc = noc
        self.noc_bn = noc_bn
        if noc_bn == "frozen":
            for module in _batch_norms(noc):
                module.requires_grad_(False)
        self._noc_net: nn.Module = noc
        self.ow = ow
        self.mask_threshold = mask_threshold

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.model, "noc": self.noc}

    def use_modules(self, modules: dict[str, nn.Module]) -> None:
        """As :meth:`CAMMethod.use_modules`; the noc's own update goes through
        ``modules["noc"]``, while the generator step calls the noc itself: there it is a judge
        whose weights take no gradient."""
        super().use_modules(modules)
        self._noc_net = modules["noc"]

    def param_groups(self, lr_mult_head: float = 10.0) -> dict[str, list[dict[str, Any]]]:
        return {
            "generator": self.model.param_groups(lr_mult_head),
            "noc": self.noc.param_groups(lr_mult_head),
        }

    def train_step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, float]:
        x, y = self._inputs(batch, ctx)

        # Generator step: the noc judges, frozen.
        self.noc.eval()
        with _no_weight_grads(self.noc):
            with ctx.autocast():
                out = self._generator_forward(x, y, ctx.progress, batch.get("class_noise"))
            ctx.update("generator", out.loss, out.terms)

        # Noc step: find the classes without the generator's most discriminant region.
        assert out.mask is not None and out.r is not None
        ow = self.ow(ctx.progress)
        mask = out.mask.detach()
        if self.mask_norm != "image":  # δ_noc applies to each image's own normalised map
            mask = class_mask(out.maps.detach(), out.r, (x.shape[-2], x.shape[-1]))
        x_noc = hard_erase(x, mask, self.mask_threshold)
        self.noc.train()
        if self.noc_bn == "frozen":  # running statistics, fixed affine (looked up each step:
            for module in _batch_norms(self.noc):  # SyncBatchNorm may have replaced them)
                module.eval()
        with ctx.autocast():
            noc_term = mlsm(gap(self._noc_net(x_noc)), out.targets)
            noc_loss = ow * noc_term
        ctx.update("noc", noc_loss, {"noc": noc_term})

        scalars = {"loss": out.loss, **out.terms, "noc": noc_term, "noc_loss": noc_loss}
        return to_floats(scalars, {**out.ramps, "ow": ow})


class _no_weight_grads(AbstractContextManager[None]):  # noqa: N801 (used like a function)
    """Within the block, ``module``'s parameters do not require gradients (restored after)."""

    def __init__(self, module: nn.Module) -> None:
        self.params = list(module.parameters())
        self.flags: list[bool] = []

    def __enter__(self) -> None:
        self.flags = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for p, flag in zip(self.params, self.flags, strict=True):
            p.requires_grad_(flag)


def _batch_norms(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _frozen(oc: CAMNet | FrozenClassifier) -> FrozenClassifier:
    return oc if isinstance(oc, FrozenClassifier) else FrozenClassifier(oc)


METHODS: dict[str, type[CAMMethod]] = {
    cls.name: cls for cls in (VanillaCAM, Puzzle, OCCSE, POC, PNOC)
}


def build_method(
    name: str,
    model: CAMNet,
    *,
    oc: CAMNet | None = None,
    label_smoothing: float = SMOOTHING,
    alpha_p: Ramp = Ramp.from_config(_CAM.puzzle.alpha),
    alpha_oc: Ramp = Ramp.from_config(_CAM.occse.alpha),
    ow: Ramp = Ramp.from_config(_CAM.pnoc.ow),
    mask_threshold: float = MASK_THRESHOLD,
    generator: torch.Generator | None = None,
    mask_norm: str = _CAM.occse.mask_norm,
    noc_bn: str = _CAM.pnoc.noc_bn,
) -> CAMMethod:
    """The method called ``name`` (``vanilla|puzzle|occse|poc|pnoc``), from plain values.

    ``oc`` is required by occse/poc/pnoc. For pnoc the noc is a copy of ``oc`` (which is left
    untouched) whose backbone keeps the generator's stages fixed (``frozen_stages``), so the
    caller gets it back through ``method.modules()["noc"]``.
    """
    if name not in METHODS:
        raise ConfigError(f"cam.method: unknown '{name}'; expected one of {sorted(METHODS)}")
    if name == "vanilla":
        return VanillaCAM(model, label_smoothing)
    if name == "puzzle":
        return Puzzle(model, alpha_p, label_smoothing)
    if oc is None:
        raise ConfigError(f"cam.method '{name}' needs the ordinary classifier (oc)")
    if name == "occse":
        return OCCSE(model, oc, alpha_oc, label_smoothing, generator=generator, mask_norm=mask_norm)
    if name == "poc":
        return POC(
            model, oc, alpha_p, alpha_oc, label_smoothing, generator=generator, mask_norm=mask_norm
        )
    noc = copy_camnet(oc).requires_grad_(True)
    noc.backbone.freeze_stages(model.backbone.frozen_stages)
    return PNOC(
        model,
        noc,
        alpha_p,
        alpha_oc,
        ow,
        mask_threshold,
        label_smoothing,
        generator=generator,
        mask_norm=mask_norm,
        noc_bn=noc_bn,
    )
