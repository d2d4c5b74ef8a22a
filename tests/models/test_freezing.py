"""Frozen backbone stages: no gradients, BatchNorm in eval mode, gradients still reach the input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pnoc.cam.methods import build_method
from pnoc.errors import ConfigError
from pnoc.models.backbones import build_backbone
from pnoc.models.cam import CAMNet

BACKBONES = ["resnet18", "resnest50d", "efficientnet_lite0"]


def _stage_params(backbone, n: int) -> set[int]:
    return {id(p) for m in backbone.stage_modules(n) for p in m.parameters()}


def _batchnorms(modules) -> list[nn.BatchNorm2d]:
    return [m for mod in modules for m in mod.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("n", [1, 2])
def test_frozen_stages_get_no_gradient_and_keep_their_statistics(name: str, n: int) -> None:
    torch.manual_seed(0)
    model = CAMNet(name, 3, output_stride=16, frozen_stages=n).train()
    frozen = _stage_params(model.backbone, n)
    assert frozen and all(not p.requires_grad for p in model.parameters() if id(p) in frozen)
    frozen_bns = _batchnorms(model.backbone.stage_modules(n))
    assert frozen_bns and all(not bn.training for bn in frozen_bns)
    before = [bn.running_mean.clone() for bn in frozen_bns]

    model(torch.randn(2, 3, 64, 64)).mean().backward()

    for p in model.parameters():
        if id(p) in frozen:
            assert p.grad is None
        else:
            assert p.grad is not None, "a trainable parameter got no gradient"
    for bn, mean in zip(frozen_bns, before, strict=True):
        assert torch.equal(bn.running_mean, mean)
    # the stages after the frozen ones still train their BatchNorm
    assert any(m.training for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("name", BACKBONES)
def test_gradient_flows_through_frozen_stages_to_the_input(name: str) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(name, output_stride=16).freeze_stages(2)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)  # ResNeSt: BatchNorm on pooled features
    backbone(x)["out"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_freezing_can_be_undone_and_rejects_unknown_values() -> None:
    backbone = build_backbone("resnet18", output_stride=32).freeze_stages(2)
    backbone.freeze_stages(0)
    assert all(p.requires_grad for p in backbone.parameters())
    assert all(m.training for m in backbone.modules())
    with pytest.raises(ConfigError, match="frozen_stages"):
        backbone.freeze_stages(3)


def test_the_noc_keeps_the_generators_frozen_stages() -> None:
    torch.manual_seed(0)
    generator = CAMNet("resnet18", 3, output_stride=16, frozen_stages=2)
    oc = CAMNet("resnet18", 3, output_stride=32)
    # noc_bn="train": its BatchNorms train too, so frozen stages alone decide requires_grad
    noc = build_method("pnoc", generator, oc=oc, noc_bn="train").modules()["noc"]
    assert noc.backbone.frozen_stages == 2
    frozen = _stage_params(noc.backbone, 2)
    assert all(p.requires_grad == (id(p) not in frozen) for p in noc.parameters())
    assert all(p.requires_grad for p in oc.parameters())  # the OC itself is left as it was
