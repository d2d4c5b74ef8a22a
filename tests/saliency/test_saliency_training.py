"""C²AM-H training: hint dataset alignment, the Method's step, the orientation fix, a tiny run."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pnoc.cam.inference import save_cam_npz
from pnoc.config import SaliencyParams
from pnoc.data.base import SampleKey
from pnoc.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResize,
)
from pnoc.engine import Runtime
from pnoc.errors import ConfigError, PnocError
from pnoc.models.ccam import CCAMNet
from pnoc.saliency.inference import orientation, predict_saliency
from pnoc.saliency.losses import ccam_loss
from pnoc.saliency.training import (
    C2AMH,
    HintSet,
    dequantise_hint,
    fix_orientation,
    quantise_hint,
)
from pnoc.steps import train_saliency


def _gray_gradient(h: int, w: int) -> np.ndarray:
    """An image whose gray level is its hint × 254: a left-to-right ramp plus a bright square."""
    q = np.tile(np.linspace(0, 200, w).round().astype(np.uint8), (h, 1))
    q[2:6, 3:9] = 254
    return q


def _write_hint_cam(cam_dir: Path, image_id: str, q: np.ndarray) -> None:
    save_cam_npz(cam_dir / f"{image_id}.npz", (q / 254.0)[None].astype(np.float16), np.array([1]))


def _denormalised_channels(image: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return ((image * std + mean) * 255).round().numpy().astype(np.int64)


def test_quantisation_round_trip() -> None:
    h = np.array([[0.0, 0.4, 1.0, 0.123]])
    q = quantise_hint(h)
    assert q.max() <= 254
    back = dequantise_hint(np.concatenate([q, [[255]]], axis=1).astype(np.uint8))
    np.testing.assert_allclose(back[0, :4].numpy(), h[0], atol=1 / 508 + 1e-7)
    assert float(back[0, 4]) == 0.0  # padding -> no hint


def test_hint_follows_flip_and_padded_crop(tmp_path: Path, fake_reader) -> None:
    q = _gray_gradient(20, 24)
    reader = fake_reader([np.repeat(q[..., None], 3, axis=2)])
    _write_hint_cam(tmp_path, "img0", q)
    transform = Compose([RandomHorizontalFlip(p=1.0), RandomCrop(32)])
    item = HintSet(reader, tmp_path, transform)[SampleKey(0, 5)]
    assert item["image"].shape == (3, 32, 32) and item["hint"].shape == (1, 32, 32)
    rgb = _denormalised_channels(item["image"])
    content = (rgb[0] == rgb[1]) & (rgb[1] == rgb[2])  # padding is the (non-gray) mean colour
    assert 0 < content.sum() < 32 * 32
    hint_q = np.rint(item["hint"][0].numpy() * 254).astype(np.int64)
    np.testing.assert_array_equal(hint_q[content], rgb[0][content])
    assert (hint_q[~content] == 0).all()

    # The crop equals the flipped original exactly when no padding/offset is involved.
    same = HintSet(reader, tmp_path, Compose([RandomHorizontalFlip(p=1.0), RandomCrop((20, 24))]))
    hint = np.rint(same[0]["hint"][0].numpy() * 254).astype(np.uint8)
    np.testing.assert_array_equal(hint, q[:, ::-1])


def test_hint_follows_random_resize(tmp_path: Path, fake_reader) -> None:
    q = _gray_gradient(20, 24)
    reader = fake_reader([np.repeat(q[..., None], 3, axis=2)])
    _write_hint_cam(tmp_path, "img0", q)
    transform = Compose([RandomResize((0.6, 1.4)), RandomHorizontalFlip(), RandomCrop(24)])
    hs = HintSet(reader, tmp_path, transform)
    for seed in range(4):
        item = hs[SampleKey(0, seed)]
        rgb = _denormalised_channels(item["image"])
        content = (rgb[0] == rgb[1]) & (rgb[1] == rgb[2])
        hint_q = item["hint"][0].numpy() * 254
        # Bilinear (image) vs nearest (hint) resampling: equal up to one ramp step or an edge.
        close = np.abs(hint_q[content] - rgb[0][content]) <= 30
        assert close.mean() > 0.8


def test_missing_cam_names_the_file(tmp_path: Path, fake_reader) -> None:
    reader = fake_reader([np.zeros((8, 8, 3), np.uint8)], ids=["lonely"])
    with pytest.raises(PnocError, match="lonely.npz"):
        HintSet(reader, tmp_path / "cams")[0]


def test_cam_of_another_size_is_resized(tmp_path: Path, fake_reader) -> None:
    reader = fake_reader([np.zeros((16, 12, 3), np.uint8)])
    save_cam_npz(tmp_path / "img0.npz", np.ones((2, 4, 3), np.float16), np.array([1, 2]))
    item = HintSet(reader, tmp_path)[0]
    assert item["hint"].shape == (1, 16, 12) and float(item["hint"].min()) == 1.0


@pytest.fixture(scope="module")
def ccam() -> CCAMNet:
    torch.manual_seed(0)
    return CCAMNet("resnet18", output_stride=16)


def _batch() -> dict:
    torch.manual_seed(2)
    hint = torch.zeros(3, 1, 64, 64)
    hint[:, :, 16:48, 16:48] = 0.9
    return {"image": torch.randn(3, 3, 64, 64), "hint": hint, "id": ["a", "b", "c"]}


def test_train_step_logs_and_loss(ccam: CCAMNet, grad_context) -> None:
    model = copy.deepcopy(ccam)
    method = C2AMH(model, lambda_h=2.0)
    ctx = grad_context(modules=method.modules())
    logs = method.train_step(_batch(), ctx)
    assert set(logs) == {"loss", "fg_fg", "fg_bg", "bg_bg", "hint"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    assert logs["hint"] > 0
    expected = logs["fg_fg"] + logs["fg_bg"] + logs["bg_bg"] + 2.0 * logs["hint"]
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    assert ctx.updates[0]["optimizer"] == "ccam"
    assert "head.conv.weight" in ctx.updates[0]["grads"]


def test_lambda_zero_is_plain_ccam(ccam: CCAMNet, grad_context) -> None:
    model = copy.deepcopy(ccam)
    method = C2AMH(model, lambda_h=0.0)
    ctx = grad_context(modules=method.modules())
    batch = _batch()
    logs = method.train_step(batch, ctx)
    assert logs["loss"] == pytest.approx(logs["fg_fg"] + logs["fg_bg"] + logs["bg_bg"], rel=1e-6)
    assert logs["hint"] > 0  # still logged

    plain = copy.deepcopy(ccam)
    fg, bg, _ = plain(batch["image"])
    loss, _ = ccam_loss(fg, bg)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(logs["loss"], rel=1e-6)
    torch.testing.assert_close(
        ctx.updates[0]["grads"]["head.conv.weight"], plain.head.conv.weight.grad
    )

    no_hint = {k: v for k, v in batch.items() if k != "hint"}
    plain_method = C2AMH(copy.deepcopy(ccam), lambda_h=0.0)
    logs = plain_method.train_step(no_hint, grad_context(modules=plain_method.modules()))
    assert logs["hint"] == 0.0
    with pytest.raises(ConfigError, match="hint"):
        C2AMH(model).train_step(no_hint, ctx)


def test_fix_orientation_flips_an_inverted_model(
    ccam: CCAMNet, tmp_path: Path, fake_reader
) -> None:
    model = copy.deepcopy(ccam).eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    reader = fake_reader(images)
    hs = HintSet(reader, tmp_path)
    # Hints = the opposite of what the model predicts: the model looks inverted.
    sals = [predict_saliency(model, hs.transform(im, None, rng)[0]) for im in images]
    delta = float(np.median(np.concatenate([1 - s.ravel() for s in sals])))
    for image_id, s in zip(reader.ids, sals, strict=True):
        save_cam_npz(tmp_path / f"{image_id}.npz", (1 - s)[None].astype(np.float16), np.array([1]))
    hints = [hs[i]["hint"][0].numpy() for i in range(3)]
    assert orientation(sals, hints, delta)

    check = fix_orientation(model, hs, delta_fg=delta)
    assert check.flipped and check.inverted and model.is_inverted and check.images == 3
    assert check.fg_mean < check.bg_mean
    fixed = [predict_saliency(model, hs[i]["image"]) for i in range(3)]
    np.testing.assert_allclose(fixed[0], 1 - sals[0], atol=1e-5)
    assert not orientation(fixed, hints, delta)
    again = fix_orientation(model, hs, delta_fg=delta)  # idempotent
    assert not again.flipped and again.inverted


def test_tiny_training_run(synthetic_with_cams) -> None:
    dataset, cam_dir = synthetic_with_cams
    cfg = SaliencyParams(
        epochs=1,
        batch_size=2,
        lr=0.01,
        backbone="resnet18",
        weights=None,
        features="out",
        max_steps_per_epoch=2,
    )
    runtime = Runtime(seed=0, progress=False)
    trained = train_saliency.run(
        cfg, dataset, cam_dir, runtime, image_size=32, orientation_images=3
    )
    assert trained.result.steps == 2
    (epoch,) = trained.result.history
    for key in ("loss", "fg_fg", "fg_bg", "bg_bg", "hint"):
        assert math.isfinite(epoch[key])
    assert not trained.model.training
    assert trained.orientation.images == 3
    assert trained.model.is_inverted == trained.orientation.inverted
