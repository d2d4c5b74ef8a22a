"""The generator step every CAM training method shares, and the engine interface around it.

:meth:`CAMMethod._generator_forward` computes the step; its optional parts are switched on by
the methods of :mod:`pnoc.cam.methods`:

    A = G(x);  L_cls = MLSM(gap(A), ỹ)                                     always
    Â = merge(G(tiles(x)));  L_pcls = MLSM(gap(Â), ỹ);  L_re = mean(|A − Â|·y)    puzzle
    r ~ present classes;  M = upsample(relu(A_r)) / max;                          adversary
    L_oc = MLSM(C(x·(1 − M)), ỹ without r)     (C: frozen OC, or the noc in P-NOC)
    L = L_cls [+ L_pcls + α_p(t)·L_re] [+ α_oc(t)·L_oc]

P-NOC then trains the noc against the generator (see :class:`pnoc.cam.methods.PNOC`).

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
from typing import Any, ClassVar, Protocol, get_args

import torch
from torch import Tensor, nn

from pnoc.cam.losses import (
    class_mask,
    erase,
    gap,
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
from pnoc.config import MaskNorm
from pnoc.errors import ConfigError
from pnoc.models.cam import CAMNet

MASK_NORMS: tuple[str, ...] = get_args(MaskNorm)


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
        mask_norm: ``"image"`` divides each image's soft mask M by its own maximum,
            ``"batch"`` by one maximum over the batch (the authors' OC-CSE), so images with
            weaker maps are erased only partly.
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
        mask_norm: str = "image",
    ) -> None:
        if mask_norm not in MASK_NORMS:
            raise ConfigError(f"mask_norm: expected one of {MASK_NORMS}, got {mask_norm!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing: expected 0 <= eps < 1, got {label_smoothing}")
        if (adversary is None) != (alpha_oc is None):
            raise ConfigError("an adversary classifier and its alpha_oc ramp go together")
        self.model = model
        self._net: nn.Module = model
        self.label_smoothing = label_smoothing
        self.alpha_p = alpha_p
        self.adversary = adversary
        self.alpha_oc = alpha_oc
        self.generator = generator
        self.mask_norm = mask_norm

    # -- engine interface ---------------------------------------------------------------------

    def modules(self) -> dict[str, nn.Module]:
        """Trainable state, checkpointed by name (the frozen OC is not part of it)."""
        return {"generator": self.model}

    def use_modules(self, modules: dict[str, nn.Module]) -> None:
        """Where ``train_step``'s forward passes go: under data parallelism ``fit`` hands
        the modules' ``DistributedDataParallel`` wrappers here, and the modules again after.
        (A frozen adversary is called directly: it trains nothing.)"""
        self._net = modules["generator"]

    def param_groups(self, lr_mult_head: float = 10.0) -> dict[str, list[dict[str, Any]]]:
        """SGD parameter groups per optimizer name (see :meth:`CAMNet.param_groups`)."""
        return {"generator": self.model.param_groups(lr_mult_head)}

    def train_step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, float]:
        x, y = self._inputs(batch, ctx)
        with ctx.autocast():
            out = self._generator_forward(x, y, ctx.progress, batch.get("class_noise"))
        ctx.update("generator", out.loss, out.terms)
        return to_floats({"loss": out.loss, **out.terms}, out.ramps)

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

    def _generator_forward(
        self, x: Tensor, y: Tensor, progress: float, class_noise: Tensor | None = None
    ) -> GeneratorOutput:
        """Loss of one generator step on images x (B, 3, H, W) with hard labels y (B, K);
        ``class_noise`` (B, K): the samples' draws of the erased class r (else ``generator``)."""
        targets = smooth_labels(y, self.label_smoothing)
        maps = self._net(x)
        terms: dict[str, Tensor] = {"cls": mlsm(gap(maps), targets)}
        loss = terms["cls"]
        ramps: dict[str, float] = {}
        out = GeneratorOutput(loss, terms, ramps, maps, targets)

        if self.alpha_p is not None:
            merged = merge_2x2(self._net(tile_2x2(x)))
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
            r = sample_present_class(y, self.generator, noise=class_noise)
            mask = class_mask(
                maps, r, (x.shape[-2], x.shape[-1]), global_norm=self.mask_norm == "batch"
            )
            adv_logits = gap(self.adversary(erase(x, mask)))
            adv_targets = smooth_labels(labels_without(y, r), self.label_smoothing)
            terms["oc"] = masked_mean(mlsm(adv_logits, adv_targets, reduction="none"), r >= 0)
            ramps["alpha_oc"] = self.alpha_oc(progress)
            loss = loss + ramps["alpha_oc"] * terms["oc"]
            out.r, out.mask = r, mask

        out.loss = loss
        return out


def to_floats(tensors: dict[str, Tensor], extra: dict[str, float]) -> dict[str, float]:
    """One device sync for all logged scalars."""
    values = torch.stack([t.detach().float().reshape(()) for t in tensors.values()]).tolist()
    return {**dict(zip(tensors, values, strict=True)), **extra}
