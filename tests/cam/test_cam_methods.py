"""Each CAM method runs a step; gradients go where they should (P-NOC's two updates)."""

from __future__ import annotations

import math

import pytest
import torch

from pnoc.cam.generator import FrozenClassifier
from pnoc.cam.methods import OCCSE, PNOC, POC, Puzzle, VanillaCAM, build_method
from pnoc.cam.schedules import Ramp
from pnoc.errors import ConfigError
from pnoc.models.cam import CAMNet, copy_camnet

K = 3


@pytest.fixture(scope="module")
def nets() -> tuple[CAMNet, CAMNet]:
    torch.manual_seed(0)
    return CAMNet("resnet18", K), CAMNet("resnet18", K)


def _batch() -> dict:
    torch.manual_seed(1)
    return {
        "image": torch.randn(2, 3, 32, 32),
        "labels": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),
        "id": ["a", "b"],
        "index": torch.tensor([0, 1]),
    }


def _fresh(nets):
    return copy_camnet(nets[0]), copy_camnet(nets[1])


AP, AO, OW = Ramp(0.0, 4.0, 0.5), Ramp(0.3, 1.0, 1.0), Ramp(0.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "name,keys",
    [
        ("vanilla", {"loss", "cls"}),
        ("puzzle", {"loss", "cls", "pcls", "re", "alpha_p"}),
        ("occse", {"loss", "cls", "oc", "alpha_oc"}),
        ("poc", {"loss", "cls", "pcls", "re", "oc", "alpha_p", "alpha_oc"}),
        (
            "pnoc",
            {"loss", "cls", "pcls", "re", "oc", "noc", "noc_loss", "alpha_p", "alpha_oc", "ow"},
        ),
    ],
)
def test_one_step_each_method(nets, fake_context, name: str, keys: set[str]) -> None:
    gen, oc = _fresh(nets)
    method = build_method(name, gen, oc=oc, alpha_p=AP, alpha_oc=AO, ow=OW)
    ctx = fake_context(method.modules(), progress=0.25)
    before = gen.classifier.weight.detach().clone()
    logs = method.train_step(_batch(), ctx)
    assert set(logs) == keys
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    assert not torch.equal(before, gen.classifier.weight)  # the generator was updated
    if "alpha_p" in logs:
        assert logs["alpha_p"] == pytest.approx(2.0)
    if "alpha_oc" in logs:
        assert logs["alpha_oc"] == pytest.approx(0.475)
    names = [u.optimizer for u in ctx.updates]
    assert names == (["generator", "noc"] if name == "pnoc" else ["generator"])
    expected = logs["loss"]
    assert ctx.updates[0].loss == pytest.approx(expected)
    if name in ("puzzle", "poc", "pnoc"):
        recomposed = logs["cls"] + logs["pcls"] + logs["alpha_p"] * logs["re"]
        recomposed += logs["alpha_oc"] * logs["oc"] if "oc" in logs else 0.0
        assert expected == pytest.approx(recomposed, rel=1e-5)


def test_frozen_oc_stays_frozen_and_passes_gradient(nets, fake_context) -> None:
    gen, oc = _fresh(nets)
    oc_before = {k: v.clone() for k, v in oc.state_dict().items()}
    method = POC(gen, oc, AP, AO)
    frozen = method.adversary
    assert isinstance(frozen, FrozenClassifier)
    frozen.train()
    gen.train()
    assert not frozen.training and not oc.training
    assert all(not p.requires_grad for p in oc.parameters())
    assert "oc" not in method.modules() and set(method.modules()) == {"generator"}

    # L_oc reaches the generator through the mask M.
    b = _batch()
    out = method._generator_forward(b["image"], b["labels"], 1.0)
    (g,) = torch.autograd.grad(out.terms["oc"], gen.classifier.weight)
    assert g.abs().sum() > 0

    ctx = fake_context(method.modules())
    method.train_step(_batch(), ctx)
    assert all(p.grad is None for p in oc.parameters())
    for k, v in oc.state_dict().items():  # BN running stats untouched too
        assert torch.equal(v, oc_before[k]), k


def test_pnoc_gradients_do_not_leak(nets, fake_context) -> None:
    gen, oc = _fresh(nets)
    noc = copy_camnet(oc)
    method = PNOC(gen, noc, AP, AO, OW, mask_threshold=0.2)
    assert set(method.modules()) == {"generator", "noc"}
    ctx = fake_context(method.modules(), progress=0.5)
    logs = method.train_step(_batch(), ctx)
    gen_update, noc_update = ctx.updates
    # Generator step: the noc (the judge) gathers no weight gradient, the generator does.
    assert gen_update.optimizer == "generator"
    assert gen_update.grads_after == {"generator": True, "noc": False}
    # Noc step: starts from zero gradients everywhere; only the noc receives gradient.
    assert noc_update.optimizer == "noc"
    assert noc_update.grads_before == {"generator": False, "noc": False}
    assert noc_update.grads_after == {"generator": False, "noc": True}
    assert noc_update.loss == pytest.approx(logs["noc_loss"])
    assert logs["noc_loss"] == pytest.approx(0.5 * logs["noc"])
    assert all(p.requires_grad for p in noc.parameters())  # restored after the generator step
    assert noc.training


def test_pnoc_noc_step_sees_hard_erased_images(nets, fake_context) -> None:
    gen, oc = _fresh(nets)
    method = PNOC(gen, copy_camnet(oc), AP, AO, OW, mask_threshold=0.2)
    seen: list[torch.Tensor] = []
    hook = method.noc.backbone.conv1.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        method.train_step(_batch(), fake_context(method.modules()))
    finally:
        hook.remove()
    assert len(seen) == 2  # one judging pass (generator step), one training pass (noc step)
    x = _batch()["image"]
    erased = seen[1]
    kept = erased != 0
    assert torch.equal(erased[kept], x[kept])  # pixels are either kept or zeroed
    assert (~kept).any()  # the most discriminant region was erased


def test_constructor_validation(nets) -> None:
    gen, oc = _fresh(nets)
    with pytest.raises(ConfigError):
        build_method("nope", gen)
    with pytest.raises(ConfigError, match="oc"):
        build_method("poc", gen)
    with pytest.raises(ConfigError):
        PNOC(gen, gen, AP, AO, OW)
    with pytest.raises(ConfigError):
        VanillaCAM(gen, label_smoothing=1.5)
    assert isinstance(build_method("puzzle", gen), Puzzle)
    assert isinstance(build_method("occse", gen, oc=oc), OCCSE)
    pnoc = build_method("pnoc", gen, oc=oc)
    assert pnoc.modules()["noc"] is not oc  # the OC itself is left untouched
    groups = pnoc.param_groups()
    assert set(groups) == {"generator", "noc"}


def test_pnoc_step_under_autocast(nets, fake_context) -> None:
    """Mixed precision (bf16 on CPU here; the engine uses fp16 on CUDA): no dtype clashes."""
    gen, oc = _fresh(nets)
    method = build_method("pnoc", gen, oc=oc)

    class AutocastContext(fake_context):
        def autocast(self):
            return torch.autocast("cpu", dtype=torch.bfloat16)

    logs = method.train_step(_batch(), AutocastContext(method.modules()))
    assert all(math.isfinite(v) for v in logs.values())


@pytest.mark.parametrize("name", ["vanilla", "pnoc"])
def test_label_vector_of_wrong_length_is_named(nets, fake_context, name: str) -> None:
    gen, oc = _fresh(nets)
    method = build_method(name, gen, oc=oc, alpha_p=AP, alpha_oc=AO, ow=OW)
    batch = _batch()
    batch["labels"] = torch.ones(2, K + 2)
    with pytest.raises(ConfigError, match=rf"expected a vector of {K} classes.*\(2, {K + 2}\)"):
        method.train_step(batch, fake_context(method.modules()))
