"""CCAM's contrastive terms and the C²AM-H hint term on hand-checked tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pnoc.saliency.losses import (
    SIM_MAX,
    SIM_MIN,
    ccam_loss,
    cosine_similarity_matrix,
    hint_loss,
    hint_map,
    sim_max_loss,
    sim_min_loss,
)

ALPHA = 0.25


def test_similarity_is_clamped() -> None:
    a = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    sim = cosine_similarity_matrix(a, a)
    assert sim.max() == pytest.approx(SIM_MAX) and sim.min() == pytest.approx(SIM_MIN)
    assert sim[0, 1] == pytest.approx(SIM_MAX) and sim[0, 3] == pytest.approx(SIM_MIN)


def test_sim_max_identical_vectors() -> None:
    fg = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]])
    # All four pairs saturate at 0.9995; each row has ranks {0, 1} -> weights e^α and 1.
    expected = -math.log(SIM_MAX) * (math.exp(ALPHA) + 1.0) / 2
    assert float(sim_max_loss(fg, ALPHA)) == pytest.approx(expected, rel=1e-4)


def test_sim_max_orthogonal_vectors() -> None:
    fg = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Self pairs: rank 0 -> −log(0.9995)·e^α; cross pairs: rank 1 -> −log(0.0005)·1.
    expected = (-math.log(SIM_MAX) * math.exp(ALPHA) - math.log(SIM_MIN)) / 2
    assert float(sim_max_loss(fg, ALPHA)) == pytest.approx(expected, rel=1e-4)


def test_sim_min_values() -> None:
    fg = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    bg = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    assert float(sim_min_loss(bg, fg)) == pytest.approx(-math.log(1 - SIM_MIN), rel=1e-4)
    assert float(sim_min_loss(fg, fg)) == pytest.approx(-math.log(1 - SIM_MAX), rel=1e-4)


def test_ccam_loss_is_the_sum_of_its_terms() -> None:
    torch.manual_seed(0)
    fg, bg = torch.rand(4, 8, requires_grad=True), torch.rand(4, 8)
    total, terms = ccam_loss(fg, bg, ALPHA)
    with torch.no_grad():
        fg_fg, fg_bg, bg_bg = sim_max_loss(fg, ALPHA), sim_min_loss(bg, fg), sim_max_loss(bg, ALPHA)
    assert set(terms) == {"fg_fg", "fg_bg", "bg_bg"}
    values = {k: float(v.detach()) for k, v in terms.items()}
    assert values == pytest.approx(
        {"fg_fg": float(fg_fg), "fg_bg": float(fg_bg), "bg_bg": float(bg_bg)}
    )
    assert float(total.detach()) == pytest.approx(sum(values.values()), rel=1e-6)
    total.backward()
    assert fg.grad is not None and torch.isfinite(fg.grad).all()


def test_hint_map_max_resize_and_records() -> None:
    cams = torch.zeros(1, 2, 4, 4)
    cams[0, 0, :2, :2] = 1.0
    cams[0, 1, 2:, 2:] = 0.5
    h = hint_map(cams, (2, 2))  # area: each output pixel is a 2×2 block mean
    torch.testing.assert_close(h, torch.tensor([[[[1.0, 0.0], [0.0, 0.5]]]]))
    up = hint_map(cams, (8, 8))
    assert up.shape == (1, 1, 8, 8) and float(up.min()) >= 0 and float(up.max()) <= 1
    records = [cams[0].numpy().astype(np.float16), np.zeros((0, 6, 6), np.float16)]
    out = hint_map(records, (2, 2))
    assert out.shape == (2, 1, 2, 2)
    torch.testing.assert_close(out[0], h[0])
    assert float(out[1].abs().sum()) == 0.0


def _bce(z: float, t: float) -> float:
    return -(t * math.log(1 / (1 + math.exp(-z))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-z))))


def test_hint_loss_counts_only_confident_pixels() -> None:
    logits = torch.tensor([[[[0.0, 1.0], [2.0, -1.0]]]], requires_grad=True)
    hints = torch.tensor([[[[0.5, 0.1], [0.4, 0.39]]]])
    loss = hint_loss(logits, hints, delta_fg=0.4, smoothing=0.1)
    expected = (_bce(0.0, 0.95) + _bce(2.0, 0.95)) / 2  # pixels with hint 0.5 and 0.4
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)
    loss.backward()
    grad = logits.grad[0, 0]
    assert grad[0, 1] == 0 and grad[1, 1] == 0 and grad[0, 0] != 0 and grad[1, 0] != 0


def test_hint_loss_without_confident_pixels_is_zero() -> None:
    logits = torch.randn(2, 1, 3, 3, requires_grad=True)
    loss = hint_loss(logits, torch.full((2, 1, 3, 3), 0.2), delta_fg=0.4)
    assert float(loss.detach()) == 0.0
    loss.backward()  # still part of the graph
    assert float(logits.grad.abs().sum()) == 0.0


def test_hint_loss_resizes_hints() -> None:
    logits = torch.zeros(1, 1, 2, 2)
    hints = torch.zeros(1, 1, 8, 8)
    hints[..., :4, :4] = 1.0  # one logit pixel selected
    assert float(hint_loss(logits, hints)) == pytest.approx(math.log(2), rel=1e-4)


def test_hint_loss_with_background_cues() -> None:
    logits = torch.tensor([[[[0.0, 1.0], [2.0, -1.0]]]], requires_grad=True)
    hints = torch.tensor([[[[0.5, 0.05], [0.4, 0.2]]]])
    loss = hint_loss(logits, hints, delta_fg=0.4, smoothing=0.1, delta_bg=0.1)
    # fg: hints 0.5 and 0.4 -> target 0.95; bg: hint 0.05 -> target 0.05; 0.2 ignored;
    # each cue's mean weighs half
    expected = ((_bce(0.0, 0.95) + _bce(2.0, 0.95)) / 2 + _bce(1.0, 0.05)) / 2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)
    loss.backward()
    grad = logits.grad[0, 0]
    assert grad[1, 1] == 0 and grad[0, 1] > 0  # the bg cue pushes its logit down
    with pytest.raises(ValueError, match="delta_bg"):
        hint_loss(logits, hints, delta_fg=0.4, delta_bg=0.5)
