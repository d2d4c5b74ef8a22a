"""How a step runs, as opposed to what it computes: seed, device, AMP, workers, progress,
checkpoint, callbacks and memory format, built once per stage and handed to every library step.

The typed params (``pnoc.config``) say *what* a step computes; :class:`Runtime` says *how* and
*where*. The same recipe run with another device or number of loader workers computes the same
thing, and the stage, the ablation and the sweeps build their runtimes differently (a checkpoint
and an MLflow logger for the stage, an evaluating callback for a sweep trial).
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from pnoc.config import DEVICE_PATTERN, BaseParams
from pnoc.engine.checkpoint import CheckpointConfig
from pnoc.engine.distributed import worker_device
from pnoc.engine.progress import track
from pnoc.errors import ConfigError

__all__ = ["Runtime", "resolve_device", "seed_everything"]

T = TypeVar("T")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → CUDA when a GPU is visible, else CPU; ``cuda[:N]`` without CUDA is refused.

    The one device resolver of the project: the stages, the ablation, the sweeps and ``fit``
    all go through it.
    """
    if isinstance(device, torch.device):
        return device
    if not re.match(DEVICE_PATTERN, device):
        raise ConfigError(f"base.device: expected auto, cpu, cuda or cuda:<index>, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"base.device: '{device}' requested but no CUDA device is available")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"base.device: '{device}' requested but only {torch.cuda.device_count()} CUDA "
                "device(s) are visible"
            )
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


@dataclass(frozen=True)
class Runtime:
    """Run settings of one step.

    seed: every random draw of a training step derives from it; each training step reseeds the
        global generators with it before building its networks, so what ran earlier in the
        process (another step, a checkpoint load) never changes what it trains.
    device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` or a ``torch.device``.
    amp: fp16 autocast + GradScaler on CUDA; ignored elsewhere.
    num_workers: DataLoader worker processes.
    progress: progress bars (on a terminal only; the progress lines of training and the
        summary lines of :meth:`track` are logged either way: :mod:`pnoc.engine.progress`).
    checkpoint: where training saves and resumes; None disables both.
    callbacks: engine callbacks (:class:`pnoc.engine.Callback`), e.g. an MLflow logger or a
        sweep's epoch-end evaluation.
    channels_last: NHWC weights and images (see :func:`pnoc.engine.fit`).
    sync_bn: under data-parallel training, BatchNorm statistics over the global batch
        (``SyncBatchNorm``, CUDA only); without it each worker normalises its own part.
    """

    seed: int = 0
    device: str | torch.device = "cpu"
    amp: bool = False
    num_workers: int = 0
    progress: bool = True
    checkpoint: CheckpointConfig | None = None
    callbacks: Sequence[Any] = ()
    channels_last: bool = False
    sync_bn: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "callbacks", tuple(self.callbacks))
        if self.num_workers < 0:
            raise ConfigError(f"num_workers: expected >= 0, got {self.num_workers}")

    @classmethod
    def from_params(cls, base: BaseParams, **changes: Any) -> Runtime:
        """The run settings params.yaml's ``base`` section gives (seed, device, AMP, workers,
        progress, sync_bn; on CUDA under several workers, each on ``cuda:LOCAL_RANK``), with
        ``changes`` (e.g. ``seed=1``, ``device="cuda:1"``) applied."""
        device = changes.pop("device", None) or worker_device(resolve_device(base.device))
        runtime = cls(
            seed=base.seed,
            device=device,
            amp=base.amp,
            num_workers=base.num_workers,
            progress=base.progress,
            sync_bn=base.sync_bn,
        )
        return runtime.replace(**changes)

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def replace(self, **changes: Any) -> Runtime:
        """A copy with ``changes`` applied (e.g. a step's own checkpoint or memory format)."""
        return dataclasses.replace(self, **changes)

    def track(
        self, items: Iterable[T], what: str, *, total: int | None = None, unit: str = "image"
    ) -> Iterator[T]:
        """Iterate the ``items`` of an inference loop: a bar on a terminal when
        :attr:`progress`, one INFO summary line once the loop has run to its end
        (:func:`pnoc.engine.progress.track`)."""
        return track(items, what, total=total, enabled=self.progress, unit=unit)

    def seed_all(self) -> None:
        """Reseed the global generators with :attr:`seed` (start of every training step)."""
        seed_everything(self.seed)
