"""DeepLabV3+, its training step and test-time augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pnoc.errors import ConfigError, PnocError
from pnoc.models.backbones import save_model
from pnoc.models.cam import CAMNet
from pnoc.models.deeplab import DeepLabV3Plus
from pnoc.segmentation.inference import predict_probs, segment_image
from pnoc.segmentation.training import SegmentationMethod
from pnoc.viz import confusion_png


@pytest.mark.parametrize("output_stride", [8, 16])
def test_deeplab_logits_match_the_input_size(output_stride):
    net = DeepLabV3Plus("resnet18", 4, output_stride=output_stride).eval()
    out = net(torch.randn(1, 3, 50, 66))
    assert out.shape == (1, 4, 50, 66)


def test_deeplab_rejects_bad_config():
    with pytest.raises(ConfigError, match="num_classes"):
        DeepLabV3Plus("resnet18", 1)
    with pytest.raises(ConfigError, match="output_stride"):
        DeepLabV3Plus("resnet18", 3, output_stride=32)


def test_deeplab_checkpoint_round_trip_and_wrong_arch(tmp_path):
    net = DeepLabV3Plus("resnet18", 3).eval()
    save_model(tmp_path / "d.pt", net, {"class_names": ["background", "a", "b"]})
    again = DeepLabV3Plus.from_checkpoint(tmp_path / "d.pt").eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(net(x), again(x))
    save_model(tmp_path / "c.pt", CAMNet("resnet18", 2), {})
    with pytest.raises(PnocError, match="expected 'deeplabv3plus'"):
        DeepLabV3Plus.from_checkpoint(tmp_path / "c.pt")


def test_training_step_fits_one_batch(fake_context):
    torch.manual_seed(0)
    net = DeepLabV3Plus("resnet18", 3)
    method = SegmentationMethod(net, label_smoothing=0.1)
    ctx = fake_context(method.modules(), lr=0.01)
    image = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 32, 32, dtype=torch.long)
    mask[:, :, 16:] = 2
    mask[:, :2] = 255
    losses = [method.train_step({"image": image, "mask": mask}, ctx)["loss"] for _ in range(8)]
    assert losses[-1] < losses[0]
    all_ignored = method.train_step({"image": image, "mask": torch.full_like(mask, 255)}, ctx)
    assert all_ignored["loss"] == 0.0


def test_tta_probabilities_sum_to_one_and_flip_is_equivariant():
    torch.manual_seed(0)
    net = DeepLabV3Plus("resnet18", 3).eval()
    x = torch.randn(3, 40, 48)
    probs = predict_probs(net, x, scales=(1.0, 0.5), flip=True)
    assert probs.shape == (3, 40, 48)
    assert torch.allclose(probs.sum(0), torch.ones(40, 48), atol=1e-5)
    mirrored = predict_probs(net, x.flip(-1), scales=(1.0, 0.5), flip=True)
    assert torch.allclose(probs, mirrored.flip(-1), atol=1e-5)


def test_segment_image_returns_a_mask_at_the_image_size():
    net = DeepLabV3Plus("resnet18", 3)
    image = np.random.default_rng(0).integers(0, 255, (37, 41, 3), dtype=np.uint8)
    mask, probs = segment_image(net, image, scales=(1.0,), flip=False)
    assert mask.shape == (37, 41) and mask.dtype == np.uint8 and mask.max() < 3
    assert probs.shape == (3, 37, 41)


def test_confusion_png(tmp_path):
    confusion_png(np.array([[5, 1], [0, 0]]), ["background", "thing"], tmp_path / "c.png")
    from PIL import Image

    assert Image.open(tmp_path / "c.png").size[0] > 72
