"""Loss terms and helpers: shapes, values and where gradients go."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pnoc.cam import losses
from pnoc.errors import ConfigError


def test_smooth_labels() -> None:
    y = torch.tensor([[1.0, 0.0]])
    torch.testing.assert_close(losses.smooth_labels(y, 0.1), torch.tensor([[0.95, 0.05]]))
    with pytest.raises(ConfigError):
        losses.smooth_labels(y, 1.0)


def test_mlsm_matches_formula_and_has_grad() -> None:
    logits = torch.randn(2, 3, requires_grad=True)
    t = torch.tensor([[1.0, 0.0, 1.0], [0.05, 0.95, 0.05]])
    expected = -(t * F.logsigmoid(logits) + (1 - t) * F.logsigmoid(-logits)).mean()
    loss = losses.mlsm(logits, t)
    torch.testing.assert_close(loss, expected)
    assert losses.mlsm(logits, t, reduction="none").shape == (2,)
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_tile_merge_roundtrip() -> None:
    x = torch.randn(3, 2, 8, 6)
    tiles = losses.tile_2x2(x)
    assert tiles.shape == (12, 2, 4, 3)
    torch.testing.assert_close(tiles[0], x[0, :, :4, :3])  # top-left of image 0
    torch.testing.assert_close(tiles[3 + 1], x[1, :, :4, 3:])  # top-right of image 1
    torch.testing.assert_close(tiles[9 + 2], x[2, :, 4:, 3:])  # bottom-right of image 2
    assert torch.equal(losses.merge_2x2(tiles), x)
    with pytest.raises(ConfigError, match="even"):
        losses.tile_2x2(torch.randn(1, 1, 7, 8))
    with pytest.raises(ValueError):
        losses.merge_2x2(torch.randn(3, 1, 2, 2))


def test_reconstruction_loss_positive_classes_only() -> None:
    a = torch.randn(2, 3, 4, 4, requires_grad=True)
    a_hat = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    loss = losses.puzzle_reconstruction_loss(a, a_hat, y)
    expected = ((a - a_hat).abs() * y[:, :, None, None]).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert a.grad is not None and a_hat.grad is not None
    assert a.grad[0, 1:].abs().sum() == 0 and a.grad[0, 0].abs().sum() > 0
    assert a_hat.grad[1, 0].abs().sum() == 0 and a_hat.grad[1, 1:].abs().sum() > 0


def test_sample_present_class() -> None:
    y = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    seen = set()
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        r = losses.sample_present_class(y, gen)
        assert r.shape == (3,) and r.dtype == torch.long
        assert r[0].item() in (1, 2) and r[1].item() == -1 and r[2].item() == 0
        seen.add(r[0].item())
    assert seen == {1, 2}
    a = losses.sample_present_class(y, torch.Generator().manual_seed(3))
    b = losses.sample_present_class(y, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_class_mask_shape_range_and_grad() -> None:
    maps = torch.randn(3, 4, 4, 4, requires_grad=True)
    r = torch.tensor([2, -1, 0])
    m = losses.class_mask(maps, r, (16, 16))
    assert m.shape == (3, 1, 16, 16)
    assert m.min() >= 0 and m.max() <= 1
    assert torch.isclose(m[0].max(), torch.tensor(1.0), atol=1e-3)
    assert m[1].abs().sum() == 0  # no class: nothing erased
    m.sum().backward()
    assert maps.grad is not None
    assert maps.grad[0, 2].abs().sum() > 0
    assert maps.grad[0, [0, 1, 3]].abs().sum() == 0 and maps.grad[1].abs().sum() == 0
    zero = losses.class_mask(torch.zeros(1, 2, 2, 2), torch.tensor([1]), (4, 4))
    assert torch.isfinite(zero).all() and zero.sum() == 0
    glob = losses.class_mask(maps.detach(), torch.tensor([2, 1, 0]), (8, 8), global_norm=True)
    assert torch.isclose(glob.max(), torch.tensor(1.0), atol=1e-3)


def test_erasing_and_labels() -> None:
    x = torch.ones(1, 3, 2, 2)
    m = torch.tensor([[[[0.0, 0.1], [0.5, 1.0]]]])
    torch.testing.assert_close(losses.erase(x, m)[0, 0], torch.tensor([[1.0, 0.9], [0.5, 0.0]]))
    torch.testing.assert_close(
        losses.hard_erase(x, m, 0.2)[0, 1], torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    )
    y = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    out = losses.labels_without(y, torch.tensor([0, 1, -1]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))
    assert y[0, 0] == 1.0  # input untouched


def test_masked_mean_and_gap() -> None:
    v = torch.tensor([1.0, 3.0, 100.0])
    torch.testing.assert_close(
        losses.masked_mean(v, torch.tensor([True, True, False])), torch.tensor(2.0)
    )
    torch.testing.assert_close(
        losses.masked_mean(v, torch.zeros(3, dtype=torch.bool)), torch.tensor(0.0)
    )
    assert losses.gap(torch.ones(2, 3, 4, 5)).shape == (2, 3)
