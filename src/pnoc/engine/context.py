"""What a training method sees of the loop (its context, its protocol, callbacks, the result)
and what the loop trains on (:class:`TrainData`).

Vocabulary:

* a *micro-batch* is one batch of ``batch_size`` samples handed to ``Method.train_step``;
* a *step* is one optimizer step = ``grad_accum`` micro-batches; ``TrainContext.step`` is its
  0-based global index and schedules (poly LR, loss ramps) run on it.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from pnoc.engine import distributed
from pnoc.engine.optim import PolyLR
from pnoc.errors import ConfigError, NonFiniteLossError

__all__ = ["Callback", "FitResult", "Method", "TrainContext", "TrainData"]


class TrainContext:
    """What ``Method.train_step`` gets each micro-batch: position, device, AMP and ``update``.

    Attributes:
        epoch: current epoch (0-based).
        step: global optimizer-step index (0-based) of the step in progress.
        total_steps: optimizer steps of the whole run (epochs × steps_per_epoch).
        steps_per_epoch: optimizer steps per epoch.
        micro_step: index of the micro-batch inside the step, in [0, grad_accum).
        grad_accum: micro-batches per optimizer step.
        device: where modules and batches live.
        amp: whether mixed precision is in effect (only ever True on CUDA).
    """

    def __init__(
        self,
        *,
        device: torch.device,
        amp: bool,
        total_steps: int,
        steps_per_epoch: int,
        grad_accum: int,
        optimizers: Mapping[str, torch.optim.Optimizer],
        schedulers: Mapping[str, PolyLR],
        scalers: Mapping[str, torch.amp.GradScaler],
        on_nonfinite: Callable[[], None] | None = None,
    ) -> None:
        self.epoch = 0
        self.step = 0
        self.micro_step = 0
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.grad_accum = grad_accum
        self.device = device
        self.amp = amp
        self._optimizers = dict(optimizers)
        self._schedulers = dict(schedulers)
        self._scalers = dict(scalers)
        self._on_nonfinite = on_nonfinite
        self._updates: dict[str, int] = defaultdict(int)  # update() calls in the current step
        self._updated_in_micro: set[str] = set()

    @property
    def progress(self) -> float:
        """``step / total_steps`` in [0, 1): what loss ramps and schedules use."""
        return self.step / self.total_steps if self.total_steps else 0.0

    @property
    def is_accumulation_boundary(self) -> bool:
        """True on the last micro-batch of a step (where ``update`` steps the optimizer)."""
        return self.micro_step == self.grad_accum - 1

    def lr(self, optimizer: str, group: int = 0) -> float:
        """Current learning rate of one parameter group of a named optimizer."""
        return float(self._optimizer(optimizer).param_groups[group]["lr"])

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed-precision context for forward passes (fp16 on CUDA; a no-op otherwise)."""
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def update(
        self,
        optimizer: str,
        loss: torch.Tensor,
        terms: Mapping[str, torch.Tensor | float] | None = None,
        *,
        max_grad_norm: float | None = None,
    ) -> None:
        """Backpropagate ``loss`` into the named optimizer's parameters; step it at the boundary.

        1. ``terms`` (then ``loss``, named ``"loss"``) are checked for NaN/Inf; on failure the
           last good state (that of the start of this step) is checkpointed and
           :class:`NonFiniteLossError` names the term and the step.
        2. ``(loss / grad_accum)`` is backpropagated through this optimizer's GradScaler.
        3. On the last micro-batch of the step: unscale, optional grad-norm clipping over the
           optimizer's parameters, ``optimizer.step``, ``zero_grad(set_to_none=True)`` and the
           optimizer's poly-LR step.

        Several optimizers may be updated in one ``train_step``, in the order of the calls
        (P-NOC: generator, then noc). Each update zeroes only its own optimizer's gradients; a
        method that must keep one loss's gradient out of another module's parameters sets
        ``requires_grad`` (or detaches) itself.
        """
        opt = self._optimizer(optimizer)
        if optimizer in self._updated_in_micro:
            raise RuntimeError(
                f"optimizer '{optimizer}' updated twice in one micro-batch; sum the losses first"
            )
        self._check_finite(loss, terms)
        scaler = self._scalers[optimizer]
        scaler.scale(loss / self.grad_accum).backward()
        self._updated_in_micro.add(optimizer)
        self._updates[optimizer] += 1
        if self.is_accumulation_boundary:
            scaler.unscale_(opt)
            if max_grad_norm is not None:
                params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            self._schedulers[optimizer].step()

    # -- engine side -------------------------------------------------------------------------

    def _optimizer(self, name: str) -> torch.optim.Optimizer:
        try:
            return self._optimizers[name]
        except KeyError:
            raise KeyError(
                f"unknown optimizer '{name}'; fit() was given {sorted(self._optimizers)}"
            ) from None

    def _check_finite(
        self, loss: torch.Tensor, terms: Mapping[str, torch.Tensor | float] | None
    ) -> None:
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"loss must be a torch.Tensor, got {type(loss).__name__}")
        # Terms first: when a term is NaN the total is too, and the term is the useful name.
        named = [*(terms or {}).items(), ("loss", loss)]
        flat = [
            torch.as_tensor(v).detach().to(device=loss.device, dtype=torch.float32).reshape(-1)
            for _, v in named
        ]
        finite = bool(torch.isfinite(torch.cat(flat)).all())  # one device sync for all terms
        # Data parallel: every rank stops on the same step (else the others wait forever).
        if not distributed.any_rank(not finite):
            return
        if self._on_nonfinite is not None:
            self._on_nonfinite()
        for (name, _), values in zip(named, flat, strict=True):
            bad = values[~torch.isfinite(values)]
            if bad.numel():
                raise NonFiniteLossError(self.step, name, float(bad[0].item()))
        raise NonFiniteLossError(
            self.step, f"loss of another worker than {distributed.world()}", float("nan")
        )

    def _begin_micro(self, micro_step: int) -> None:
        self.micro_step = micro_step
        self._updated_in_micro = set()

    def _begin_step(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step
        self._updates = defaultdict(int)
        # Align every schedule on the global step, so an optimizer a method skips on some steps
        # still follows the same poly curve.
        for sched in self._schedulers.values():
            sched.set_step(step)

    def _end_step(self) -> None:
        for name, n in self._updates.items():
            if n not in (0, self.grad_accum):
                raise RuntimeError(
                    f"optimizer '{name}' was updated on {n} of {self.grad_accum} micro-batches of "
                    f"step {self.step}; update it on every micro-batch of a step or on none"
                )


@runtime_checkable
class Method(Protocol):
    """A training method: its modules and its step. The loop is ``fit``'s.

    Optional members, used when present:
        ``state_dict() -> dict`` / ``load_state_dict(dict)``: extra state to checkpoint (plain
        types and tensors only: checkpoints are read with ``weights_only=True``);
        ``on_train_start(ctx)``: called once, after modules are on the device and before any
        checkpoint is loaded (e.g. to move frozen helper networks to ``ctx.device``).
    """

    def modules(self) -> dict[str, nn.Module]:
        """All trainable state, checkpointed under these names."""
        ...

    def train_step(self, batch: Any, ctx: TrainContext) -> dict[str, float]:
        """One micro-batch: forward, ``ctx.update(...)``; returns scalars to log."""
        ...


class Callback:
    """Hooks into ``fit``; every method is a no-op here. Subclass and override what you need.

    Modules' train/eval flags are restored after each hook, so an evaluating callback may call
    ``eval()`` freely.
    """

    def on_step_end(self, ctx: TrainContext, metrics: dict[str, float]) -> None:
        """After each optimizer step; ``metrics`` = the step's values (micro-batch means) plus
        ``lr/<optimizer>`` (first group's lr used by the step)."""

    def on_epoch_end(self, ctx: TrainContext, metrics: dict[str, float]) -> None:
        """After each epoch; ``metrics`` = epoch means of the step metrics."""

    def on_train_end(self, ctx: TrainContext) -> None:
        """After the last epoch, before the checkpoint file is deleted."""


@dataclass
class FitResult:
    """steps: optimizer steps of the whole run; epochs: epochs done; resumed_from_step: global
    step the run resumed at (None: fresh start); history: per-epoch metric means; seconds: wall
    time of this call."""

    steps: int
    epochs: int
    resumed_from_step: int | None
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class TrainData:
    """What ``fit`` trains on and for how long.

    dataset: map-style dataset indexed by :class:`~pnoc.data.base.SampleKey`.
    epochs: number of epochs.
    batch_size: samples per micro-batch. An epoch has ``len(dataset) // batch_size``
        micro-batches (the incomplete last batch is dropped); a dataset smaller than
        ``batch_size`` gives one smaller batch per epoch.
    grad_accum: micro-batches per optimizer step (effective batch = batch_size × grad_accum);
        clamped (with a warning) to the micro-batches an epoch has.
    collate_fn: passed to the DataLoader.
    max_steps_per_epoch: cap on optimizer steps per epoch (smoke runs, tests).
    """

    dataset: Any
    epochs: int
    batch_size: int
    grad_accum: int = 1
    collate_fn: Callable[[list[Any]], Any] | None = None
    max_steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.grad_accum < 1:
            raise ConfigError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError(f"max_steps_per_epoch must be >= 1, got {self.max_steps_per_epoch}")
