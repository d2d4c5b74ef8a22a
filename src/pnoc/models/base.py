"""What every pnoc network built on a shared backbone has in common.

Such a network keeps its feature extractor in ``self.backbone`` (:func:`build_backbone`); every
other parameter belongs to its head. That split gives the authors' SGD groups, and the
backbone's name and output stride with the network's output width make the :class:`ModelSpec`
a checkpoint records, from which :meth:`BackboneNet.from_checkpoint` rebuilds the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

import torch.nn.functional as F
from torch import Tensor, nn

from pnoc.models.backbones import Backbone, ModelSpec, load_spec_model


def backbone_head_groups(
    model: nn.Module, lr_mult_head: float = 10.0, *, weight_decay: float | None = None
) -> list[dict[str, Any]]:
    """The authors' SGD parameter groups for a model with a ``backbone`` attribute.

    Backbone weights: ``lr_mult`` 1; backbone biases: 2; head weights (every parameter outside
    ``backbone.``): ``lr_mult_head``; head biases: 2 × ``lr_mult_head``. "Biases" are parameters
    whose name ends in ``bias`` (conv and norm biases); they get ``weight_decay`` 0, the other
    groups carry no ``weight_decay`` key (the optimizer's default applies) unless
    ``weight_decay`` is given. Each group has a ``name`` for logging. Empty groups and frozen
    parameters (``requires_grad=False``) are left out.
    """
    from pnoc.engine.optim import split_decay_groups  # the engine package loads the trainer

    named = list(model.named_parameters())
    backbone = [(n, p) for n, p in named if n.startswith("backbone.")]
    head = [(n, p) for n, p in named if not n.startswith("backbone.")]
    return [
        *split_decay_groups(backbone, weight_decay=weight_decay, name="backbone"),
        *split_decay_groups(head, lr_mult=lr_mult_head, weight_decay=weight_decay, name="head"),
    ]


def resize_bilinear(x: Tensor, size: tuple[int, ...]) -> Tensor:
    """``x`` (B, C, h, w) resampled to ``size`` (H, W), bilinearly with align_corners=False."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class BackboneNet(nn.Module):
    """Base of the networks on a shared backbone: checkpoint spec, SGD groups, loading.

    A subclass names its checkpoint architecture in its class statement
    (``class CAMNet(BackboneNet, arch="camnet")``), sets ``self.backbone``, and overrides
    :attr:`output_width` and :meth:`from_spec` where its output is not ``num_classes`` wide or
    its constructor is not ``(backbone_name, num_classes, *, output_stride)``.
    """

    arch: ClassVar[str]
    backbone: Backbone
    num_classes: int

    def __init_subclass__(cls, *, arch: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if arch is not None:
            cls.arch = arch

    @property
    def output_width(self) -> int:
        """The width the checkpoint records as ``num_classes``: the network's output channels."""
        return self.num_classes

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(
            arch=self.arch,
            backbone=self.backbone.name,
            num_classes=self.output_width,
            output_stride=self.backbone.output_stride,
        )

    def param_groups(
        self, lr_mult_head: float = 10.0, *, weight_decay: float | None = None
    ) -> list[dict[str, Any]]:
        """SGD parameter groups, the authors' way (see :func:`backbone_head_groups`).

        Backbone weights: ``lr_mult`` 1; backbone biases: 2; head weights: ``lr_mult_head``;
        head biases: 2 × ``lr_mult_head``; biases get ``weight_decay`` 0. Each group also has a
        ``name`` for logging. Empty groups and frozen parameters are left out.
        """
        return backbone_head_groups(self, lr_mult_head, weight_decay=weight_decay)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> Self:
        """A network of the shape ``spec`` records (untrained: weights are loaded after)."""
        return cls(spec.backbone, spec.num_classes, output_stride=spec.output_stride)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, expected_backbone: str | None = None) -> Self:
        """Rebuild a network saved with :func:`pnoc.models.backbones.save_model` (on CPU)."""
        return load_spec_model(path, cls.arch, cls.from_spec, expected_backbone=expected_backbone)
