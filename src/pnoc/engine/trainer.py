"""The one training loop every stage reuses.

Methods (CAM generators, C²AM-H, AffinityNet, DeepLabV3+) differ by their ``train_step`` and
losses, never by a new loop. The loop owns: epochs and deterministic sampling, gradient
accumulation, the poly LR of every optimizer, AMP, NaN/Inf guards, callbacks, a progress bar and
checkpoint/resume that reproduces an uninterrupted run bit for bit on CPU.

Vocabulary:

* a *micro-batch* is one batch of ``batch_size`` samples handed to ``Method.train_step``;
* a *step* is one optimizer step = ``grad_accum`` micro-batches; ``TrainContext.step`` is its
  0-based global index and schedules (poly LR, loss ramps) run on it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from pnoc.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pnoc.engine.optim import PolyLR
from pnoc.engine.sampling import make_loader
from pnoc.errors import ConfigError, NonFiniteLossError

__all__ = [
    "Callback",
    "CheckpointConfig",
    "FitResult",
    "Method",
    "TrainContext",
    "fit",
    "resolve_device",
]

log = logging.getLogger(__name__)

_amp_cpu_logged = False


@dataclass
class CheckpointConfig:
    """Where and how often ``fit`` saves its resumable state.

    path: e.g. ``.pnoc/checkpoints/train_cam.ckpt``. Not a DVC output: DVC deletes a stage's
        outputs before running it, which would defeat resuming.
    every_steps: save every this many optimizer steps (0: only at epoch ends); a checkpoint is
        also saved at every epoch end.
    fingerprint: hash of the stage config. A checkpoint with another fingerprint (or another
        data/batch layout) is ignored, with a log line, and training starts fresh.
    """

    path: Path
    every_steps: int = 50
    fingerprint: str = ""

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.every_steps < 0:
            raise ConfigError(f"checkpoint every_steps must be >= 0, got {self.every_steps}")


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
        if bool(torch.isfinite(torch.cat(flat)).all()):  # one device sync for all terms
            return
        for (name, _), values in zip(named, flat, strict=True):
            bad = values[~torch.isfinite(values)]
            if bad.numel():
                if self._on_nonfinite is not None:
                    self._on_nonfinite()
                raise NonFiniteLossError(self.step, name, float(bad[0].item()))

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


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else as ``torch.device``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def fit(
    method: Method,
    dataset: Any,
    *,
    optimizers: Mapping[str, torch.optim.Optimizer],
    epochs: int,
    batch_size: int,
    seed: int,
    checkpoint: CheckpointConfig | None = None,
    device: str | torch.device = "cpu",
    amp: bool = False,
    grad_accum: int = 1,
    poly_power: float = 0.9,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    max_steps_per_epoch: int | None = None,
    channels_last: bool = False,
) -> FitResult:
    """Train ``method`` on ``dataset``; resume from ``checkpoint`` when it matches.

    Args:
        method: modules + ``train_step`` (see :class:`Method`).
        dataset: map-style dataset indexed by :class:`~pnoc.data.base.SampleKey`.
        optimizers: named optimizers (e.g. from ``build_sgd``); each gets a :class:`PolyLR` over
            the whole run and its own GradScaler.
        epochs: number of epochs.
        batch_size: samples per micro-batch. An epoch has ``len(dataset) // batch_size``
            micro-batches (the incomplete last batch is dropped); a dataset smaller than
            ``batch_size`` gives one smaller batch per epoch.
        seed: run seed; sample order and augmentation seeds derive from ``(seed, epoch)``.
        checkpoint: where to save/resume; None disables both.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` or a ``torch.device``.
        amp: fp16 autocast + GradScaler on CUDA; a logged no-op elsewhere.
        grad_accum: micro-batches per optimizer step (effective batch = batch_size × grad_accum);
            clamped (with a warning) to the micro-batches an epoch has.
        poly_power: exponent of the poly LR.
        num_workers, collate_fn: passed to the DataLoader.
        callbacks: :class:`Callback` instances, called in order.
        progress: show a tqdm bar (only when stderr is a terminal).
        max_steps_per_epoch: cap on optimizer steps per epoch (smoke runs, tests).
        channels_last: keep the modules' 4-D weights and the batches' 4-D floating tensors
            (images) in the channels-last memory format. Convolutions of a ResNet run faster so
            on recent CPUs (oneDNN) and on CUDA with AMP; depthwise or dilated networks may not:
            measure (``benchmarks/bench_cam_step.py --channels-last``). The results are the same
            up to float rounding.

    Batches are moved to ``device`` (tensors inside dicts, lists, tuples and named tuples).
    On success the checkpoint file is deleted: the caller writes the final model.

    A resumed run continues with the data order, augmentation seeds, global RNG streams and
    optimizer/schedule/scaler state of the interrupted one: on CPU it ends with exactly the
    weights of an uninterrupted run; on CUDA, nondeterministic kernels may still make them
    differ slightly.
    """
    return _Run(
        method,
        dataset,
        optimizers=optimizers,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        checkpoint=checkpoint,
        device=resolve_device(device),
        amp=amp,
        grad_accum=grad_accum,
        poly_power=poly_power,
        num_workers=num_workers,
        collate_fn=collate_fn,
        callbacks=list(callbacks),
        progress=progress,
        max_steps_per_epoch=max_steps_per_epoch,
        channels_last=channels_last,
    ).execute()


# ---------------------------------------------------------------------------------------------
# Implementation


def _to_device(obj: Any, device: torch.device, channels_last: bool = False) -> Any:
    if isinstance(obj, torch.Tensor):
        if channels_last and obj.dim() == 4 and obj.is_floating_point():
            return obj.to(device, non_blocking=True, memory_format=torch.channels_last)
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device, channels_last) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # named tuple
        return type(obj)(*(_to_device(v, device, channels_last) for v in obj))
    if isinstance(obj, list | tuple):
        return type(obj)(_to_device(v, device, channels_last) for v in obj)
    return obj


@contextlib.contextmanager
def _keep_training_flags(modules: Mapping[str, nn.Module]) -> Iterator[None]:
    """Restore every submodule's train/eval flag after a callback (it may have evaluated)."""
    flags = [(m, m.training) for root in modules.values() for m in root.modules()]
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


class _Run:
    """State of one ``fit`` call: layout, position, history; saves and loads checkpoints."""

    def __init__(
        self,
        method: Method,
        dataset: Any,
        *,
        optimizers: Mapping[str, torch.optim.Optimizer],
        epochs: int,
        batch_size: int,
        seed: int,
        checkpoint: CheckpointConfig | None,
        device: torch.device,
        amp: bool,
        grad_accum: int,
        poly_power: float,
        num_workers: int,
        collate_fn: Callable[[list[Any]], Any] | None,
        callbacks: list[Callback],
        progress: bool,
        max_steps_per_epoch: int | None,
        channels_last: bool = False,
    ) -> None:
        if epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {epochs}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if grad_accum < 1:
            raise ConfigError(f"grad_accum must be >= 1, got {grad_accum}")
        if max_steps_per_epoch is not None and max_steps_per_epoch < 1:
            raise ConfigError(f"max_steps_per_epoch must be >= 1, got {max_steps_per_epoch}")
        if not optimizers:
            raise ConfigError("fit() needs at least one optimizer")
        n = len(dataset)
        if n < 1:
            raise ConfigError("the training dataset is empty")

        self.method = method
        self.dataset = dataset
        self.optimizers = dict(optimizers)
        self.epochs = epochs
        self.seed = seed
        self.checkpoint = checkpoint
        self.device = device
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.callbacks = callbacks
        self.progress = progress
        self.modules = dict(method.modules())
        self.channels_last = channels_last

        # Layout: micro-batches per epoch, then optimizer steps per epoch.
        self.batch_size = batch_size
        if n < batch_size:
            log.info(
                "dataset has %d samples < batch_size %d: one smaller batch per epoch", n, batch_size
            )
            micro_per_epoch, self.drop_last = 1, False
        else:
            micro_per_epoch, self.drop_last = n // batch_size, True
        if grad_accum > micro_per_epoch:
            log.warning(
                "grad_accum %d exceeds the %d micro-batches of an epoch; using %d",
                grad_accum,
                micro_per_epoch,
                micro_per_epoch,
            )
            grad_accum = micro_per_epoch
        self.grad_accum = grad_accum
        self.steps_per_epoch = micro_per_epoch // grad_accum
        if max_steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, max_steps_per_epoch)
        self.total_steps = epochs * self.steps_per_epoch
        self.layout = {
            "dataset_len": n,
            "batch_size": batch_size,
            "grad_accum": grad_accum,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": epochs,
            "seed": seed,
            "modules": sorted(self.modules),
            "optimizers": sorted(self.optimizers),
        }

        global _amp_cpu_logged
        self.amp = amp and device.type == "cuda"
        if amp and not self.amp and not _amp_cpu_logged:
            log.info("amp=True has no effect on %s: training in float32", device.type)
            _amp_cpu_logged = True

        self.schedulers = {
            k: PolyLR(o, max(self.total_steps, 1), poly_power) for k, o in self.optimizers.items()
        }
        self.scalers = {k: torch.amp.GradScaler("cuda", enabled=self.amp) for k in self.optimizers}
        self.ctx = TrainContext(
            device=device,
            amp=self.amp,
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
            grad_accum=grad_accum,
            optimizers=self.optimizers,
            schedulers=self.schedulers,
            scalers=self.scalers,
            on_nonfinite=self._save_step_start if checkpoint else None,
        )

        # Position: the next step to run is (epoch, batches_done micro-batches into it).
        self.epoch = 0
        self.batches_done = 0
        self.global_step = 0
        self.history: list[dict[str, float]] = []
        self.epoch_sums: dict[str, float] = {}
        self.epoch_counts: dict[str, int] = {}
        self._step_start_rng: dict[str, Any] | None = None

    # -- main loop -----------------------------------------------------------------------------

    def execute(self) -> FitResult:
        t0 = time.perf_counter()
        for m in self.modules.values():
            m.to(self.device).train()
            if self.channels_last:
                m.to(memory_format=torch.channels_last)
        # Optimizer state created later follows the parameters' device; state loaded from a
        # checkpoint is cast to it by Optimizer.load_state_dict.
        hook = getattr(self.method, "on_train_start", None)
        if callable(hook):  # before resuming: RNG draws here must not shift the restored streams
            hook(self.ctx)
        resumed = self._try_resume()

        bar = self._progress_bar()
        try:
            while self.epoch < self.epochs:
                self._run_epoch(bar)
            with _keep_training_flags(self.modules):
                for cb in self.callbacks:
                    cb.on_train_end(self.ctx)
        finally:
            if bar is not None:
                bar.close()
        if self.checkpoint is not None:
            self.checkpoint.path.unlink(missing_ok=True)
        return FitResult(
            steps=self.global_step,
            epochs=self.epoch,
            resumed_from_step=resumed,
            history=list(self.history),
            seconds=time.perf_counter() - t0,
        )

    def _run_epoch(self, bar: Any) -> None:
        ctx = self.ctx
        ctx.epoch = self.epoch
        loader = make_loader(
            self.dataset,
            batch_size=self.batch_size,
            seed=self.seed,
            epoch=self.epoch,
            start_batch=self.batches_done,
            shuffle=True,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.device.type == "cuda",
        )
        batches = iter(loader)
        for step_in_epoch in range(self.batches_done // self.grad_accum, self.steps_per_epoch):
            self._step_start_rng = rng_state()
            ctx._begin_step(self.epoch, self.global_step)
            lrs = {f"lr/{k}": float(o.param_groups[0]["lr"]) for k, o in self.optimizers.items()}
            micro_metrics: list[dict[str, float]] = []
            for micro in range(self.grad_accum):
                batch = _to_device(next(batches), self.device, self.channels_last)
                ctx._begin_micro(micro)
                out = self.method.train_step(batch, ctx)
                micro_metrics.append({k: _scalar(v) for k, v in (out or {}).items()})
            ctx._end_step()

            self.global_step += 1
            self.batches_done = (step_in_epoch + 1) * self.grad_accum
            metrics = _mean_dicts(micro_metrics)
            metrics.update(lrs)
            for k, v in metrics.items():
                self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v
                self.epoch_counts[k] = self.epoch_counts.get(k, 0) + 1
            with _keep_training_flags(self.modules):
                for cb in self.callbacks:
                    cb.on_step_end(ctx, metrics)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    {k: f"{v:.4g}" for k, v in list(metrics.items())[:4]}, refresh=False
                )
            last_of_epoch = step_in_epoch == self.steps_per_epoch - 1
            every = self.checkpoint.every_steps if self.checkpoint else 0
            if every and not last_of_epoch and self.global_step % every == 0:
                self._save()
        del batches  # shuts DataLoader workers down before the next epoch starts its own

        means = {k: self.epoch_sums[k] / self.epoch_counts[k] for k in self.epoch_sums}
        self.history.append(means)
        with _keep_training_flags(self.modules):
            for cb in self.callbacks:
                cb.on_epoch_end(ctx, means)
        self.epoch += 1
        self.batches_done = 0
        self.epoch_sums, self.epoch_counts = {}, {}
        if self.checkpoint is not None and self.epoch < self.epochs:
            self._save()

    def _progress_bar(self) -> Any:
        if not self.progress or not sys.stderr.isatty():
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.total_steps,
            initial=self.global_step,
            unit="step",
            dynamic_ncols=True,
            leave=False,
        )

    # -- checkpoints ---------------------------------------------------------------------------

    def _state(self, rng: dict[str, Any]) -> dict[str, Any]:
        extra = getattr(self.method, "state_dict", None)
        return {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": self.checkpoint.fingerprint if self.checkpoint else "",
            "layout": self.layout,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scalers": {k: s.state_dict() for k, s in self.scalers.items()},
            "method": extra() if callable(extra) else None,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "global_step": self.global_step,
            "history": self.history,
            "epoch_sums": self.epoch_sums,
            "epoch_counts": self.epoch_counts,
            "rng": rng,
        }

    def _save(self) -> None:
        assert self.checkpoint is not None
        save_checkpoint(self.checkpoint.path, self._state(rng_state()))
        log.debug("checkpoint saved at step %d: %s", self.global_step, self.checkpoint.path)

    def _save_step_start(self) -> None:
        """Checkpoint the state of the start of the step in progress (called on NaN/Inf).

        Parameters are still those of the step's start unless a method updated another optimizer
        earlier in the same step (P-NOC's generator before its noc): that one's update is kept.
        """
        assert self.checkpoint is not None and self._step_start_rng is not None
        state = self._state(self._step_start_rng)
        state["global_step"] = self.ctx.step
        state["batches_done"] = (self.ctx.step - self.epoch * self.steps_per_epoch) * (
            self.grad_accum
        )
        save_checkpoint(self.checkpoint.path, state)
        log.warning(
            "non-finite loss at step %d: last good state saved to %s",
            self.ctx.step,
            self.checkpoint.path,
        )

    def _try_resume(self) -> int | None:
        cfg = self.checkpoint
        state = load_checkpoint(cfg.path) if cfg is not None else None
        if cfg is None or state is None:
            return None
        if state.get("format") != CHECKPOINT_FORMAT or state.get("fingerprint") != cfg.fingerprint:
            log.info(
                "ignoring checkpoint %s: its fingerprint %r differs from %r; starting fresh",
                cfg.path,
                state.get("fingerprint"),
                cfg.fingerprint,
            )
            return None
        if state.get("layout") != self.layout:
            log.info(
                "ignoring checkpoint %s: saved for layout %s, this run is %s; starting fresh",
                cfg.path,
                state.get("layout"),
                self.layout,
            )
            return None

        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        for k, sc in self.scalers.items():
            if state["scalers"][k]:  # empty when saved by a disabled (non-AMP) scaler
                sc.load_state_dict(state["scalers"][k])
        load_extra = getattr(self.method, "load_state_dict", None)
        if state["method"] is not None and callable(load_extra):
            load_extra(state["method"])
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])
        self.global_step = int(state["global_step"])
        self.history = [dict(h) for h in state["history"]]
        self.epoch_sums = dict(state["epoch_sums"])
        self.epoch_counts = dict(state["epoch_counts"])
        # Last, so nothing between here and the next step draws from the restored streams.
        set_rng_state(state["rng"])
        log.info(
            "resumed from step %d (epoch %d, batch %d) of %s",
            self.global_step,
            self.epoch,
            self.batches_done,
            cfg.path,
        )
        return self.global_step


def _scalar(v: Any) -> float:
    return float(v.detach().item()) if isinstance(v, torch.Tensor) else float(v)


def _mean_dicts(dicts: list[dict[str, float]]) -> dict[str, float]:
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            sums[k] = sums.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}
