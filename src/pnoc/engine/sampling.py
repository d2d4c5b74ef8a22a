"""Deterministic, resumable epoch sampling.

An epoch is fully determined by ``(seed, epoch)``: the sample order and each position's
augmentation seed. A run resumed in the middle of an epoch therefore sees exactly the samples,
and the augmentations, that an uninterrupted run would have seen — whatever the number of
DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from pnoc.data.base import SampleKey

__all__ = ["EpochSampler", "epoch_keys", "make_loader", "to_device"]

_INT63 = 2**63

# Distinct SeedSequence streams so the permutation, the sample seeds and the loader's own
# generator never share random bits.
_STREAM_ORDER = 0
_STREAM_SAMPLE_SEEDS = 1
_STREAM_LOADER = 2


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, stream]))


def epoch_keys(n: int, *, seed: int, epoch: int, shuffle: bool = True) -> list[SampleKey]:
    """All ``n`` keys of one epoch in order: position p gets ``SampleKey(order[p], seed_p)``.

    ``order`` is a permutation drawn from ``(seed, epoch)`` (identity without shuffle); ``seed_p``
    is drawn from ``(seed, epoch)`` by position, so it does not depend on ``shuffle`` and fits in
    int63 (a valid seed for numpy, torch and ``random``).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    order = _rng(seed, epoch, _STREAM_ORDER).permutation(n) if shuffle else np.arange(n)
    seeds = _rng(seed, epoch, _STREAM_SAMPLE_SEEDS).integers(0, _INT63, size=n, dtype=np.int64)
    return [SampleKey(int(i), int(s)) for i, s in zip(order, seeds, strict=True)]


class EpochSampler(Sampler[SampleKey]):
    """Yields ``SampleKey(index, seed)`` for one epoch, from position ``start`` on.

    Args:
        n: dataset length.
        seed: run seed (>= 0).
        epoch: epoch index (>= 0); each epoch has its own permutation and sample seeds.
        shuffle: permute the indices (otherwise 0..n-1 in order).
        start: first position to yield, so a resumed epoch continues where it stopped.
        drop_last_batch_size: if given, the epoch is truncated to a multiple of this batch size
            (the positions an incomplete last batch would hold are never yielded).
        rank, world_size: data-parallel share. Every global batch of ``batch_size`` consecutive
            positions is cut into ``world_size`` equal parts and rank ``r`` yields part ``r``,
            so the ranks together see exactly the single-worker epoch, each sample with the
            seed of its position. Needs ``batch_size`` (the global batch), divisible by
            ``world_size``; ``start`` and the truncation stay in global positions.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int,
        epoch: int,
        shuffle: bool = True,
        start: int = 0,
        drop_last_batch_size: int | None = None,
        batch_size: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if drop_last_batch_size is not None and drop_last_batch_size < 1:
            raise ValueError(f"drop_last_batch_size must be >= 1, got {drop_last_batch_size}")
        self.n, self.seed, self.epoch, self.shuffle, self.start = n, seed, epoch, shuffle, start
        keys = epoch_keys(n, seed=seed, epoch=epoch, shuffle=shuffle)
        if drop_last_batch_size is not None:
            keys = keys[: len(keys) - len(keys) % drop_last_batch_size]
        keys = keys[start:]
        if world_size > 1:
            if batch_size is None or batch_size % world_size:
                raise ValueError(
                    f"a global batch_size divisible by world_size {world_size} is needed to "
                    f"shard an epoch, got {batch_size}"
                )
            if not 0 <= rank < world_size:
                raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
            part = batch_size // world_size
            keys = [k for p, k in enumerate(keys) if (p % batch_size) // part == rank]
        self._keys = keys

    def __iter__(self) -> Iterator[SampleKey]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def make_loader(
    dataset: Any,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    start_batch: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """DataLoader over one epoch of ``dataset``, skipping the first ``start_batch`` batches.

    ``dataset[key]`` is called with a :class:`SampleKey`; the dataset derives its augmentation
    randomness from ``key.seed``. The loader gets its own ``torch.Generator`` (seeded from
    ``(seed, epoch, start_batch)``) because a DataLoader otherwise draws its base seed from the
    global torch RNG each time it is iterated, which would make the training RNG stream depend on
    where a run was resumed.

    With ``world_size`` > 1, ``batch_size`` is the global batch and ``start_batch`` counts global
    batches; the loader yields this rank's ``batch_size / world_size`` part of each
    (:class:`EpochSampler`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampler = EpochSampler(
        len(dataset),
        seed=seed,
        epoch=epoch,
        shuffle=shuffle,
        start=start_batch * batch_size,
        drop_last_batch_size=batch_size if drop_last else None,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
    )
    gen_seed = int(_rng(seed, epoch, _STREAM_LOADER).integers(0, _INT63)) ^ start_batch
    generator = torch.Generator().manual_seed(gen_seed)
    return DataLoader(
        dataset,
        batch_size=batch_size // world_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        generator=generator,
        persistent_workers=False,
    )


def to_device(obj: Any, device: torch.device, channels_last: bool = False) -> Any:
    if isinstance(obj, torch.Tensor):
        if channels_last and obj.dim() == 4 and obj.is_floating_point():
            return obj.to(device, non_blocking=True, memory_format=torch.channels_last)
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device, channels_last) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # named tuple
        return type(obj)(*(to_device(v, device, channels_last) for v in obj))
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(v, device, channels_last) for v in obj)
    return obj
