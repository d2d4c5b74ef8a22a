"""CAMNet: maps, logits and SGD parameter groups."""

from __future__ import annotations

import torch

from pnoc.models.cam import CAMNet, copy_camnet


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


def test_copy_is_independent() -> None:
    model = CAMNet("resnet18", 2)
    clone = copy_camnet(model)
    torch.testing.assert_close(clone.classifier.weight, model.classifier.weight)
    with torch.no_grad():
        clone.classifier.weight.add_(1.0)
    assert not torch.equal(clone.classifier.weight, model.classifier.weight)
