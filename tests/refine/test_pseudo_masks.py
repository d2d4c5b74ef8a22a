"""From walked scores to masks: background threshold, uncertainty, fallback, CRF, propagation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pnoc.config import PseudoMaskParams
from pnoc.models.affinity import AffinityNet
from pnoc.refine.crf import crf_mask
from pnoc.refine.pseudo_masks import (
    affinity_features,
    cam_fallback_mask,
    propagate_cams,
    saliency_gate,
    scores_to_mask,
    walk_pseudo_mask,
)


def test_scores_to_mask_background_threshold_and_margin():
    scores = np.array([[[0.9, 0.2, 0.35]], [[0.1, 0.1, 0.33]]], np.float32)  # (2, 1, 3)
    classes = np.array([2, 4])
    assert scores_to_mask(scores, classes, bg_threshold=0.3).tolist() == [[2, 0, 2]]
    uncertain = scores_to_mask(scores, classes, bg_threshold=0.3, uncertain_margin=0.1)
    assert uncertain.tolist() == [[2, 0, 255]]


def test_no_class_gives_background():
    mask = scores_to_mask(np.zeros((0, 2, 2), np.float32), np.zeros(0, np.int64), bg_threshold=0.3)
    assert mask.tolist() == [[0, 0], [0, 0]]
    assert cam_fallback_mask(np.zeros((0, 2, 2)), np.zeros(0, np.int64), 0.3).sum() == 0


def test_walk_spreads_a_cam_over_its_affine_region():
    # features: left half one embedding, right half another -> the walk stays in its half
    feats = torch.zeros(4, 8, 8)
    feats[:, :, 4:] = 5.0
    cams = np.zeros((1, 32, 32), np.float32)
    cams[0, 2:6, 2:6] = 1.0  # a small peak in the left half
    walked = propagate_cams(cams, feats, beta=10, exp_times=6, radius=3)
    assert walked.shape == (1, 32, 32)
    left, right = walked[0, :, :14].mean(), walked[0, :, 18:].mean()
    assert float(left) > 0.5 and float(right) < 0.01
    assert float(walked.max()) == pytest.approx(1.0, abs=1e-5)


def test_affinity_features_flip_average_is_flip_equivariant():
    torch.manual_seed(0)
    net = AffinityNet("resnet18", dim=8).eval()
    x = torch.randn(3, 32, 40)
    a = affinity_features(net, x, flip=True)
    b = affinity_features(net, x.flip(-1), flip=True)
    assert a.shape == (8, 8, 10)
    assert torch.allclose(a, b.flip(-1), atol=1e-5)


def test_crf_follows_the_image_edges():
    pytest.importorskip("pydensecrf")
    image = np.zeros((24, 24, 3), np.uint8)
    image[:, 12:] = 255  # a bright right half
    scores = np.zeros((1, 24, 24), np.float32)
    scores[0, :, 9:] = 0.9  # a CAM that leaks 3 px into the dark half
    mask = crf_mask(image, scores, np.array([1]), bg_threshold=0.3)
    assert mask.dtype == np.uint8 and mask.shape == (24, 24)
    assert (mask[:, 13:] == 1).mean() > 0.95
    assert (mask[:, :9] == 0).all()


def test_walk_keeps_a_weak_class_weak():
    # one global maximum: a class whose CAM is weak everywhere stays below the background
    feats = torch.zeros(4, 8, 8)
    cams = np.zeros((2, 32, 32), np.float32)
    cams[0, 4:12, 4:12] = 1.0
    cams[1, 20:28, 20:28] = 0.2
    walked = propagate_cams(cams, feats, beta=10, exp_times=1, radius=2)
    assert float(walked.max()) == pytest.approx(1.0, abs=1e-5)
    assert float(walked[1].max()) < 0.3
    mask = scores_to_mask(walked, np.array([1, 2]), bg_threshold=0.3)
    assert (mask == 2).sum() == 0 and (mask == 1).sum() > 0


def test_saliency_gate_sets_background_where_saliency_is_low():
    mask = np.array([[2, 2, 0], [255, 3, 3]], np.uint8)
    sal = np.array([[0.9, 0.2, 0.9], [0.1, 0.5, 0.6]], np.float32)
    assert saliency_gate(mask, sal, 0.5).tolist() == [[2, 0, 0], [0, 3, 3]]
    assert saliency_gate(mask, None, 0.5) is mask
    with pytest.raises(ValueError, match="saliency of size"):
        saliency_gate(mask, sal[:, :2], 0.5)


def test_walk_pseudo_mask_with_the_saliency_gate():
    torch.manual_seed(0)
    net = AffinityNet("resnet18", dim=8).eval()
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    cams = np.ones((1, 32, 32), np.float32)  # the class everywhere
    sal = np.zeros((32, 32), np.float32)
    sal[8:24, 8:24] = 1.0  # saliency: a square object
    cfg = PseudoMaskParams(exp_times=2, radius=3, bg_threshold=0.1)
    plain = walk_pseudo_mask(net, image, cams, np.array([4]), cfg)
    assert (plain == 4).all()
    gated = walk_pseudo_mask(
        net, image, cams, np.array([4]), cfg, saliency=sal, saliency_threshold=0.5
    )
    assert (gated[8:24, 8:24] == 4).all() and (gated[sal < 0.5] == 0).all()
