"""Backbones: shapes at every output stride, dilation, weight files, checkpoints."""

from __future__ import annotations

import pytest
import torch
import torchvision

from pnoc.errors import ConfigError, PnocError
from pnoc.models.backbones import (
    build_backbone,
    load_model_checkpoint,
    save_model,
)
from pnoc.models.cam import CAMNet


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_backbone_shapes(name: str, output_stride: int) -> None:
    # On the meta device: shapes are computed without initialising or running real weights.
    with torch.device("meta"), torch.no_grad():
        bb = build_backbone(name, output_stride=output_stride)
        feats = bb(torch.randn(1, 3, 64, 64))
    assert feats["low"].shape == (1, bb.low_channels, 16, 16)
    side = 64 // output_stride
    assert feats["out"].shape == (1, bb.out_channels, side, side)
    assert bb.out_channels == (512 if name in ("resnet18", "resnet34") else 2048)


def test_dilation_matches_torchvision_bottleneck() -> None:
    # torchvision dilates Bottleneck stages itself; ours must give the same network (OS 8
    # exercises both the layer3 and the layer4 dilations).
    torch.manual_seed(0)
    ref = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    with torch.device("meta"):
        bb = build_backbone("resnet50", output_stride=8)
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    bb.load_state_dict(state, assign=True)
    bb.eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        expected = ref.layer4(
            ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x)))))))
        )
        torch.testing.assert_close(bb(x)["out"], expected)


def test_unknown_backbone_and_stride() -> None:
    with pytest.raises(ConfigError, match="resnet7"):
        build_backbone("resnet7")
    with pytest.raises(ConfigError, match="output_stride"):
        build_backbone("resnet18", output_stride=4)


def test_local_weight_file(tmp_path) -> None:
    ref = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    bb = build_backbone("resnet18", weights=str(path))
    torch.testing.assert_close(bb.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    # Wrapped in a dict and with a DataParallel prefix.
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, wrapped)
    bb2 = build_backbone("resnet18", weights=str(wrapped), output_stride=8)
    torch.testing.assert_close(bb2.conv1.weight, ref.conv1.weight)


def test_weight_file_with_wrong_keys(tmp_path) -> None:
    state = torchvision.models.resnet18().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["layer1.0.conv1.weight"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(PnocError) as info:
        build_backbone("resnet18", weights=str(path))
    msg = str(info.value)
    assert str(path) in msg and "extra.weight" in msg and "layer1.0.conv1.weight" in msg


def test_weight_file_wrong_architecture_and_garbage(tmp_path) -> None:
    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"] = torch.zeros(3, 3)
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    with pytest.raises(PnocError, match="shape.pth"):
        build_backbone("resnet18", weights=str(path))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PnocError, match="junk.pth"):
        build_backbone("resnet18", weights=str(junk))
    with pytest.raises(PnocError, match="not found"):
        build_backbone("resnet18", weights=str(tmp_path / "missing.pth"))


def test_download_failure_is_explained(monkeypatch) -> None:
    from torchvision.models._api import WeightsEnum

    def offline(self, *args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(PnocError, match="local path"):
        build_backbone("resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        build_backbone("resnet18", weights="NOT_A_WEIGHT_NAME")


def test_checkpoint_roundtrip_and_backbone_mismatch(tmp_path) -> None:
    model = CAMNet("resnet18", 3, output_stride=8)
    path = tmp_path / "cam.pt"
    save_model(path, model, {"stage": "train_cam", "epochs": 2})
    state, meta = load_model_checkpoint(path, expected_backbone="resnet18")
    assert meta == {
        "arch": "camnet",
        "backbone": "resnet18",
        "num_classes": 3,
        "output_stride": 8,
        "stage": "train_cam",
        "epochs": 2,
    }
    assert set(state) == set(model.state_dict())
    again = CAMNet.from_checkpoint(path)
    torch.testing.assert_close(again.classifier.weight, model.classifier.weight)
    assert again.backbone.output_stride == 8
    with pytest.raises(PnocError) as info:
        load_model_checkpoint(path, expected_backbone="resnet50")
    assert str(path) in str(info.value)
    assert "resnet50" in str(info.value) and "resnet18" in str(info.value)
    with pytest.raises(PnocError, match="not found"):
        load_model_checkpoint(tmp_path / "nope.pt")
    # A pnoc checkpoint also serves as backbone weights (its head is ignored).
    bb = build_backbone("resnet18", weights=str(path), output_stride=16)
    torch.testing.assert_close(bb.layer2[0].conv1.weight, model.backbone.layer2[0].conv1.weight)
    with pytest.raises(PnocError, match="JSON"):
        save_model(tmp_path / "x.pt", model, {"bad": object()})
