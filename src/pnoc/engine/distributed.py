"""Data parallelism on ``torch.distributed``: who this process is, how work is split, and the
few collectives the library needs.

Nothing here starts processes: a launcher does (``torchrun``, Ray Train's ``TorchTrainer``, see
:mod:`pnoc_pipelines.launch`), or a test. When a default process group is initialised with more
than one process, :func:`pnoc.engine.fit` trains data-parallel (``DistributedDataParallel``
around each trainable module) and the inference steps split their images across the ranks; with
no process group (or one process) everything runs as on one device, with no collective at all.

Conventions:

* ``batch_size`` stays the **global** batch; each rank takes ``batch_size / world size``
  consecutive positions of every global batch of the epoch's seeded order
  (:class:`pnoc.engine.EpochSampler`), so the union of the ranks' samples is the single-worker
  epoch, and each sample's augmentation seed comes from its position, not from the rank.
* Rank 0 alone writes checkpoints, outputs and MLflow; every rank reads the checkpoint on resume.
* Inference shards are strided (``ids[rank::size]``); each rank writes its own files into the
  same folder, and rank 0 publishes it once every rank is done (:func:`shared_atomic_dir`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from pnoc.errors import ConfigError

__all__ = [
    "World",
    "all_gather_objects",
    "all_sum",
    "any_rank",
    "barrier",
    "broadcast_object",
    "init_from_env",
    "launched",
    "mean_over_ranks",
    "per_rank_batch",
    "shard",
    "shared_atomic_dir",
    "worker_device",
    "world",
]

T = TypeVar("T")

#: Environment variables a launcher (torchrun, Ray Train) sets for each worker.
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel workers (1 worker without a group)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, outputs and MLflow."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.size}"


def world() -> World:
    """The current :class:`World`: from the default process group when one is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local)


def launched() -> bool:
    """Whether a launcher started this process as one of several workers (its env is set)."""
    return all(k in os.environ for k in LAUNCH_ENV) and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device: torch.device, *, timeout_s: float = 300.0) -> World:
    """Join the process group a launcher described in the environment (``env://``).

    Backend: NCCL on CUDA (each process on ``cuda:LOCAL_RANK``), gloo otherwise. Does nothing
    when the group already exists (Ray Train creates it) or when no launcher started us.
    ``timeout_s`` bounds every collective, the first rendezvous included, so a worker that died
    or an unreachable ``MASTER_ADDR`` ends in an error naming it instead of a hang.
    """
    if dist.is_available() and dist.is_initialized():
        return world()
    if not launched():
        return World()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    address = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as exc:  # noqa: BLE001 (torch raises several types; name the endpoint)
        raise ConfigError(
            f"could not join the process group at {address} (rank {os.environ['RANK']} of "
            f"{os.environ['WORLD_SIZE']}, backend {backend}) within {timeout_s:.0f} s: {exc}"
        ) from None
    return world()


def worker_device(device: torch.device) -> torch.device:
    """The device of this worker: ``cuda:LOCAL_RANK`` when ``device`` is CUDA and several
    workers share the machine, else ``device``."""
    w = world()
    if device.type == "cuda" and w.distributed:
        return torch.device("cuda", w.local_rank)
    return device


def per_rank_batch(batch_size: int, size: int) -> int:
    """The batch each of ``size`` workers takes from a global ``batch_size``."""
    if batch_size % size:
        raise ConfigError(
            f"batch_size {batch_size} is the global batch and must divide evenly across the "
            f"{size} workers (per-worker batch = batch_size / workers); use a multiple of {size}"
        )
    return batch_size // size


def shard(items: Sequence[T], w: World | None = None) -> list[T]:
    """This rank's share of ``items``: every ``size``-th item from position ``rank``."""
    w = w or world()
    return list(items[w.rank :: w.size])


def barrier() -> None:
    if world().distributed:
        dist.barrier()


def _reduce_device() -> torch.device:
    if world().distributed and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks (a copy; ``t`` itself without a group)."""
    if not world().distributed:
        return t
    out = t.detach().to(_reduce_device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def mean_over_ranks(values: Mapping[str, float]) -> dict[str, float]:
    """The mean of each scalar over the ranks (every rank must pass the same keys)."""
    if not world().distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    t = all_sum(t) / world().size
    return {k: float(v) for k, v in zip(keys, t.tolist(), strict=True)}


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one."""
    if not world().distributed:
        return flag
    return bool(all_sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not world().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order."""
    if not world().distributed:
        return [obj]
    out: list[Any] = [None] * world().size
    dist.all_gather_object(out, obj)
    return out


@contextlib.contextmanager
def shared_atomic_dir(path: str | Path) -> Iterator[Path]:
    """:func:`pnoc.io.atomic_path` for a folder every rank writes into.

    Rank 0 picks the temporary folder and tells the others; once every rank has left the block
    without an error, rank 0 replaces ``path`` with it. If any rank fails, nothing is published
    and the temporary folder is removed. Without a group this is ``atomic_path``.
    """
    from pnoc.io import atomic_path

    if not world().distributed:
        with atomic_path(path) as tmp:
            yield tmp
        return
    path = Path(path)
    if world().is_main:
        with atomic_path(path) as tmp:
            tmp.mkdir(parents=True, exist_ok=True)
            broadcast_object(str(tmp))
            with _all_or_none(path):
                yield tmp
        return
    with _all_or_none(path):
        yield Path(broadcast_object(""))


@contextlib.contextmanager
def _all_or_none(path: Path) -> Iterator[None]:
    """Every rank leaves the block: raise on all of them if it raised on any."""
    try:
        yield
    except BaseException:
        any_rank(True)
        raise
    if any_rank(False):
        raise RuntimeError(f"{path}: another worker failed; nothing was written")
