"""SGD parameter groups (authors' lr multipliers) and the poly LR schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pnoc.engine import PolyLR, build_sgd, param_groups, split_decay_groups


def _backbone() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1, bias=False))


def test_split_decay_groups_weights_and_biases() -> None:
    net = _backbone()
    groups = split_decay_groups(net, lr_mult=1.0)
    weights, biases = groups
    assert [p.shape for p in weights["params"]] == [
        net[0].weight.shape,
        net[1].weight.shape,
        net[2].weight.shape,
    ]  # BN scale stays with the weights (the authors split on the name)
    assert {id(p) for p in biases["params"]} == {id(net[0].bias), id(net[1].bias)}
    assert weights["lr_mult"] == 1.0 and "weight_decay" not in weights
    assert biases["lr_mult"] == 2.0 and biases["weight_decay"] == 0.0


def test_frozen_parameters_and_empty_groups_are_left_out() -> None:
    net = nn.Linear(3, 3)
    net.bias.requires_grad_(False)
    groups = split_decay_groups(net)
    assert len(groups) == 1 and groups[0]["params"] == [net.weight]


def test_build_sgd_group_lrs_and_weight_decay() -> None:
    backbone, head = _backbone(), nn.Conv2d(4, 2, 1)
    opt = build_sgd(param_groups(backbone, head), lr=0.1, weight_decay=1e-4)
    assert [g["lr_mult"] for g in opt.param_groups] == [1.0, 2.0, 10.0, 20.0]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.2, 1.0, 2.0])
    assert [g["base_lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.2, 1.0, 2.0])
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0, 1e-4, 0.0]
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)


@pytest.mark.parametrize("nesterov", [False, True])
def test_build_sgd_matches_the_plain_loop_with_a_late_parameter(nesterov: bool) -> None:
    """build_sgd's (fused) updates equal torch's per-parameter SGD step for step, with group
    lrs changed between steps and a parameter whose first gradient comes at step 3."""

    def run(make_opt):  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        backbone, head = _backbone(), nn.Conv2d(4, 2, 1)
        late = nn.Parameter(torch.randn(2))
        groups = param_groups(backbone, head)
        groups[0]["params"] = [*groups[0]["params"], late]  # shares a group with others
        opt = make_opt(groups)
        x = torch.randn(2, 3, 6, 6)
        for step in range(5):
            opt.zero_grad()
            loss = head(backbone(x)).square().mean()
            if step >= 2:
                loss = loss + (late * torch.arange(2.0)).sum() ** 2
            loss.backward()
            opt.step()
            for g in opt.param_groups:
                g["lr"] = g["lr"] * 0.7
        return [p.detach().clone() for p in [*backbone.parameters(), *head.parameters(), late]]

    kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=nesterov)
    ours = run(lambda groups: build_sgd(groups, **kw))
    plain = run(
        lambda groups: torch.optim.SGD(
            [{**g, "lr": 0.05 * g.get("lr_mult", 1.0)} for g in groups], foreach=False, **kw
        )
    )
    for a, b in zip(ours, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_param_groups_refuses_shared_parameters() -> None:
    net = _backbone()
    with pytest.raises(ValueError, match="both"):
        param_groups(net, net[0])


def test_poly_lr_values_and_state_dict() -> None:
    w = nn.Parameter(torch.zeros(1))
    opt = build_sgd([{"params": [w]}, {"params": [], "lr_mult": 10.0}], lr=0.1)
    sched = PolyLR(opt, total_steps=10, power=0.9)
    seen = []
    for _ in range(12):
        seen.append([g["lr"] for g in opt.param_groups])
        sched.step()
    for s, (lr0, lr1) in enumerate(seen):
        f = (1 - min(s, 10) / 10) ** 0.9
        assert lr0 == pytest.approx(0.1 * f) and lr1 == pytest.approx(1.0 * f)
    assert seen[10] == [0.0, 0.0] and seen[11] == [0.0, 0.0]  # clamped, never negative

    other = PolyLR(build_sgd([{"params": [w]}], lr=0.1), total_steps=3)
    state = PolyLR(opt, total_steps=10).state_dict()
    sched.set_step(4)
    other.load_state_dict(sched.state_dict())
    assert other.last_step == 4 and other.total_steps == 10
    assert other.get_lr() == pytest.approx([0.1 * 0.6**0.9])
    assert state["last_step"] == 0


def test_poly_lr_reads_base_lr_of_plain_optimizers() -> None:
    w = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.5)
    sched = PolyLR(opt, total_steps=4, power=1.0)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.375)
