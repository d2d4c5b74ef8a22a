"""CAMNet: maps, logits and SGD parameter groups (those of every backbone network too)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from pnoc.models.affinity import AffinityNet
from pnoc.models.cam import CAMNet, copy_camnet
from pnoc.models.ccam import CCAMNet
from pnoc.models.deeplab import DeepLabV3Plus


def test_maps_and_logits() -> None:
    model = CAMNet("resnet18", 4, output_stride=16)
    x = torch.randn(2, 3, 64, 64)
    logits, maps = model.forward_logits(x)
    assert maps.shape == (2, 4, 4, 4)
    assert logits.shape == (2, 4)
    torch.testing.assert_close(logits, maps.mean((2, 3)))
    assert model.classifier.bias is None


def test_param_groups_cover_every_parameter_once() -> None:
    model = CAMNet("resnet18", 4)
    groups = model.param_groups(lr_mult_head=10.0)
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone_weight"]["lr_mult"] == 1.0
    assert by_name["backbone_bias"]["lr_mult"] == 2.0
    assert by_name["backbone_bias"]["weight_decay"] == 0.0
    assert by_name["head_weight"]["lr_mult"] == 10.0
    assert "head_bias" not in by_name  # the 1×1 head has no bias
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert by_name["head_weight"]["params"] == [model.classifier.weight]
    opt = torch.optim.SGD(groups, lr=0.1, weight_decay=1e-4)  # extra keys are accepted
    assert opt.param_groups[0]["lr_mult"] == 1.0


def _authors_groups(
    model: nn.Module, lr_mult_head: float, weight_decay: float | None
) -> list[dict[str, Any]]:
    """The groups spelled out: backbone weights, backbone biases, head weights, head biases."""
    groups = []
    for head in (False, True):
        for bias in (False, True):
            params = [
                p
                for n, p in model.named_parameters()
                if p.requires_grad
                and n.startswith("backbone.") != head
                and n.endswith("bias") == bias
            ]
            if not params:
                continue
            mult = lr_mult_head if head else 1.0
            group: dict[str, Any] = {
                "name": f"{'head' if head else 'backbone'}_{'bias' if bias else 'weight'}",
                "params": params,
                "lr_mult": 2.0 * mult if bias else mult,
            }
            if bias:
                group["weight_decay"] = 0.0
            elif weight_decay is not None:
                group["weight_decay"] = weight_decay
            groups.append(group)
    return groups


@pytest.mark.parametrize(
    "build",
    [
        lambda: CAMNet("resnet18", 3, frozen_stages=1),
        lambda: DeepLabV3Plus("resnet18", 4),
        lambda: AffinityNet("resnet18", dim=16),
        lambda: CCAMNet("resnet18", features="low"),
    ],
    ids=["camnet", "deeplab", "affinity", "ccam"],
)
@pytest.mark.parametrize(("lr_mult_head", "weight_decay"), [(10.0, None), (4.0, 1e-3)])
def test_every_network_builds_the_authors_groups(
    build: Any, lr_mult_head: float, weight_decay: float | None
) -> None:
    model = build()
    groups = model.param_groups(lr_mult_head, weight_decay=weight_decay)
    expected = _authors_groups(model, lr_mult_head, weight_decay)
    assert [list(g) for g in groups] == [list(g) for g in expected]  # same keys, same order
    for got, want in zip(groups, expected, strict=True):
        assert [id(p) for p in got["params"]] == [id(p) for p in want["params"]]
        assert {k: v for k, v in got.items() if k != "params"} == {
            k: v for k, v in want.items() if k != "params"
        }


def test_copy_is_independent() -> None:
    model = CAMNet("resnet18", 2)
    clone = copy_camnet(model)
    torch.testing.assert_close(clone.classifier.weight, model.classifier.weight)
    with torch.no_grad():
        clone.classifier.weight.add_(1.0)
    assert not torch.equal(clone.classifier.weight, model.classifier.weight)
