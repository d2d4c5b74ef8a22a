"""Affinity labels, AffinityNet and its pair loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pnoc.errors import PnocError
from pnoc.models.affinity import AffinityNet
from pnoc.models.backbones import save_model
from pnoc.refine.affinity import affinity_loss, half_offsets, labels_to_features
from pnoc.refine.affinity_labels import confident_fraction, make_affinity_labels


def test_affinity_labels_confident_fg_bg_and_conflicts_ignored():
    cams = np.zeros((2, 2, 3), np.float32)
    cams[0, 0, 0] = 0.9  # class 3, confident
    cams[1, 0, 1] = 0.5  # class 5, confident
    cams[1, 1, 0] = 0.9  # confident fg that saliency calls background -> ignored
    sal = np.array([[0.9, 0.9, 0.05], [0.0, 0.5, 0.2]], np.float32)
    labels = make_affinity_labels(cams, np.array([3, 5]), sal, fg_threshold=0.4, bg_threshold=0.1)
    assert labels.tolist() == [[3, 5, 0], [255, 255, 255]]
    assert confident_fraction(labels) == pytest.approx(3 / 6)
    # a saliency gate: the conflict at saliency 0 is no longer fg, so it becomes bg; above 0.9
    # it also drops both fg pixels
    gated = make_affinity_labels(
        cams, np.array([3, 5]), sal, fg_threshold=0.4, bg_threshold=0.1, fg_saliency=0.95
    )
    assert gated.tolist() == [[255, 255, 0], [0, 255, 255]]
    gated = make_affinity_labels(
        cams, np.array([3, 5]), sal, fg_threshold=0.4, bg_threshold=0.1, fg_saliency=0.8
    )
    assert gated.tolist() == [[3, 5, 0], [0, 255, 255]]


def test_affinity_labels_without_classes_are_background_or_ignore():
    sal = np.array([[0.0, 0.5]], np.float32)
    labels = make_affinity_labels(
        np.zeros((0, 1, 2), np.float32),
        np.zeros(0, np.int64),
        sal,
        fg_threshold=0.4,
        bg_threshold=0.1,
    )
    assert labels.tolist() == [[0, 255]]


def test_affinity_labels_reject_saliency_of_another_size():
    with pytest.raises(PnocError, match="saliency size"):
        make_affinity_labels(
            np.zeros((1, 4, 4), np.float32),
            np.array([1]),
            np.zeros((4, 5), np.float32),
            fg_threshold=0.4,
            bg_threshold=0.1,
        )


def test_half_offsets_cover_each_pair_once():
    half = half_offsets(3)
    assert (0, 0) not in half
    assert not set(half) & {(-dy, -dx) for dy, dx in half}
    assert all(dy * dy + dx * dx < 9 for dy, dx in half)


def test_affinity_loss_matches_hand_computation():
    # two pixels in a row; features differ by 1 in every channel -> a = exp(-1)
    feats = torch.tensor([[[[0.0, 1.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    a = math.exp(-1.0)
    offsets = [(0, 1)]
    same_bg = torch.tensor([[[0, 0]]])
    loss, terms = affinity_loss(feats, same_bg, offsets)
    assert terms["bg"].item() == pytest.approx(-math.log(a + 1e-5), rel=1e-5)
    assert loss.item() == pytest.approx(-math.log(a + 1e-5) / 4, rel=1e-5)
    diff = torch.tensor([[[0, 2]]])
    loss, terms = affinity_loss(feats, diff, offsets)
    assert loss.item() == pytest.approx(-math.log(1 + 1e-5 - a) / 2, rel=1e-5)
    ignored = torch.tensor([[[255, 2]]])
    loss, terms = affinity_loss(feats, ignored, offsets)
    assert loss.item() == 0.0 and terms["pairs"].item() == 0


def test_affinity_loss_trains_features_apart_and_together():
    torch.manual_seed(0)
    feats = torch.randn(1, 4, 6, 6, requires_grad=True)
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[:, :, 3:] = 1
    opt = torch.optim.Adam([feats], lr=0.1)
    first = None
    for _ in range(60):
        loss, _ = affinity_loss(feats, labels, half_offsets(2))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_labels_reduce_to_the_feature_grid():
    labels = torch.arange(16).reshape(1, 4, 4)
    assert labels_to_features(labels, (2, 2)).tolist() == [[[0, 2], [8, 10]]]


def test_affinitynet_shapes_and_checkpoint_round_trip(tmp_path):
    net = AffinityNet("resnet18", dim=16).eval()
    x = torch.randn(1, 3, 64, 48)
    out = net(x)
    assert out.shape == (1, 16, 16, 12)
    save_model(tmp_path / "a.pt", net, {"stage": "test"})
    again = AffinityNet.from_checkpoint(tmp_path / "a.pt", expected_backbone="resnet18").eval()
    assert torch.equal(again(x), out)
    with pytest.raises(PnocError, match="backbone 'resnet18', expected 'resnet50'"):
        AffinityNet.from_checkpoint(tmp_path / "a.pt", expected_backbone="resnet50")


def test_affinity_loss_without_confident_pairs_is_zero_and_backpropagates():
    features = torch.randn(2, 4, 6, 6, requires_grad=True)
    labels = torch.full((2, 6, 6), 255, dtype=torch.long)
    loss, terms = affinity_loss(features, labels, half_offsets(3))
    assert float(loss.detach()) == 0.0 and float(terms["pairs"]) == 0.0
    loss.backward()  # the engine's update must not fail on such a batch
    assert features.grad is not None and float(features.grad.abs().sum()) == 0.0
