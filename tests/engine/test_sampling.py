"""Deterministic, resumable epoch sampling."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pnoc.data.base import SampleKey
from pnoc.engine import EpochSampler, epoch_keys, make_loader


class KeyDataset:
    """Returns the key it is given, so tests see exactly what the sampler produced."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: SampleKey) -> SampleKey:
        assert isinstance(key, SampleKey)
        return key


def _keys(loader: Any) -> list[list[SampleKey]]:
    return [list(batch) for batch in loader]


def test_same_seed_and_epoch_give_the_same_keys() -> None:
    a = list(EpochSampler(50, seed=7, epoch=3))
    b = list(EpochSampler(50, seed=7, epoch=3))
    assert a == b
    assert sorted(k.index for k in a) == list(range(50))  # a permutation
    assert all(0 <= k.seed < 2**63 for k in a)
    assert len({k.seed for k in a}) == 50


def test_epochs_and_seeds_differ() -> None:
    base = [k.index for k in EpochSampler(50, seed=7, epoch=0)]
    assert [k.index for k in EpochSampler(50, seed=7, epoch=1)] != base
    assert [k.index for k in EpochSampler(50, seed=8, epoch=0)] != base


def test_no_shuffle_is_identity_with_the_same_sample_seeds() -> None:
    plain = list(EpochSampler(10, seed=1, epoch=2, shuffle=False))
    shuffled = list(EpochSampler(10, seed=1, epoch=2, shuffle=True))
    assert [k.index for k in plain] == list(range(10))
    assert [k.seed for k in plain] == [k.seed for k in shuffled]  # seeds follow the position


def test_start_yields_the_rest_of_the_epoch() -> None:
    full = list(EpochSampler(23, seed=5, epoch=1))
    rest = EpochSampler(23, seed=5, epoch=1, start=8)
    assert len(rest) == 15
    assert list(rest) == full[8:]


def test_drop_last_batch_size_truncates_to_full_batches() -> None:
    s = EpochSampler(23, seed=5, epoch=1, drop_last_batch_size=4, start=4)
    assert len(s) == 16  # 20 kept, 4 skipped
    assert list(s) == epoch_keys(23, seed=5, epoch=1)[4:20]
    with pytest.raises(ValueError):
        EpochSampler(3, seed=-1, epoch=0)


def test_loader_resumed_at_a_batch_sees_the_same_batches() -> None:
    ds = KeyDataset(30)
    full = _keys(make_loader(ds, batch_size=4, seed=9, epoch=2, collate_fn=list))
    assert len(full) == 7  # 30 // 4, last incomplete batch dropped
    resumed = _keys(make_loader(ds, batch_size=4, seed=9, epoch=2, start_batch=3, collate_fn=list))
    assert resumed == full[3:]
    keep = _keys(make_loader(ds, batch_size=4, seed=9, epoch=2, drop_last=False, collate_fn=list))
    assert len(keep) == 8 and len(keep[-1]) == 2


def test_loader_does_not_draw_from_the_global_torch_rng() -> None:
    ds = KeyDataset(12)
    before = torch.get_rng_state()
    for _ in make_loader(ds, batch_size=4, seed=0, epoch=0, collate_fn=list):
        pass
    assert torch.equal(before, torch.get_rng_state())


def test_worker_count_does_not_change_the_batches() -> None:
    ds = KeyDataset(16)
    serial = _keys(make_loader(ds, batch_size=4, seed=3, epoch=0, collate_fn=list))
    parallel = _keys(make_loader(ds, batch_size=4, seed=3, epoch=0, num_workers=2, collate_fn=list))
    assert serial == parallel
