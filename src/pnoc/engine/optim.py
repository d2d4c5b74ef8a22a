"""SGD with the authors' parameter-group convention, and the poly learning-rate schedule.

Convention (AffinityNet / IRN / Puzzle-CAM / P-NOC code): four groups,

    backbone weights  lr × 1    weight decay wd
    backbone biases   lr × 2    weight decay 0
    head weights      lr × 10   weight decay wd
    head biases       lr × 20   weight decay 0

"Bias" means a parameter whose name ends in ``bias`` (the authors split on the name, so
normalisation-layer scales stay in the weight group, with weight decay).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["PolyLR", "build_sgd", "param_groups", "split_decay_groups"]


def split_decay_groups(
    module: nn.Module | Iterable[tuple[str, nn.Parameter]],
    *,
    lr_mult: float = 1.0,
    bias_lr_mult: float = 2.0,
    bias_weight_decay: float | None = 0.0,
    weight_decay: float | None = None,
    name: str | None = None,
) -> list[dict[str, Any]]:
    """Split trainable parameters into a weight group and a bias group.

    ``module`` is a module or its ``(name, parameter)`` pairs (e.g. a subset of a model's).
    Returns ``[{"params", "lr_mult": lr_mult}, {"params", "lr_mult": lr_mult * bias_lr_mult,
    "weight_decay": bias_weight_decay}]``: the weight group takes the optimizer's weight decay
    unless ``weight_decay`` is given, ``bias_weight_decay=None`` lets biases take it too. With
    ``name`` each group starts with a ``"name"`` (``<name>_weight``, ``<name>_bias``) for
    logging. Empty groups are dropped; parameters with ``requires_grad=False`` are left out.
    """
    named = module.named_parameters() if isinstance(module, nn.Module) else module
    weights: list[nn.Parameter] = []
    biases: list[nn.Parameter] = []
    for param_name, p in named:
        if p.requires_grad:
            (biases if param_name.endswith("bias") else weights).append(p)
    groups: list[dict[str, Any]] = []
    for kind, params, mult, decay in (
        ("weight", weights, lr_mult, weight_decay),
        ("bias", biases, lr_mult * bias_lr_mult, bias_weight_decay),
    ):
        if not params:
            continue
        group: dict[str, Any] = {} if name is None else {"name": f"{name}_{kind}"}
        group["params"] = params
        group["lr_mult"] = mult
        if decay is not None:
            group["weight_decay"] = decay
        groups.append(group)
    return groups


def param_groups(
    backbone: nn.Module | None,
    heads: nn.Module | Iterable[nn.Module] = (),
    *,
    head_lr_mult: float = 10.0,
    bias_lr_mult: float = 2.0,
    bias_weight_decay: float | None = 0.0,
) -> list[dict[str, Any]]:
    """The authors' four groups: backbone (lr × 1, biases × 2) and heads (× 10, biases × 20).

    Pass the result to :func:`build_sgd`. Raises ValueError if a parameter would appear twice.
    """
    head_list = [heads] if isinstance(heads, nn.Module) else list(heads)
    groups: list[dict[str, Any]] = []
    if backbone is not None:
        groups += split_decay_groups(
            backbone, bias_lr_mult=bias_lr_mult, bias_weight_decay=bias_weight_decay
        )
    for head in head_list:
        groups += split_decay_groups(
            head,
            lr_mult=head_lr_mult,
            bias_lr_mult=bias_lr_mult,
            bias_weight_decay=bias_weight_decay,
        )
    seen: set[int] = set()
    for g in groups:
        for p in g["params"]:
            if id(p) in seen:
                raise ValueError("a parameter belongs to both the backbone and a head")
            seen.add(id(p))
    return groups


def build_sgd(
    groups: list[dict[str, Any]],
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    nesterov: bool = False,
) -> torch.optim.SGD:
    """SGD over parameter groups whose learning rates are multiples of ``lr``.

    Each group dict has ``"params"`` and optionally ``"lr_mult"`` (default 1.0) and
    ``"weight_decay"`` (default ``weight_decay``). The group's initial lr is ``lr * lr_mult``;
    the group keeps ``"lr_mult"`` and ``"base_lr"`` (= that initial lr), which :class:`PolyLR`
    decays from. The fused implementation is used where torch has it for the parameters' device.
    """
    torch_groups = []
    for g in groups:
        g = dict(g)
        g["params"] = list(g["params"])
        g.setdefault("lr_mult", 1.0)
        g.setdefault("weight_decay", weight_decay)
        g["lr"] = g["base_lr"] = lr * g["lr_mult"]
        torch_groups.append(g)
    kwargs = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    try:
        # One kernel for all parameters: on a CPU several times faster than the per-parameter
        # loop, which matters for backbones of many small tensors (EfficientNet-Lite0, ResNets).
        return FusedSGD(torch_groups, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.SGD(torch_groups, **kwargs)


class FusedSGD(torch.optim.SGD):
    """``torch.optim.SGD(fused=True)`` that also takes parameters whose first gradient comes late.

    torch's fused kernel takes momentum buffers for all of a group's parameters or for none
    (the first step); a parameter that gets its first gradient after the others (a loss term
    switched on later, a module unfrozen) would reach it without one. Such a parameter gets a
    zero buffer, which with ``dampening = 0`` gives it the plain loop's first update exactly
    (``buf = d_p``).
    """

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def, override]
        for group in self.param_groups:
            if not group.get("fused") or group["momentum"] == 0 or group["dampening"] != 0:
                continue
            with_grad = [p for p in group["params"] if p.grad is not None]
            missing = [p for p in with_grad if "momentum_buffer" not in self.state[p]]
            if missing and len(missing) < len(with_grad):
                for p in missing:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
        return super().step(closure)


class PolyLR:
    """Poly schedule: ``lr_g = base_lr_g * (1 - step / total_steps) ** power`` for every group g.

    ``base_lr`` is read from the group (``build_sgd`` stores it; otherwise the group's lr at
    construction). ``step()`` is called after each optimizer step; after ``total_steps`` steps the
    lr is 0 and stays there.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.power = power
        self.last_step = 0
        for g in optimizer.param_groups:
            g.setdefault("base_lr", g["lr"])
        self._apply()

    def factor(self, step: int | None = None) -> float:
        """Multiplier of the base lr at ``step`` (default: the current step)."""
        s = self.last_step if step is None else step
        s = min(max(s, 0), self.total_steps)
        return (1.0 - s / self.total_steps) ** self.power

    def get_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def _apply(self) -> None:
        f = self.factor()
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * f

    def step(self) -> None:
        """Advance one optimizer step and set every group's lr."""
        self.set_step(self.last_step + 1)

    def set_step(self, step: int) -> None:
        """Jump to ``step`` (the engine aligns every schedule on the global step)."""
        self.last_step = step
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "total_steps": self.total_steps, "power": self.power}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total_steps = int(state["total_steps"])
        self.power = float(state["power"])
        self.set_step(int(state["last_step"]))
