"""The one training loop every stage reuses.

Methods (CAM generators, C²AM-H, AffinityNet, DeepLabV3+) differ by their ``train_step`` and
losses, never by a new loop. The loop owns: epochs and deterministic sampling, gradient
accumulation, the poly LR of every optimizer, AMP, NaN/Inf guards, callbacks, progress (logged
lines, plus a bar on a terminal: :mod:`pnoc.engine.progress`) and checkpoint/resume that
reproduces an uninterrupted run bit for bit on CPU. What a method sees of it is in
:mod:`pnoc.engine.context`; how it runs (seed, device, …) is a
:class:`~pnoc.engine.runtime.Runtime`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from pnoc.engine import distributed
from pnoc.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pnoc.engine.context import FitResult, Method, TrainContext, TrainData
from pnoc.engine.optim import PolyLR
from pnoc.engine.progress import TrainingProgress
from pnoc.engine.runtime import Runtime
from pnoc.engine.sampling import make_loader, to_device
from pnoc.errors import ConfigError

__all__ = ["TrainData", "fit"]

log = logging.getLogger(__name__)

#: Per-worker batches below this many images get a warning when BatchNorm is not synchronised
#: (measured: 8 images per worker cost the embedded chain 4–5 CAM mIoU points, 16 nothing).
SMALL_BN_BATCH = 16


def fit(
    method: Method,
    data: TrainData,
    optimizers: Mapping[str, torch.optim.Optimizer],
    runtime: Runtime | None = None,
) -> FitResult:
    """Train ``method`` on ``data``; resume from ``runtime.checkpoint`` when it matches.

    Args:
        method: modules + ``train_step`` (see :class:`Method`).
        data: the dataset, batches and epochs (:class:`TrainData`).
        optimizers: named optimizers (e.g. from ``build_sgd``); each gets a :class:`PolyLR`
            (power 0.9) over the whole run and its own GradScaler.
        runtime: seed (sample order and augmentation seeds derive from ``(seed, epoch)``),
            device, AMP (fp16 autocast + GradScaler on CUDA; off elsewhere, as the start line
            says), DataLoader workers, callbacks (called in order), progress bar (only when
            stderr is a terminal; the progress lines are logged at INFO either way, see
            :mod:`pnoc.engine.progress`), checkpoint (None: no saving, no resuming) and
            channels-last: the modules' 4-D weights and the batches' 4-D floating tensors
            (images) in the channels-last memory format. Convolutions of a ResNet run faster so
            on recent CPUs (oneDNN) and on CUDA with AMP; depthwise or dilated networks may not:
            measure (``benchmarks/bench_cam_step.py --channels-last``). The results are the
            same up to float rounding. Default: ``Runtime()`` (seed 0, CPU).

    Batches are moved to the device (tensors inside dicts, lists, tuples and named tuples).
    On success the checkpoint file is deleted: the caller writes the final model.

    Data parallel: when a ``torch.distributed`` process group of several processes is
    initialised (:mod:`pnoc.engine.distributed`), every trainable module is wrapped in
    ``DistributedDataParallel`` and handed to the method's ``use_modules`` for its forward
    passes (each module under its own DDP and its own optimizer: P-NOC's generator and noc keep
    their update order; frozen networks such as the OC stay unwrapped). ``data.batch_size`` is
    the global batch: each rank takes ``batch_size / world size`` consecutive positions of every
    global batch of the seeded epoch order, with the positions' augmentation seeds, so the ranks
    together train on exactly the single-worker batches. Logged metrics are averaged over the
    ranks; only rank 0 saves checkpoints, and every rank resumes from rank 0's. A checkpoint
    saved with another number of workers resumes too: the global batch and the order are the
    same (BatchNorm statistics aside, which are per rank unless ``runtime.sync_bn``).
    ``runtime.sync_bn`` converts BatchNorm layers to ``SyncBatchNorm`` (CUDA only, as torch's).

    A resumed run continues with the data order, augmentation seeds, global RNG streams and
    optimizer/schedule/scaler state of the interrupted one: on CPU it ends with exactly the
    weights of an uninterrupted run; on CUDA, nondeterministic kernels may still make them
    differ slightly.
    """
    return _Run(method, data, optimizers, runtime or Runtime()).execute()


# ---------------------------------------------------------------------------------------------
# Implementation


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
        data: TrainData,
        optimizers: Mapping[str, torch.optim.Optimizer],
        runtime: Runtime,
    ) -> None:
        dataset, epochs, batch_size = data.dataset, data.epochs, data.batch_size
        grad_accum, max_steps_per_epoch = data.grad_accum, data.max_steps_per_epoch
        seed, checkpoint, device = runtime.seed, runtime.checkpoint, runtime.torch_device
        if not optimizers:
            raise ConfigError("fit() needs at least one optimizer")
        n = len(dataset)
        if n < 1:
            raise ConfigError("the training dataset is empty")

        self.method, self.data, self.runtime = method, data, runtime
        self.optimizers = dict(optimizers)
        self.epochs, self.seed, self.checkpoint, self.device = epochs, seed, checkpoint, device
        self.callbacks = list(runtime.callbacks)
        self.modules = dict(method.modules())
        self.channels_last = runtime.channels_last
        self.world = distributed.world()
        if self.world.distributed:
            distributed.per_rank_batch(batch_size, self.world.size)  # raises unless divisible
            if n < batch_size:
                raise ConfigError(
                    f"the training dataset has {n} samples, fewer than the global batch_size "
                    f"{batch_size} that {self.world.size} workers share"
                )
        if runtime.sync_bn and device.type != "cuda":
            raise ConfigError(
                f"base.sync_bn: torch's SyncBatchNorm runs on CUDA only; this run is on {device}"
            )

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

        self.amp = runtime.amp and device.type == "cuda"
        self.images_per_step = min(n, batch_size) * grad_accum

        self.schedulers = {
            k: PolyLR(o, max(self.total_steps, 1)) for k, o in self.optimizers.items()
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
            if self.runtime.sync_bn and self.world.distributed:
                # timm's converter keeps the activation of timm's fused BatchNorm + activation
                # layers (torch's would drop it); in place below the root, same parameters.
                from timm.layers import convert_sync_batchnorm

                convert_sync_batchnorm(m)
        # Optimizer state created later follows the parameters' device; state loaded from a
        # checkpoint is cast to it by Optimizer.load_state_dict.
        hook = getattr(self.method, "on_train_start", None)
        if callable(hook):  # before resuming: RNG draws here must not shift the restored streams
            hook(self.ctx)
        resumed = self._try_resume()
        if self.world.distributed:
            self._warn_small_batchnorm()
            self._use(self._wrap_ddp())

        progress = TrainingProgress(
            epochs=self.epochs,
            steps_per_epoch=self.steps_per_epoch,
            images_per_step=self.images_per_step,
            start_step=self.global_step,
            enabled=self.runtime.progress and self.world.is_main,
        )
        progress.start(f"{self._where()}, {self._precision()}")
        try:
            while self.epoch < self.epochs:
                self._run_epoch(progress)
            with _keep_training_flags(self.modules):
                for cb in self.callbacks:
                    cb.on_train_end(self.ctx)
        finally:
            progress.close()
            if self.world.distributed:
                self._use(self.modules)
        if self.checkpoint is not None and self.world.is_main:
            self.checkpoint.path.unlink(missing_ok=True)
        return FitResult(
            steps=self.global_step,
            epochs=self.epoch,
            resumed_from_step=resumed,
            history=list(self.history),
            seconds=time.perf_counter() - t0,
        )

    def _where(self) -> str:
        if not self.world.distributed:
            return str(self.device)
        return (
            f"{self.world.size} workers ({torch.distributed.get_backend()}, DDP, "
            f"{self.batch_size // self.world.size} images each per micro-batch), {self.device}"
        )

    def _warn_small_batchnorm(self) -> None:
        per_worker = self.batch_size // self.world.size
        plain_bn = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not isinstance(m, nn.SyncBatchNorm)
            and m.training
            for root in self.modules.values()
            for m in root.modules()
        )
        if plain_bn and per_worker < SMALL_BN_BATCH and self.world.is_main:
            log.warning(
                "BatchNorm statistics over %d images per worker (batch_size %d / %d workers): "
                "below %d they can cost quality (docs/scale-out.md); raise batch_size or use "
                "base.sync_bn on CUDA",
                per_worker,
                self.batch_size,
                self.world.size,
                SMALL_BN_BATCH,
            )

    def _wrap_ddp(self) -> dict[str, nn.Module]:
        """The modules as the method must call them: each one with trainable parameters under
        its own ``DistributedDataParallel`` (rank 0's weights broadcast on wrapping)."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return {
            k: DistributedDataParallel(m, device_ids=ids)
            if any(p.requires_grad for p in m.parameters())
            else m
            for k, m in self.modules.items()
        }

    def _use(self, modules: dict[str, nn.Module]) -> None:
        use = getattr(self.method, "use_modules", None)
        if not callable(use):
            raise ConfigError(
                f"{type(self.method).__name__} cannot train data-parallel: it has no "
                "use_modules() to receive its DistributedDataParallel modules"
            )
        use(modules)

    def _precision(self) -> str:
        if self.amp:
            return "fp16 autocast (AMP)"
        if self.runtime.amp:  # params default to amp: true for GPUs; on a CPU it is simply off
            return f"float32 (AMP applies to CUDA only, off on {self.device.type})"
        return "float32"

    def _run_epoch(self, progress: TrainingProgress) -> None:
        ctx = self.ctx
        ctx.epoch = self.epoch
        loader = make_loader(
            self.data.dataset,
            batch_size=self.batch_size,
            seed=self.seed,
            epoch=self.epoch,
            start_batch=self.batches_done,
            shuffle=True,
            drop_last=self.drop_last,
            num_workers=self.runtime.num_workers,
            collate_fn=self.data.collate_fn,
            pin_memory=self.device.type == "cuda",
            rank=self.world.rank,
            world_size=self.world.size,
        )
        batches = iter(loader)
        for step_in_epoch in range(self.batches_done // self.grad_accum, self.steps_per_epoch):
            self._step_start_rng = rng_state()
            ctx._begin_step(self.epoch, self.global_step)
            lrs = {f"lr/{k}": float(o.param_groups[0]["lr"]) for k, o in self.optimizers.items()}
            micro_metrics: list[dict[str, float]] = []
            for micro in range(self.grad_accum):
                batch = to_device(next(batches), self.device, self.channels_last)
                ctx._begin_micro(micro)
                out = self.method.train_step(batch, ctx)
                micro_metrics.append({k: _scalar(v) for k, v in (out or {}).items()})
            ctx._end_step()

            self.global_step += 1
            self.batches_done = (step_in_epoch + 1) * self.grad_accum
            metrics = distributed.mean_over_ranks(_mean_dicts(micro_metrics))
            metrics.update(lrs)
            for k, v in metrics.items():
                self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v
                self.epoch_counts[k] = self.epoch_counts.get(k, 0) + 1
            with _keep_training_flags(self.modules):
                for cb in self.callbacks:
                    cb.on_step_end(ctx, metrics)
            progress.step(
                self.epoch,
                self.global_step,
                {k: self.epoch_sums[k] / self.epoch_counts[k] for k in self.epoch_sums},
            )
            last_of_epoch = step_in_epoch == self.steps_per_epoch - 1
            every = self.checkpoint.every_steps if self.checkpoint else 0
            if every and not last_of_epoch and self.global_step % every == 0:
                self._save()
        del batches  # shuts DataLoader workers down before the next epoch starts its own

        means = {k: self.epoch_sums[k] / self.epoch_counts[k] for k in self.epoch_sums}
        self.history.append(means)
        progress.end_epoch(self.epoch, self.global_step, means)
        with _keep_training_flags(self.modules):
            for cb in self.callbacks:
                cb.on_epoch_end(ctx, means)
        self.epoch += 1
        self.batches_done = 0
        self.epoch_sums, self.epoch_counts = {}, {}
        if self.checkpoint is not None and self.epoch < self.epochs:
            self._save()

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
            "world_size": self.world.size,
        }

    def _save(self) -> None:
        assert self.checkpoint is not None
        if not self.world.is_main:
            return
        save_checkpoint(self.checkpoint.path, self._state(rng_state()))
        log.debug("checkpoint saved at step %d: %s", self.global_step, self.checkpoint.path)

    def _save_step_start(self) -> None:
        """Checkpoint the state of the start of the step in progress (called on NaN/Inf).

        Parameters are still those of the step's start unless a method updated another optimizer
        earlier in the same step (P-NOC's generator before its noc): that one's update is kept.
        """
        assert self.checkpoint is not None and self._step_start_rng is not None
        if not self.world.is_main:
            return
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
        saved_by = int(state.get("world_size", 1))
        if saved_by != self.world.size:
            log.info(
                "the checkpoint was saved by %d worker(s) and resumes with %d: same global batch "
                "and sample order (per-worker BatchNorm statistics are not part of it)",
                saved_by,
                self.world.size,
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
