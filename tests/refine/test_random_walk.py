"""Sparse random walk against IRN's dense walk, its invariants and its input checks."""

from __future__ import annotations

import pytest
import torch

from pnoc.errors import PnocError
from pnoc.refine.random_walk import (
    dense_affinity,
    dense_random_walk,
    feature_affinities,
    neighbour_offsets,
    random_walk,
    transition_matrix,
)

H, W = 12, 10


def setup(radius: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
    """(x (3, H, W), aff, valid, offsets) from random 8-channel features."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(8, H, W, generator=g) * 0.3
    x = torch.rand(3, H, W, generator=g) * torch.tensor([1.0, 5.0, 0.2])[:, None, None]
    aff, valid = feature_affinities(feats, radius)
    return x, aff, valid, neighbour_offsets(radius)


def test_offsets_symmetric_and_strictly_inside_the_disc() -> None:
    for radius in (2, 3, 5):
        offs = neighbour_offsets(radius)
        expected = {
            (dy, dx)
            for dy in range(-radius, radius + 1)
            for dx in range(-radius, radius + 1)
            if 0 < dy * dy + dx * dx < radius * radius
        }
        assert len(offs) == len(set(offs)) and set(offs) == expected
        half = len(offs) // 2
        assert offs[half:] == [(-dy, -dx) for dy, dx in offs[:half]]
    assert len(neighbour_offsets(5)) == 68
    assert neighbour_offsets(2) == [
        (0, 1),
        (1, -1),
        (1, 0),
        (1, 1),
        (0, -1),
        (-1, 1),
        (-1, 0),
        (-1, -1),
    ]


@pytest.mark.parametrize("radius", [3, 5])
@pytest.mark.parametrize("exp_times", [0, 3, 8])
def test_sparse_walk_equals_dense_reference(radius: int, exp_times: int) -> None:
    x, aff, valid, offs = setup(radius)
    sparse = random_walk(x, aff, valid, offs, beta=10, exp_times=exp_times)
    dense = dense_random_walk(x, aff, valid, offs, beta=10, exp_times=exp_times)
    irn32 = dense_random_walk(
        x, aff, valid, offs, beta=10, exp_times=exp_times, dtype=torch.float32
    )
    # float32 rounding grows linearly with the 2^exp_times steps (IRN's float32 squarings alike).
    atol = 1e-6 * float(x.abs().max()) * 2**exp_times
    assert sparse.shape == x.shape and sparse.dtype == torch.float32
    assert torch.allclose(sparse, dense, rtol=1e-4, atol=atol)
    assert (sparse - dense).abs().max() <= 2 * (irn32 - dense).abs().max() + 1e-6


def test_transition_matrix_is_irns_column_normalised_matrix() -> None:
    _, aff, valid, offs = setup(3)
    t = transition_matrix(aff, valid, offs, beta=10)
    assert t.layout == torch.sparse_csr and t.shape == (H * W, H * W)
    scaled = dense_affinity(aff, valid, offs).double() ** 10
    assert torch.allclose(t.to_dense().double(), scaled / scaled.sum(0, keepdim=True), atol=1e-7)
    nnz_per_row = t.crow_indices().diff()
    assert int(nnz_per_row.max()) == len(offs) + 1  # interior pixel: all neighbours + itself
    assert int(nnz_per_row[0]) < len(offs) + 1  # corner: fewer


def test_walk_invariants() -> None:
    """1·T = 1; values stay in [min x, max x]; Σ_j d_j x_j is conserved, Σ_j x_j is not."""
    x, aff, valid, offs = setup(5, seed=1)
    ones = random_walk(torch.ones(1, H, W), aff, valid, offs, beta=10, exp_times=5)
    assert torch.allclose(ones, torch.ones_like(ones), atol=1e-5)
    y = random_walk(x, aff, valid, offs, beta=10, exp_times=2)
    lo, hi = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
    assert bool((y >= lo - 1e-6).all()) and bool((y <= hi + 1e-6).all())
    d = (dense_affinity(aff, valid, offs).double() ** 10).sum(0).reshape(H, W)  # column sums
    weighted = lambda z: (z.double() * d).sum(dim=(1, 2))  # noqa: E731
    assert torch.allclose(weighted(y), weighted(x), rtol=1e-5)
    assert not torch.allclose(y.sum(dim=(1, 2)), x.sum(dim=(1, 2)), rtol=1e-3)


def test_constant_features_give_affinity_one_and_borders_invalid() -> None:
    aff, valid = feature_affinities(torch.full((1, 4, 6, 7), 0.7), 3)
    offs = neighbour_offsets(3)
    assert aff.shape == valid.shape == (len(offs), 6, 7)
    assert torch.equal(aff[valid], torch.ones(int(valid.sum())))
    assert bool((aff[~valid] == 0).all())
    for p, (dy, dx) in enumerate(offs):
        ys = torch.arange(6)[:, None] + dy
        xs = torch.arange(7)[None, :] + dx
        inside = (ys >= 0) & (ys < 6) & (xs >= 0) & (xs < 7)
        assert torch.equal(valid[p], inside), (dy, dx)


def test_feature_affinity_values() -> None:
    feats = torch.zeros(2, 3, 3)
    feats[:, 1, 1] = torch.tensor([1.0, 3.0])  # mean |diff| to its neighbours: 2
    aff, valid = feature_affinities(feats, 2)
    offs = neighbour_offsets(2)
    right = offs.index((0, 1))
    assert torch.isclose(aff[right, 1, 0], torch.exp(torch.tensor(-2.0)))
    assert torch.isclose(aff[right, 1, 1], torch.exp(torch.tensor(-2.0)))
    assert aff[right, 0, 0] == 1.0 and not valid[right, 0, 2]
    # The row blocks do not change the result.
    big = torch.randn(70, 5, 6)
    whole = feature_affinities(big, 3)[0]
    for rows in (1, 2, 4, 5, 9):
        assert torch.equal(feature_affinities(big, 3, block_rows=rows)[0], whole)
    with pytest.raises(ValueError, match="block_rows"):
        feature_affinities(big, 3, block_rows=0)


def naive_affinities(feats: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel by pixel: a = exp(−mean_c |f_i − f_j|) for each neighbour inside the map."""
    c, h, w = feats.shape
    offs = neighbour_offsets(radius)
    aff = torch.zeros(len(offs), h, w, dtype=torch.float64)
    valid = torch.zeros(len(offs), h, w, dtype=torch.bool)
    f = feats.double()
    for p, (dy, dx) in enumerate(offs):
        for y in range(h):
            for x in range(w):
                if 0 <= y + dy < h and 0 <= x + dx < w:
                    valid[p, y, x] = True
                    aff[p, y, x] = torch.exp(-(f[:, y, x] - f[:, y + dy, x + dx]).abs().mean())
    return aff.float(), valid


@pytest.mark.parametrize(("h", "w", "radius"), [(7, 9, 3), (3, 11, 5), (10, 2, 5), (1, 1, 2)])
def test_feature_affinities_equal_the_pixelwise_definition(h: int, w: int, radius: int) -> None:
    """Maps narrower than the radius, blocks that do not divide the height: all as defined."""
    feats = torch.randn(37, h, w, generator=torch.Generator().manual_seed(h * w))
    ref, ref_valid = naive_affinities(feats, radius)
    for rows in (None, 1, 4):
        aff, valid = feature_affinities(feats, radius, block_rows=rows)
        assert torch.equal(valid, ref_valid)
        assert torch.allclose(aff, ref, rtol=1e-6, atol=1e-7)
        assert bool((aff[~valid] == 0).all())


def stepwise_walk(x: torch.Tensor, aff, valid, offs, beta: float, exp_times: int) -> torch.Tensor:
    """The walk as written in the module docstring, step by step with the dense T (float64)."""
    c, h, w = x.shape
    scaled = dense_affinity(aff, valid, offs).double() ** beta
    trans = scaled / scaled.sum(0, keepdim=True)
    cur = x.reshape(c, h * w).double()
    for _ in range(2**exp_times):
        cur = cur @ trans
    return cur.reshape(c, h, w)


@pytest.mark.parametrize(("h", "w", "radius"), [(9, 13, 5), (4, 17, 3), (16, 3, 5)])
def test_walk_equals_stepwise_reference_on_odd_shapes(h: int, w: int, radius: int) -> None:
    """x·T applied 2^exp_times times with the dense T equals the stencil walk (float rounding)."""
    g = torch.Generator().manual_seed(h + w)
    feats = torch.randn(16, h, w, generator=g) * 0.4
    x = torch.rand(3, h, w, generator=g)
    aff, valid = feature_affinities(feats, radius)
    offs = neighbour_offsets(radius)
    for exp_times in (0, 2, 6):
        walked = random_walk(x, aff, valid, offs, beta=10, exp_times=exp_times)
        ref = stepwise_walk(x, aff, valid, offs, 10, exp_times)
        assert torch.allclose(walked.double(), ref, rtol=1e-4, atol=1e-6 * 2**exp_times)


def test_batched_input_keeps_its_rank() -> None:
    x, aff, valid, offs = setup(3)
    y = random_walk(x[None], aff, valid, offs, exp_times=1)
    assert y.shape == (1, 3, H, W)
    assert torch.equal(y[0], random_walk(x, aff, valid, offs, exp_times=1))


def test_thread_setting_is_restored() -> None:
    x, aff, valid, offs = setup(3)
    torch.set_num_threads(2)  # the autouse fixture restores the original afterwards
    before = torch.get_num_threads()
    ref = random_walk(x, aff, valid, offs, exp_times=2)
    assert torch.get_num_threads() == before
    assert torch.allclose(random_walk(x, aff, valid, offs, exp_times=2, num_threads=None), ref)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="num_threads"):
        random_walk(x, aff, valid, offs, num_threads=0)
    assert torch.get_num_threads() == before


def test_bad_inputs_raise_clear_errors() -> None:
    x, aff, valid, offs = setup(3)
    with pytest.raises(PnocError, match="radius"):
        neighbour_offsets(1)
    with pytest.raises(PnocError, match=r"features must be \(C, h, w\)"):
        feature_affinities(torch.zeros(2, 3, 4, 5), 3)
    with pytest.raises(PnocError, match=r"x must be \(C, 12, 10\)"):
        random_walk(x[:, :5], aff, valid, offs)
    with pytest.raises(PnocError, match="len\\(offsets\\)"):
        random_walk(x, aff, valid, offs[:-1])
    with pytest.raises(PnocError, match="valid must be a bool"):
        random_walk(x, aff, valid.float(), offs)
    with pytest.raises(PnocError, match="closed under negation"):
        random_walk(x, aff, valid, offs[:1] + offs[:-1])
    with pytest.raises(PnocError, match="beta"):
        random_walk(x, aff, valid, offs, beta=0)
    with pytest.raises(PnocError, match="exp_times"):
        random_walk(x, aff, valid, offs, exp_times=-1)
    with pytest.raises(PnocError, match="outside"):
        random_walk(x, aff, torch.ones_like(valid), offs)
    asym = aff.clone()
    asym[0, 5, 5] = 0.123
    with pytest.raises(PnocError, match="symmetric"):
        random_walk(x, asym, valid, offs)
    with pytest.raises(PnocError, match="NaN"):
        random_walk(x * float("nan"), aff, valid, offs)
    big = torch.zeros(len(offs), 65, 64)
    with pytest.raises(PnocError, match="test reference"):
        dense_random_walk(torch.zeros(1, 65, 64), big, big.bool(), offs)
