"""Objective pieces: catching the trained network, the proxy mask and its metrics."""

from __future__ import annotations

import numpy as np
import torch

from pnoc.cam.generator import FrozenClassifier
from pnoc.models.cam import CAMNet, copy_camnet
from pnoc.tune.objectives import ModuleTap
from pnoc.tune.trial_metrics import cam_saliency_mask


def test_the_tap_catches_the_network_being_trained_not_the_frozen_judges():
    generator = CAMNet("resnet18", 3)
    judge = FrozenClassifier(copy_camnet(generator))  # eval mode, no trainable parameter
    noc = copy_camnet(generator).eval()
    x = torch.zeros(1, 3, 32, 32)
    with ModuleTap(CAMNet) as tap:
        judge(x)
        noc(x)
        with torch.no_grad():
            generator(x)  # no gradients: an evaluation, not a training step
        assert tap.module is None
        generator.train()
        generator(x)
        noc.train()
        noc(x)
    assert tap.get() is generator
    before = len(torch.nn.modules.module._global_forward_pre_hooks)
    with ModuleTap(CAMNet):
        pass
    assert len(torch.nn.modules.module._global_forward_pre_hooks) == before  # hook removed


def test_proxy_mask_takes_classes_from_cams_and_extent_from_saliency():
    cams = np.zeros((2, 2, 3), dtype=np.float32)
    cams[0, :, 0] = 0.9  # class 2 strongest in column 0
    cams[1, :, 1:] = 0.8  # class 5 elsewhere
    classes = np.array([2, 5])
    sal = np.array([[0.9, 0.9, 0.1], [0.6, 0.2, 0.7]], dtype=np.float32)
    mask = cam_saliency_mask(cams, classes, sal, threshold=0.5)
    assert mask.tolist() == [[2, 5, 0], [2, 0, 5]]
    assert not cam_saliency_mask(cams[:0], classes[:0], sal, 0.5).any()  # no class: background
