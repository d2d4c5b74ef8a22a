"""Every term of the generator step against values computed by hand on a tiny input, at the
resolution and normalisation docs/method.md's audit settles:

- the class maps A and the tiles' maps are taken at the generator's output stride (16 here);
  Puzzle's L_re compares A with the merged tile maps Â at that resolution, with hard labels;
- OC-CSE's soft mask M is relu(A_r) upsampled bilinearly to the image, over its image's maximum
  (``mask_norm="image"``) or one maximum over the batch (``"batch"``, the authors');
- L_cls, L_pcls and L_oc take smoothed labels (ỹ = 0.95 / 0.05 at ε = 0.1).

The input (32×32, 3 equal channels) is 1 on the top-left 8×8 block, 2 on the bottom-right 8×8
block and 0 elsewhere; the fake generator's maps are ±(avgpool16(x) − mean(x)) for classes 0/1:

    avgpool16(x) = [[0.25, 0], [0, 0.5]],  mean(x) = 192/1024 = 0.1875
    A_0 = [[0.0625, −0.1875], [−0.1875, 0.3125]],  A_1 = −A_0,  gap(A) = (0, 0)

Each 16×16 tile holds one block or none, so a tile's pooled value equals its own mean: Â = 0.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pnoc.cam import losses
from pnoc.cam.generator import CAMMethod
from pnoc.cam.methods import PNOC
from pnoc.cam.schedules import Ramp
from pnoc.models.cam import CAMNet, copy_camnet

LN2 = math.log(2.0)


class PoolMaps(nn.Module):
    """Maps at stride 16: class 0 = avgpool16(x) − mean(x), class 1 = its negative."""

    num_classes = 2

    def forward(self, x: Tensor) -> Tensor:
        g = x.mean(dim=1, keepdim=True)
        p = F.avg_pool2d(g, 16) - g.mean(dim=(2, 3), keepdim=True)
        return torch.cat([p, -p], dim=1)


class MeanJudge(nn.Module):
    """An adversary whose logits are the mean of its input, for both classes (1×1 maps)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1).expand(-1, 2, 1, 1)


def _image(scale: float = 1.0) -> Tensor:
    x = torch.zeros(1, 3, 32, 32)
    x[..., :8, :8] = 1.0
    x[..., 24:, 24:] = 2.0
    return x * scale


Y = torch.tensor([[1.0, 0.0]])


def _poc(mask_norm: str = "image") -> CAMMethod:
    return CAMMethod(
        PoolMaps(),  # type: ignore[arg-type]
        label_smoothing=0.1,
        alpha_p=Ramp(0.0, 4.0, 0.5),
        adversary=MeanJudge(),
        alpha_oc=Ramp(0.3, 1.0, 1.0),
        mask_norm=mask_norm,
    )


def test_mlsm_and_smoothing_by_hand() -> None:
    # logits (0, ln 3) with ỹ = (0.95, 0.05): class 0 costs ln 2 whatever its target;
    # class 1: −(0.05·ln 0.75 + 0.95·ln 0.25) = 1.3313637...; mean over the classes.
    targets = losses.smooth_labels(torch.tensor([[1.0, 0.0]]), 0.1)
    torch.testing.assert_close(targets, torch.tensor([[0.95, 0.05]]))
    logits = torch.tensor([[0.0, math.log(3.0)]])
    expected = (LN2 - (0.05 * math.log(0.75) + 0.95 * math.log(0.25))) / 2
    assert expected == pytest.approx(1.0122554636)
    assert float(losses.mlsm(logits, targets)) == pytest.approx(expected, abs=1e-6)


def test_poc_terms_by_hand() -> None:
    method = _poc()
    out = method._generator_forward(_image(), Y, progress=0.25)
    assert out.maps.shape == (1, 2, 2, 2)  # stride 16 on 32 px
    torch.testing.assert_close(out.maps[0, 0], torch.tensor([[0.0625, -0.1875], [-0.1875, 0.3125]]))
    t = out.terms
    # gap(A) = gap(Â) = 0: each class costs ln 2 whatever its smoothed target.
    assert float(t["cls"]) == pytest.approx(LN2, abs=1e-6)
    assert float(t["pcls"]) == pytest.approx(LN2, abs=1e-6)
    # L_re = mean(|A − Â|·y) over B·K·h·w = 8 entries, class 0 only (hard labels):
    # (0.0625 + 0.1875 + 0.1875 + 0.3125) / 8.
    assert float(t["re"]) == pytest.approx(0.75 / 8, abs=1e-7)
    # M: relu(A_0) bilinearly upsampled to 32×32 (corners of 8×8 px keep the cell's value),
    # over its maximum 0.3125: 0.2 on the top-left block, 1 on the bottom-right, 0 at the others.
    assert out.mask is not None and out.mask.shape == (1, 1, 32, 32)
    m = out.mask[0, 0]
    torch.testing.assert_close(m[:8, :8], torch.full((8, 8), 0.2), atol=1e-4, rtol=0)
    torch.testing.assert_close(m[24:, 24:], torch.full((8, 8), 1.0), atol=1e-4, rtol=0)
    assert float(m[:8, 24:].abs().max()) == 0.0 and float(m[24:, :8].abs().max()) == 0.0
    # L_oc: x·(1 − M) keeps 0.8 on the top-left block and nothing on the bottom-right, so the
    # judge's logits are 64·0.8/1024 = 0.05 for both classes; the targets are y without r = 0,
    # smoothed: (0.05, 0.05). −(0.05·ln σ(0.05) + 0.95·ln σ(−0.05)) for each class.
    logsig = lambda z: -math.log1p(math.exp(-z))  # noqa: E731
    l_oc = -(0.05 * logsig(0.05) + 0.95 * logsig(-0.05))
    assert l_oc == pytest.approx(0.7159596480)
    assert float(t["oc"]) == pytest.approx(l_oc, abs=1e-5)
    # Ramps at a quarter of the run: α_p 0→4 over the first half = 2, α_oc 0.3→1 = 0.475.
    assert out.ramps == pytest.approx({"alpha_p": 2.0, "alpha_oc": 0.475})
    total = 2 * LN2 + 2.0 * 0.75 / 8 + 0.475 * l_oc
    assert float(out.loss) == pytest.approx(total, abs=1e-5)


def test_mask_normalisation_per_image_and_per_batch() -> None:
    # The same image at scale 1 and 4: its maps scale by 4 (max 0.3125 and 1.25).
    x = torch.cat([_image(1.0), _image(4.0)])
    y = torch.cat([Y, Y])
    per_image = _poc("image")._generator_forward(x, y, 0.5).mask
    per_batch = _poc("batch")._generator_forward(x, y, 0.5).mask
    assert per_image is not None and per_batch is not None
    corners = lambda m: (float(m[0, :4, :4].mean()), float(m[0, 28:, 28:].mean()))  # noqa: E731
    # Per image, both images get the same mask: 0.2 and 1.
    assert corners(per_image[0]) == pytest.approx((0.2, 1.0), abs=1e-4)
    assert corners(per_image[1]) == pytest.approx((0.2, 1.0), abs=1e-4)
    # One maximum (1.25) for the batch: the weaker image is erased only partly.
    assert corners(per_batch[0]) == pytest.approx((0.05, 0.25), abs=1e-4)
    assert corners(per_batch[1]) == pytest.approx((0.2, 1.0), abs=1e-4)


def _noc_inputs(mask_norm: str) -> Tensor:
    """The image the noc trains on, for the batch of the test above at δ_noc = 0.6."""
    torch.manual_seed(0)
    gen, oc = CAMNet("resnet18", 2), CAMNet("resnet18", 2)
    method = PNOC(
        gen,
        copy_camnet(oc),
        Ramp(0.0, 4.0, 0.5),
        Ramp(0.3, 1.0, 1.0),
        Ramp(0.0, 1.0, 1.0),
        mask_threshold=0.6,
        mask_norm=mask_norm,
    )
    method._net = PoolMaps()  # the generator's maps: the hand-computed ones
    seen: list[Tensor] = []
    hook = method.noc.backbone.register_forward_pre_hook(lambda m, a: seen.append(a[0]))

    class Ctx:
        progress, device = 0.5, torch.device("cpu")

        def autocast(self):
            return torch.autocast("cpu", enabled=False)

        def update(self, optimizer, loss, terms=None):
            pass

    try:
        batch = {"image": torch.cat([_image(1.0), _image(4.0)]), "labels": torch.cat([Y, Y])}
        method.train_step(batch, Ctx())  # type: ignore[arg-type]
    finally:
        hook.remove()
    return seen[1]


@pytest.mark.parametrize("mask_norm", ["image", "batch"])
def test_noc_hard_mask_is_per_image_whatever_the_soft_mask(mask_norm: str) -> None:
    # δ_noc applies to each image's own normalised map: the bottom-right block (M = 1) goes,
    # the top-left block (M = 0.2) stays, in both images, with either soft-mask normalisation.
    x_noc = _noc_inputs(mask_norm)
    for i, scale in enumerate((1.0, 4.0)):
        assert float(x_noc[i, :, :8, :8].min()) == scale
        assert float(x_noc[i, :, 24:, 24:].abs().max()) == 0.0


def _bn_state(net: nn.Module) -> dict[str, Tensor]:
    return {
        f"{n}.{k}": v.detach().clone()
        for n, m in net.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for k, v in m.state_dict().items()
    }


@pytest.mark.parametrize("noc_bn", ["train", "frozen"])
def test_noc_batchnorm_modes(fake_context, noc_bn: str) -> None:
    torch.manual_seed(0)
    gen, oc = CAMNet("resnet18", 3), CAMNet("resnet18", 3)
    noc = copy_camnet(oc)
    method = PNOC(
        gen,
        noc,
        Ramp(0.0, 4.0, 0.5),
        Ramp(0.3, 1.0, 1.0),
        Ramp(0.0, 1.0, 1.0),
        mask_threshold=0.6,
        noc_bn=noc_bn,
    )
    bn_before = _bn_state(noc)
    conv_before = noc.backbone.conv1.weight.detach().clone()
    torch.manual_seed(1)
    batch = {"image": torch.randn(2, 3, 32, 32), "labels": torch.tensor([[1.0, 0, 1], [0, 1, 0]])}
    method.train_step(batch, fake_context(method.modules(), progress=0.5))
    bn_after = _bn_state(noc)
    assert not torch.equal(conv_before, noc.backbone.conv1.weight)  # the noc trained
    changed = [k for k in bn_before if not torch.equal(bn_before[k], bn_after[k])]
    if noc_bn == "frozen":  # statistics and affine fixed, in both passes
        assert changed == []
    else:  # batch statistics update the running ones, and the affine weights train
        assert any(k.endswith("running_mean") for k in changed)
        assert any(k.endswith(".weight") for k in changed)


def test_frozen_noc_batchnorm_survives_syncbn_conversion(fake_context) -> None:
    """Under ``base.sync_bn`` the trainer swaps the noc's BatchNorms for SyncBatchNorm after the
    method is built; ``noc_bn: frozen`` must hold for the modules the noc has then."""
    from timm.layers import convert_sync_batchnorm

    torch.manual_seed(0)
    gen, oc = CAMNet("resnet18", 3), CAMNet("resnet18", 3)
    noc = copy_camnet(oc)
    method = PNOC(
        gen, noc, Ramp(0.0, 4.0, 0.5), Ramp(0.3, 1.0, 1.0), Ramp(0.0, 1.0, 1.0), noc_bn="frozen"
    )
    converted = convert_sync_batchnorm(noc)
    assert converted is not noc or any(isinstance(m, nn.SyncBatchNorm) for m in noc.modules())
    seen: list[bool] = []
    hooks = [
        m.register_forward_pre_hook(lambda m, a: seen.append(m.training))
        for m in converted.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    method.noc = converted  # as the trainer hands converted modules back
    method._noc_net = converted
    try:
        ctx = fake_context({"generator": gen, "noc": converted}, progress=0.5)
        batch = {
            "image": torch.randn(2, 3, 32, 32),
            "labels": torch.tensor([[1.0, 0, 1], [0, 1, 0]]),
        }
        method.train_step(batch, ctx)
    finally:
        for h in hooks:
            h.remove()
    assert seen and not any(seen)  # every BatchNorm ran in eval mode, in both passes
