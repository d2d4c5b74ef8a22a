"""One training loop for every stage: sampling, poly LR, AMP, checkpoint/resume, callbacks,
progress (:mod:`pnoc.engine.progress`)."""

from pnoc.engine.checkpoint import (
    CheckpointConfig,
    fingerprint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pnoc.engine.context import Callback, FitResult, Method, TrainContext
from pnoc.engine.optim import PolyLR, build_sgd, param_groups, split_decay_groups
from pnoc.engine.runtime import Runtime, resolve_device, seed_everything
from pnoc.engine.sampling import EpochSampler, epoch_keys, make_loader
from pnoc.engine.trainer import TrainData, fit

__all__ = [
    "Callback",
    "CheckpointConfig",
    "EpochSampler",
    "FitResult",
    "Method",
    "PolyLR",
    "Runtime",
    "TrainContext",
    "TrainData",
    "build_sgd",
    "epoch_keys",
    "fingerprint",
    "fit",
    "load_checkpoint",
    "make_loader",
    "param_groups",
    "resolve_device",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "split_decay_groups",
]
