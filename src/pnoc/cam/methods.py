"""CAM training methods (vanilla CAM, Puzzle-CAM, OC-CSE, P-OC, P-NOC) as engine Methods.

Every method shares one generator step (:meth:`CAMMethod._generator_forward`) whose optional
parts are switched on by the subclasses:

    A = G(x);  L_cls = MLSM(gap(A), ỹ)                                     always
    Â = merge(G(tiles(x)));  L_pcls = MLSM(gap(Â), ỹ);  L_re = mean(|A − Â|·y)    puzzle
    r ~ present classes;  M = upsample(relu(A_r)) / max;                          adversary
    L_oc = MLSM(C(x·(1 − M)), ỹ without r)     (C: frozen OC, or the noc in P-NOC)
    L = L_cls [+ L_pcls + α_p(t)·L_re] [+ α_oc(t)·L_oc]

P-NOC then trains the noc against the generator (see :class:`PNOC`).

Passes per step (the cost model): one generator forward+backward on x; with puzzle one more on
the 4B tiles (a separate pass: tiles are half the size of x, so they cannot share a batch with
it without padding, which would change the maps); with an adversary one forward of it on the
erased images whose backward computes input gradients only (its weights have
``requires_grad=False`` during the generator step); P-NOC adds one noc forward+backward on the
hard-erased images.

Labels are smoothed with ``label_smoothing`` for every MLSM target; the reconstruction mask uses
the hard labels. ``train_step`` returns floats: ``loss`` (generator total), each term
(``cls``, ``pcls``, ``re``, ``oc``; P-NOC also ``noc`` and ``noc_loss`` = ow·noc) and the current
ramp values (``alpha_p``, ``alpha_oc``, ``ow``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from pnoc.cam.losses import (
    class_mask,
    erase,
    gap,
    hard_erase,
    labels_without,
    masked_mean,
    merge_2x2,
    mlsm,
    puzzle_reconstruction_loss,
    sample_present_class,
    smooth_labels,
    tile_2x2,
)
from pnoc.cam.schedules import Ramp
from pnoc.errors import ConfigError
from pnoc.models.cam import CAMNet, copy_camnet


class StepContext(Protocol):
    """The part of the engine's TrainContext the methods use."""

    progress: float
    device: torch.device

    def autocast(self) -> AbstractContextManager[Any]: ...

    def update(
        self, optimizer: str, loss: Tensor, terms: dict[str, Tensor] | None = None
    ) -> None: ...


class FrozenClassifier(nn.Module):
    """A classifier used as a fixed judge (the OC of OC-CSE / P-OC).

    Its parameters never require gradients and it stays in eval mode whatever ``train()`` is
    called with, so an engine-wide ``model.train()`` cannot switch its BatchNorm to batch
    statistics. Gradients still flow through it to its input. It follows its input's device
    (moved on first use), so it need not be among the engine's modules.
    """

    def __init__(self, net: CAMNet) -> None:
        super().__init__()
        self.net = net
        net.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenClassifier:
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, 3, H, W) -> class maps (B, K, h, w)."""
        weight = self.net.classifier.weight
        if weight.device != x.device:
            self.net.to(x.device)
        return self.net(x)


@dataclass
class GeneratorOutput:
    """Everything one generator forward produces (tensors still attached to the graph)."""

    loss: Tensor
    terms: dict[str, Tensor]
    ramps: dict[str, float]
    maps: Tensor
    targets: Tensor  # smoothed labels ỹ (B, K)
    r: Tensor | None = None  # sampled class per image (B,), −1 = none
    mask: Tensor | None = None  # M (B, 1, H, W)


class CAMMethod:
    """Shared generator step; subclasses choose which parts are on.

    Args:
        model: the CAM generator (trained; optimizer ``"generator"``).
        label_smoothing: ε of ỹ = (1 − ε)·y + ε/2.
        alpha_p: α_p(t) ramp; enables the puzzle branch when given.
        adversary: classifier judging the erased images (OC or noc); enables L_oc when given.
        alpha_oc: α_oc(t) ramp, required with ``adversary``.
        generator: RNG for the class sampling (default: torch's global RNG).
    """

    name: ClassVar[str] = "cam"

    def __init__(
        self,
        model: CAMNet,
        *,
        label_smoothing: float = 0.1,
        alpha_p: Ramp | None = None,
        adversary: nn.Module | None = None,
        alpha_oc: Ramp | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing: expected 0 <= eps < 1, got {label_smoothing}")
        if (adversary is None) != (alpha_oc is None):
            raise ConfigError("an adversary classifier and its alpha_oc ramp go together")
        self.model = model
        self.label_smoothing = label_smoothing
        self.alpha_p = alpha_p
        self.adversary = adversary
        self.alpha_oc = alpha_oc
        self.generator = generator

    # -- engine interface ---------------------------------------------------------------------

    def modules(self) -> dict[str, nn.Module]:
        """Trainable state, checkpointed by name (the frozen OC is not part of it)."""
        return {"generator": self.model}

    def param_groups(self, lr_mult_head: float = 10.0) -> dict[str, list[dict[str, Any]]]:
        """SGD parameter groups per optimizer name (see :meth:`CAMNet.param_groups`)."""
        return {"generator": self.model.param_groups(lr_mult_head)}

    def train_step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, float]:
        x, y = self._inputs(batch, ctx)
        with ctx.autocast():
            out = self._generator_forward(x, y, ctx.progress)
        ctx.update("generator", out.loss, out.terms)
        return _to_floats({"loss": out.loss, **out.terms}, out.ramps)

    # -- shared pieces ------------------------------------------------------------------------

    def _inputs(self, batch: dict[str, Any], ctx: StepContext) -> tuple[Tensor, Tensor]:
        x = batch["image"].to(ctx.device, non_blocking=True)
        y = batch["labels"].to(ctx.device, non_blocking=True).float()
        if y.dim() != 2 or y.shape[1] != self.model.num_classes:
            ids = batch.get("id", [])
            raise ConfigError(
                f"labels of batch {list(ids)[:4]}: expected a vector of "
                f"{self.model.num_classes} classes per image, got shape {tuple(y.shape)}"
            )
        return x, y

    def _generator_forward(self, x: Tensor, y: Tensor, progress: float) -> GeneratorOutput:
        """Loss of one generator step on images x (B, 3, H, W) with hard labels y (B, K)."""
        targets = smooth_labels(y, self.label_smoothing)
        maps = self.model(x)
        terms: dict[str, Tensor] = {"cls": mlsm(gap(maps), targets)}
        loss = terms["cls"]
        ramps: dict[str, float] = {}
        out = GeneratorOutput(loss, terms, ramps, maps, targets)

        if self.alpha_p is not None:
            merged = merge_2x2(self.model(tile_2x2(x)))
            if merged.shape[-2:] != maps.shape[-2:]:
                # Sizes not divisible by 2 × output stride: tile maps round up differently.
                merged = nn.functional.interpolate(
                    merged, size=maps.shape[-2:], mode="bilinear", align_corners=False
                )
            terms["pcls"] = mlsm(gap(merged), targets)
            terms["re"] = puzzle_reconstruction_loss(maps, merged, y)
            ramps["alpha_p"] = self.alpha_p(progress)
            loss = loss + terms["pcls"] + ramps["alpha_p"] * terms["re"]

        if self.adversary is not None and self.alpha_oc is not None:
            r = sample_present_class(y, self.generator)
            mask = class_mask(maps, r, (x.shape[-2], x.shape[-1]))
            adv_logits = gap(self.adversary(erase(x, mask)))
            adv_targets = smooth_labels(labels_without(y, r), self.label_smoothing)
            terms["oc"] = masked_mean(mlsm(adv_logits, adv_targets, reduction="none"), r >= 0)
            ramps["alpha_oc"] = self.alpha_oc(progress)
            loss = loss + ramps["alpha_oc"] * terms["oc"]
            out.r, out.mask = r, mask

        out.loss = loss
        return out


class VanillaCAM(CAMMethod):
    """Plain CAM classifier: L = MLSM(gap(A), ỹ). Also trains the ordinary classifier (OC)."""

    name = "vanilla"

    def __init__(self, model: CAMNet, label_smoothing: float = 0.1) -> None:
        super().__init__(model, label_smoothing=label_smoothing)


class Puzzle(CAMMethod):
    """Puzzle-CAM: L = L_cls + L_pcls + α_p(t)·L_re (the 4 tiles go through one 4B-batch pass)."""

    name = "puzzle"

    def __init__(self, model: CAMNet, alpha: Ramp, label_smoothing: float = 0.1) -> None:
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
        label_smoothing: float = 0.1,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(
            model,
            label_smoothing=label_smoothing,
            adversary=_frozen(oc),
            alpha_oc=alpha_oc,
            generator=generator,
        )


class POC(CAMMethod):
    """P-OC = Puzzle-CAM + OC-CSE: L = L_cls + L_pcls + α_p·L_re + α_oc·L_oc (frozen OC)."""

    name = "poc"

    def __init__(
        self,
        model: CAMNet,
        oc: CAMNet,
        alpha_p: Ramp,
        alpha_oc: Ramp,
        label_smoothing: float = 0.1,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(
            model,
            label_smoothing=label_smoothing,
            alpha_p=alpha_p,
            adversary=_frozen(oc),
            alpha_oc=alpha_oc,
            generator=generator,
        )


class PNOC(CAMMethod):
    """P-NOC: P-OC whose OC is a trainable adversary (the noc), updated after every step.

    Generator step: exactly P-OC's loss with the noc in place of the OC; the noc is in eval mode
    and its parameters have ``requires_grad=False`` (gradients reach the generator through the
    noc's input, the noc accumulates no weight gradients); optimizer ``"generator"``.

    Noc step: with the generator's *detached* mask M of the same sampled class r,
    x_noc = x·[M ≤ δ_noc] (the generator's most discriminant region erased) and
    L_noc = ow(t)·MLSM(noc(x_noc), ỹ) with all of the image's labels: the noc must still find
    the classes without the region the generator relies on. The noc is in train mode and the
    generator gets no gradient (x_noc is built from detached tensors); optimizer ``"noc"``.

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
        mask_threshold: float = 0.2,
        label_smoothing: float = 0.1,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
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
        )
        self.noc = noc
        self.ow = ow
        self.mask_threshold = mask_threshold

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.model, "noc": self.noc}

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
                out = self._generator_forward(x, y, ctx.progress)
            ctx.update("generator", out.loss, out.terms)

        # Noc step: find the classes without the generator's most discriminant region.
        assert out.mask is not None
        ow = self.ow(ctx.progress)
        x_noc = hard_erase(x, out.mask.detach(), self.mask_threshold)
        self.noc.train()
        with ctx.autocast():
            noc_term = mlsm(gap(self.noc(x_noc)), out.targets)
            noc_loss = ow * noc_term
        ctx.update("noc", noc_loss, {"noc": noc_term})

        scalars = {"loss": out.loss, **out.terms, "noc": noc_term, "noc_loss": noc_loss}
        return _to_floats(scalars, {**out.ramps, "ow": ow})


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


def _frozen(oc: CAMNet | FrozenClassifier) -> FrozenClassifier:
    return oc if isinstance(oc, FrozenClassifier) else FrozenClassifier(oc)


def _to_floats(tensors: dict[str, Tensor], extra: dict[str, float]) -> dict[str, float]:
    """One device sync for all logged scalars."""
    values = torch.stack([t.detach().float().reshape(()) for t in tensors.values()]).tolist()
    return {**dict(zip(tensors, values, strict=True)), **extra}


METHODS: dict[str, type[CAMMethod]] = {
    cls.name: cls for cls in (VanillaCAM, Puzzle, OCCSE, POC, PNOC)
}


def build_method(
    name: str,
    model: CAMNet,
    *,
    oc: CAMNet | None = None,
    label_smoothing: float = 0.1,
    alpha_p: Ramp = Ramp(0.0, 4.0, 0.5),
    alpha_oc: Ramp = Ramp(0.3, 1.0, 1.0),
    ow: Ramp = Ramp(0.0, 1.0, 1.0),
    mask_threshold: float = 0.2,
    generator: torch.Generator | None = None,
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
        return OCCSE(model, oc, alpha_oc, label_smoothing, generator=generator)
    if name == "poc":
        return POC(model, oc, alpha_p, alpha_oc, label_smoothing, generator=generator)
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
    )
