"""CCAMNet: shapes, pooling, orientation flag, parameter groups and checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pnoc.errors import PnocError
from pnoc.models.backbones import save_model
from pnoc.models.cam import CAMNet
from pnoc.models.ccam import CCAMNet


@pytest.fixture(scope="module")
def model() -> CCAMNet:
    torch.manual_seed(0)
    return CCAMNet("resnet18", output_stride=16)


def test_forward_shapes_and_pooling(model: CCAMNet) -> None:
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        fg, bg, logits = model(x)
        feats = model.backbone(x)["out"]
    assert fg.shape == bg.shape == (2, 512) and logits.shape == (2, 1, 4, 4)
    # fg + bg = global average of the features; fg = P-weighted average.
    torch.testing.assert_close(fg + bg, feats.mean((2, 3)), rtol=1e-4, atol=1e-5)
    p = torch.sigmoid(logits)
    torch.testing.assert_close(fg, (p * feats).mean((2, 3)), rtol=1e-4, atol=1e-5)
    assert model.head.conv.bias is None and model.spec.arch == "ccam"
    assert model.spec.num_classes == 1


def test_saliency_and_inversion(model: CCAMNet) -> None:
    x = torch.randn(1, 3, 48, 64)
    model.eval()
    with torch.no_grad():
        sal = model.saliency(x)
        small = model.saliency(x, size=(3, 4))
        model.set_inverted(True)
        flipped = model.saliency(x)
        model.set_inverted(False)
    assert sal.shape == (1, 1, 48, 64) and small.shape == (1, 1, 3, 4)
    assert float(sal.min()) >= 0 and float(sal.max()) <= 1
    torch.testing.assert_close(flipped, 1 - sal)
    assert "inverted" in model.state_dict()


def test_param_groups_cover_every_parameter_once(model: CCAMNet) -> None:
    groups = {g["name"]: g for g in model.param_groups()}
    assert groups["head_weight"]["lr_mult"] == 10.0
    assert groups["head_bias"]["lr_mult"] == 20.0 and groups["head_bias"]["weight_decay"] == 0.0
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = CCAMNet("resnet18", output_stride=32).eval()
    net.set_inverted(True)
    path = tmp_path / "ccam.pt"
    save_model(path, net, {"stage": "test"})
    loaded = CCAMNet.from_checkpoint(path, expected_backbone="resnet18").eval()
    assert loaded.is_inverted and loaded.spec == net.spec
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.saliency(x), net.saliency(x))

    save_model(tmp_path / "cam.pt", CAMNet("resnet18", 2), {})
    with pytest.raises(PnocError, match="'camnet'"):
        CCAMNet.from_checkpoint(tmp_path / "cam.pt")


def test_low_features_give_a_stride_4_partition(tmp_path: Path) -> None:
    torch.manual_seed(2)
    net = CCAMNet("resnet18", output_stride=16, features="low").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fg, bg, logits = net(x)
        low = net.backbone(x)["low"]
    assert logits.shape == (2, 1, 16, 16) and fg.shape == (2, low.shape[1])
    torch.testing.assert_close(fg + bg, low.mean((2, 3)), rtol=1e-4, atol=1e-5)
    path = tmp_path / "ccam_low.pt"
    save_model(path, net, {})
    loaded = CCAMNet.from_checkpoint(path).eval()
    assert loaded.features == "low"
    with torch.no_grad():
        torch.testing.assert_close(loaded.saliency(x), net.saliency(x))
    with pytest.raises(ValueError, match="features"):
        CCAMNet("resnet18", features="mid")
