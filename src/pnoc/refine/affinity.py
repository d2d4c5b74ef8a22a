"""Training AffinityNet on affinity labels (Ahn & Kwak, CVPR 2018), on the shared engine.

For every pair (i, j) of stride-4 feature pixels within ``radius`` whose labels are both
confident (not 255), the target is 1 when the labels agree and 0 otherwise. With
a_ij = exp(−mean_c |f_i − f_j|) the loss is

    L = ¼·mean_{bg pairs} −log(a) + ¼·mean_{fg pairs} −log(a) + ½·mean_{neg pairs} −log(1 − a)

(bg pairs: both background; fg pairs: both the same class; neg: different labels). A term with
no pair in the batch contributes 0. Each unordered pair is counted once (half the offsets).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pnoc.data.base import IGNORE_INDEX
from pnoc.models.affinity import AffinityNet
from pnoc.refine.random_walk import neighbour_offsets

EPS = 1e-5


def half_offsets(radius: int) -> list[tuple[int, int]]:
    """One offset of each ± pair within ``radius`` (dy > 0, or dy == 0 and dx > 0)."""
    return [(dy, dx) for dy, dx in neighbour_offsets(radius) if dy > 0 or (dy == 0 and dx > 0)]


def _shifted(x: Tensor, dy: int, dx: int) -> tuple[Tensor, Tensor]:
    """(x at i, x at i + (dy, dx)) over the positions where both are inside the map."""
    h, w = x.shape[-2:]
    y0, y1 = max(0, -dy), h - max(0, dy)
    x0, x1 = max(0, -dx), w - max(0, dx)
    return x[..., y0:y1, x0:x1], x[..., y0 + dy : y1 + dy, x0 + dx : x1 + dx]


def affinity_loss(
    features: Tensor, labels: Tensor, offsets: Sequence[tuple[int, int]]
) -> tuple[Tensor, dict[str, Tensor]]:
    """features (B, C, h, w), labels (B, h, w) int64 (255 ignored) -> (loss, terms).

    Terms: ``bg``, ``fg``, ``neg`` (the three means) and ``pairs`` (confident pairs counted).
    """
    if labels.shape[-2:] != features.shape[-2:]:
        raise ValueError(
            f"affinity_loss: labels {tuple(labels.shape)} do not match features "
            f"{tuple(features.shape)}"
        )
    # Sums start from 0·Σf, attached to the graph: a batch without a single confident pair
    # (possible on small or sparsely labelled sets) gives loss 0 that still back-propagates.
    zero = features.sum() * 0.0
    sums = {k: zero for k in ("bg", "fg", "neg")}
    counts = {k: features.new_zeros(()) for k in ("bg", "fg", "neg")}
    for dy, dx in offsets:
        fi, fj = _shifted(features, dy, dx)
        li, lj = _shifted(labels, dy, dx)
        aff = torch.exp(-(fi - fj).abs().mean(dim=1))  # (B, h', w')
        known = (li != IGNORE_INDEX) & (lj != IGNORE_INDEX)
        same = known & (li == lj)
        masks = {"bg": same & (li == 0), "fg": same & (li > 0), "neg": known & (li != lj)}
        for name, m in masks.items():
            if not bool(m.any()):
                continue
            a = aff[m]
            nll = -torch.log(1.0 + EPS - a) if name == "neg" else -torch.log(a + EPS)
            sums[name] = sums[name] + nll.sum()
            counts[name] = counts[name] + m.sum()
    means = {k: sums[k] / counts[k].clamp(min=1) for k in sums}
    loss = means["bg"] / 4 + means["fg"] / 4 + means["neg"] / 2
    terms = {**means, "pairs": sum(counts.values())}
    return loss, terms


def labels_to_features(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour reduction of a (B, H, W) label map to the feature grid."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


class AffinityMethod:
    """Engine method: one forward of AffinityNet, :func:`affinity_loss` on the label pairs."""

    name = "affinity"

    def __init__(self, model: AffinityNet, radius: int) -> None:
        self.model = model
        self._net: torch.nn.Module = model
        self.offsets = half_offsets(radius)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"affinity": self.model}

    def use_modules(self, modules: dict[str, torch.nn.Module]) -> None:
        """Where ``train_step``'s forward passes go: under data parallelism ``fit`` hands
        the modules' ``DistributedDataParallel`` wrappers here, and the modules again after."""
        self._net = modules["affinity"]

    def train_step(self, batch: dict[str, Any], ctx: Any) -> dict[str, float]:
        with ctx.autocast():
            feats = self._net(batch["image"])
        labels = labels_to_features(batch["mask"], feats.shape[-2:])
        loss, terms = affinity_loss(feats.float(), labels, self.offsets)
        pairs = terms.pop("pairs")
        ctx.update("affinity", loss, terms)
        return {
            "loss": float(loss.detach()),
            **{k: float(v.detach()) for k, v in terms.items()},
            "pairs": float(pairs),
        }
