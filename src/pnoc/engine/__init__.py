"""One training loop for every stage: sampling, poly LR, AMP, checkpoint/resume, callbacks."""

from pnoc.engine.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pnoc.engine.optim import PolyLR, build_sgd, param_groups, split_decay_groups
from pnoc.engine.sampling import EpochSampler, epoch_keys, make_loader
from pnoc.engine.trainer import (
    Callback,
    CheckpointConfig,
    FitResult,
    Method,
    TrainContext,
    fit,
    resolve_device,
)

__all__ = [
    "Callback",
    "CheckpointConfig",
    "EpochSampler",
    "FitResult",
    "Method",
    "PolyLR",
    "TrainContext",
    "build_sgd",
    "epoch_keys",
    "fit",
    "load_checkpoint",
    "make_loader",
    "param_groups",
    "resolve_device",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "split_decay_groups",
]
