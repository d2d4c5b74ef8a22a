"""The training loop: accumulation, poly LR, NaN guard, checkpoints, several optimizers."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pnoc.data.base import SampleKey
from pnoc.engine import (
    Callback,
    CheckpointConfig,
    Runtime,
    TrainContext,
    TrainData,
    build_sgd,
    fit,
    load_checkpoint,
    resolve_device,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pnoc.errors import NonFiniteLossError

torch.set_num_threads(1)


class RegressionData:
    """n fixed (x, y) pairs; no augmentation."""

    def __init__(self, n: int = 16, dim: int = 5) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x @ torch.randn(dim, 1, generator=g) + 0.1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[key.index], self.y[key.index]


class LinearMethod:
    """MSE regression; ``nan_at``: the term "puzzle" becomes NaN at that global step."""

    def __init__(self, dropout: float = 0.0, nan_at: int | None = None) -> None:
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(5, 1))
        self.nan_at = nan_at
        self.batch_sizes: list[int] = []

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def train_step(self, batch: Any, ctx: TrainContext) -> dict[str, float]:
        x, y = batch
        self.batch_sizes.append(len(x))
        mse = F.mse_loss(self.net(x), y)
        puzzle = mse * 0.0
        if ctx.step == self.nan_at:
            puzzle = puzzle + float("nan")
        ctx.update("sgd", mse + puzzle, {"mse": mse, "puzzle": puzzle})
        return {"loss": mse.item()}


class Recorder(Callback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.steps: list[dict[str, float]] = []
        self.epochs: list[dict[str, float]] = []
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.ended = False
        self.stop_at = stop_at
        self.method: LinearMethod | None = None

    def on_step_end(self, ctx: TrainContext, metrics: dict[str, float]) -> None:
        self.steps.append({"step": ctx.step, "epoch": ctx.epoch, **metrics})
        if self.method is not None:
            self.weights[ctx.step] = {k: v.clone() for k, v in self.method.net.state_dict().items()}
        if ctx.step == self.stop_at:
            raise KeyboardInterrupt  # an interruption fit() does not handle

    def on_epoch_end(self, ctx: TrainContext, metrics: dict[str, float]) -> None:
        self.epochs.append(metrics)

    def on_train_end(self, ctx: TrainContext) -> None:
        self.ended = True


def _fit(method: LinearMethod, **kw: Any) -> Any:
    """fit() with TrainData keys (epochs, batch_size, …) and Runtime keys (seed, …) mixed."""
    opt = build_sgd([{"params": method.net.parameters()}], lr=kw.pop("lr", 0.1))
    dataset = kw.pop("dataset", None) or RegressionData()
    data_keys = {"epochs", "batch_size", "grad_accum", "collate_fn", "max_steps_per_epoch"}
    data: dict[str, Any] = {"epochs": 2, "batch_size": 4}
    data.update({k: kw.pop(k) for k in list(kw) if k in data_keys})
    runtime: dict[str, Any] = {"seed": 0, "progress": False, **kw}
    return fit(method, TrainData(dataset, **data), {"sgd": opt}, Runtime(**runtime))


def test_grad_accumulation_equals_a_larger_batch() -> None:
    a, b = LinearMethod(), LinearMethod()
    ra = _fit(a, batch_size=4, grad_accum=2)
    rb = _fit(b, batch_size=8, grad_accum=1)
    assert ra.steps == rb.steps == 4
    assert a.batch_sizes == [4] * 8 and b.batch_sizes == [8] * 4
    for pa, pb in zip(a.net.parameters(), b.net.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_poly_lr_follows_the_global_step_and_history_holds_epoch_means() -> None:
    rec = Recorder()
    result = _fit(LinearMethod(), callbacks=[rec], epochs=3, max_steps_per_epoch=3)
    total = 9
    assert result.steps == total and result.epochs == 3 and rec.ended
    assert [s["step"] for s in rec.steps] == list(range(total))
    assert [s["epoch"] for s in rec.steps] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for s in rec.steps:
        assert s["lr/sgd"] == pytest.approx(0.1 * (1 - s["step"] / total) ** 0.9)
    assert len(result.history) == 3 and result.history == rec.epochs
    assert result.history[1]["loss"] == pytest.approx(np.mean([s["loss"] for s in rec.steps[3:6]]))


def test_dataset_smaller_than_a_batch_gives_one_smaller_batch() -> None:
    m = LinearMethod()
    result = _fit(m, dataset=RegressionData(n=3), batch_size=8, grad_accum=2)
    assert result.steps == 2 and m.batch_sizes == [3, 3]


def test_nonfinite_term_raises_with_its_name_and_step_and_leaves_a_checkpoint(
    tmp_path: Path,
) -> None:
    ckpt = CheckpointConfig(tmp_path / "c.ckpt", every_steps=100, fingerprint="f")
    m, rec = LinearMethod(nan_at=3), Recorder()
    rec.method = m
    with pytest.raises(NonFiniteLossError) as err:
        _fit(m, checkpoint=ckpt, callbacks=[rec])
    assert err.value.step == 3 and err.value.term == "puzzle" and math.isnan(err.value.value)
    state = load_checkpoint(ckpt.path)
    assert state is not None
    assert state["global_step"] == 3 and state["epoch"] == 0 and state["batches_done"] == 3
    for k, v in rec.weights[2].items():  # the weights after 3 good steps, unchanged
        assert torch.equal(state["modules"]["net"][k], v)


def test_nonfinite_total_is_named_loss() -> None:
    class InfMethod(LinearMethod):
        def train_step(self, batch: Any, ctx: TrainContext) -> dict[str, float]:
            ctx.update("sgd", self.net(batch[0]).sum().abs() * float("inf"))
            return {}

    with pytest.raises(NonFiniteLossError, match="'loss' is inf at step 0"):
        _fit(InfMethod())


def test_resume_after_interruption_and_fingerprint_mismatch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "run.ckpt"
    reference = LinearMethod(dropout=0.2)
    _fit(reference, epochs=2)

    with pytest.raises(KeyboardInterrupt):  # interrupted at step 5: last checkpoint at 4 done
        _fit(
            LinearMethod(dropout=0.2),
            callbacks=[Recorder(stop_at=5)],
            checkpoint=CheckpointConfig(path, every_steps=2, fingerprint="a"),
        )
    assert load_checkpoint(path)["global_step"] == 4

    caplog.set_level(logging.INFO, logger="pnoc.engine")
    other = _fit(LinearMethod(dropout=0.2), checkpoint=CheckpointConfig(path, fingerprint="b"))
    assert other.resumed_from_step is None
    assert "fingerprint" in caplog.text and not path.exists()

    with pytest.raises(KeyboardInterrupt):
        _fit(
            LinearMethod(dropout=0.2),
            callbacks=[Recorder(stop_at=5)],
            checkpoint=CheckpointConfig(path, every_steps=2, fingerprint="a"),
        )
    resumed_method = LinearMethod(dropout=0.2)
    torch.manual_seed(99)  # whatever the RNG state at start, the checkpoint's is restored
    resumed = _fit(
        resumed_method, checkpoint=CheckpointConfig(path, every_steps=2, fingerprint="a")
    )
    assert resumed.resumed_from_step == 4 and "resumed from step 4" in caplog.text
    for p, q in zip(reference.net.parameters(), resumed_method.net.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not path.exists()


def test_layout_change_ignores_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _fit(
            LinearMethod(),
            callbacks=[Recorder(stop_at=2)],
            checkpoint=CheckpointConfig(path, every_steps=1),
        )
    result = _fit(LinearMethod(), batch_size=2, checkpoint=CheckpointConfig(path))
    assert result.resumed_from_step is None


class TwoOptimizerMethod:
    """P-NOC-like: a generator step whose loss passes through the noc, then a noc step."""

    def __init__(self, only_gen: bool = False) -> None:
        torch.manual_seed(0)
        self.gen = nn.Linear(5, 5)
        self.noc = nn.Linear(5, 1)
        self.only_gen = only_gen
        self.noc_grads_after_gen: list[Any] = []

    def modules(self) -> dict[str, nn.Module]:
        return {"gen": self.gen, "noc": self.noc}

    def train_step(self, batch: Any, ctx: TrainContext) -> dict[str, float]:
        x, y = batch
        self.noc.requires_grad_(False)  # the generator's loss must not train the noc
        gen_loss = F.mse_loss(self.noc(self.gen(x)), y)
        ctx.update("gen", gen_loss)
        self.noc.requires_grad_(True)
        self.noc_grads_after_gen.append([p.grad for p in self.noc.parameters()])
        if not self.only_gen:
            noc_loss = F.mse_loss(self.noc(self.gen(x).detach()), -y)
            ctx.update("noc", noc_loss)
        return {"gen": gen_loss.item()}


def _spy(opt: torch.optim.Optimizer, name: str, calls: list[str]) -> None:
    step = opt.step

    def spied(*a: Any, **k: Any) -> Any:
        calls.append(name)
        return step(*a, **k)

    opt.step = spied  # type: ignore[method-assign]


def test_two_optimizers_are_stepped_in_call_order() -> None:
    m = TwoOptimizerMethod()
    gen_opt = build_sgd([{"params": m.gen.parameters()}], lr=0.1)
    noc_opt = build_sgd([{"params": m.noc.parameters()}], lr=0.01)
    calls: list[str] = []
    _spy(gen_opt, "gen", calls)
    _spy(noc_opt, "noc", calls)
    result = fit(
        m,
        TrainData(RegressionData(), epochs=1, batch_size=4),
        {"gen": gen_opt, "noc": noc_opt},
        Runtime(seed=0, progress=False),
    )
    assert calls == ["gen", "noc"] * result.steps
    assert all(g is None for grads in m.noc_grads_after_gen for g in grads)
    assert noc_opt.param_groups[0]["lr"] == 0.0  # both schedules ran to the end


def test_optimizer_not_updated_is_left_alone() -> None:
    m = TwoOptimizerMethod(only_gen=True)
    before = [p.clone() for p in m.noc.parameters()]
    sentinel = torch.ones_like(m.noc.weight)
    m.noc.weight.grad = sentinel.clone()
    gen_opt = build_sgd([{"params": m.gen.parameters()}], lr=0.1)
    noc_opt = build_sgd([{"params": m.noc.parameters()}], lr=0.1)
    calls: list[str] = []
    _spy(noc_opt, "noc", calls)
    fit(
        m,
        TrainData(RegressionData(), epochs=1, batch_size=4),
        {"gen": gen_opt, "noc": noc_opt},
        Runtime(seed=0, progress=False),
    )
    assert calls == []
    assert torch.equal(m.noc.weight.grad, sentinel)  # never zeroed by the engine
    assert all(torch.equal(p, q) for p, q in zip(before, m.noc.parameters(), strict=True))


def test_partial_accumulation_and_double_update_are_errors() -> None:
    class FirstMicroOnly(LinearMethod):
        def train_step(self, batch: Any, ctx: TrainContext) -> dict[str, float]:
            if ctx.micro_step == 0:
                ctx.update("sgd", F.mse_loss(self.net(batch[0]), batch[1]))
            return {}

    class Twice(LinearMethod):
        def train_step(self, batch: Any, ctx: TrainContext) -> dict[str, float]:
            ctx.update("sgd", F.mse_loss(self.net(batch[0]), batch[1]))
            ctx.update("sgd", F.mse_loss(self.net(batch[0]), batch[1]))
            return {}

    with pytest.raises(RuntimeError, match="1 of 2 micro-batches"):
        _fit(FirstMicroOnly(), grad_accum=2)
    with pytest.raises(RuntimeError, match="twice"):
        _fit(Twice())
    with pytest.raises(KeyError, match="unknown optimizer 'noc'"):

        class Unknown(LinearMethod):
            def train_step(self, batch: Any, ctx: TrainContext) -> dict[str, float]:
                ctx.update("noc", F.mse_loss(self.net(batch[0]), batch[1]))
                return {}

        _fit(Unknown())


def test_amp_on_cpu_is_a_noop_and_callbacks_cannot_leave_modules_in_eval() -> None:
    flags: list[bool] = []

    class Eval(Callback):
        def on_step_end(self, ctx: TrainContext, metrics: dict[str, float]) -> None:
            assert not ctx.amp
            m.net.eval()

    class Check(LinearMethod):
        def train_step(self, batch: Any, ctx: TrainContext) -> dict[str, float]:
            flags.append(self.net.training and self.net[0].training)
            with ctx.autocast():
                return super().train_step(batch, ctx)

    m = Check()
    _fit(m, amp=True, callbacks=[Eval()])
    assert flags and all(flags)


def test_rng_state_survives_weights_only_loading(tmp_path: Path) -> None:
    import random

    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    save_checkpoint(tmp_path / "rng.ckpt", {"rng": state})
    loaded = load_checkpoint(tmp_path / "rng.ckpt")
    assert loaded is not None
    set_rng_state(loaded["rng"])
    got = (random.random(), np.random.rand(), torch.rand(1))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    assert load_checkpoint(tmp_path / "missing.ckpt") is None
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    assert load_checkpoint(tmp_path / "junk.ckpt") is None


def test_resolve_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


class ImageData:
    """n fixed 3×8×8 images (3 channels, so NHWC and NCHW differ) and 2-value targets."""

    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = torch.randn(n, 2, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: SampleKey) -> dict[str, torch.Tensor]:
        return {"image": self.x[key.index], "target": self.y[key.index]}


class ConvMethod:
    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)
        )
        self.formats: list[tuple[bool, bool, bool]] = []

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def train_step(self, batch: dict[str, torch.Tensor], ctx: TrainContext) -> dict[str, float]:
        cl = torch.channels_last
        self.formats.append(
            (
                batch["image"].is_contiguous(memory_format=cl),
                self.net[0].weight.is_contiguous(memory_format=cl),
                batch["target"].is_contiguous(),
            )
        )
        loss = F.mse_loss(self.net(batch["image"]).mean((2, 3)), batch["target"])
        ctx.update("sgd", loss)
        return {"loss": loss.item()}


def test_channels_last_trains_the_same_weights() -> None:
    """channels_last=True: images and conv weights in NHWC during training; same weights."""
    weights, formats = [], []
    for channels_last in (False, True):
        method = ConvMethod()
        opt = build_sgd([{"params": list(method.net.parameters())}], lr=0.1)
        fit(
            method,
            TrainData(ImageData(), epochs=2, batch_size=4),
            {"sgd": opt},
            Runtime(seed=0, progress=False, channels_last=channels_last),
        )
        weights.append([p.detach().clone() for p in method.net.parameters()])
        formats.append(set(method.formats))
    assert formats == [{(False, False, True)}, {(True, True, True)}]
    for a, b in zip(*weights, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
