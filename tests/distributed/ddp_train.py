"""A short CAM training run for the data-parallel tests (run as a script, or by Ray Train).

    python ddp_train.py CONFIG_JSON                       # one process
    python -m torch.distributed.run --nproc-per-node 2 ddp_train.py CONFIG_JSON

CONFIG_JSON holds: ``data`` (a generated VOC-layout folder), ``out`` (where rank 0 writes
``final.pt``, the modules' state dicts, and ``result.json``), ``method`` (vanilla … pnoc),
``steps``, ``batch_size`` (global), ``checkpoint`` (optional path: resumable, saved every 2
steps), ``kill_at`` (optional: rank 0 SIGKILLs itself at the end of that step, like a lost
machine), ``batchnorm`` (false: the networks' BatchNorm layers are replaced by identities, so a
worker's share of the batch computes exactly what the whole batch does).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pnoc.cam.methods import build_method
from pnoc.data.torch_sets import ClassificationSet, collate
from pnoc.data.transforms import classification_train_transform
from pnoc.data.voc import VOCDataset
from pnoc.engine import Callback, CheckpointConfig, Runtime, TrainData, build_sgd, fit
from pnoc.engine.distributed import init_from_env, world
from pnoc.models.cam import CAMNet


def _double(v: Any) -> Any:
    return v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v


def without_batchnorm(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.Identity())
        else:
            without_batchnorm(child)
    return module


class StepLog(Callback):
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_step_end(self, ctx: Any, metrics: dict[str, float]) -> None:
        self.rows.append(dict(metrics))


class KillAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, ctx: Any, metrics: dict[str, float]) -> None:
        if ctx.step + 1 == self.step and world().is_main:
            os.kill(os.getpid(), signal.SIGKILL)


def train(config: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    init_from_env(torch.device("cpu"), timeout_s=120)
    torch.manual_seed(0)
    dataset = VOCDataset(config["data"], "train")
    size = config.get("image_size", 32)

    def net() -> CAMNet:
        model = CAMNet("resnet18", dataset.num_classes, output_stride=16)
        return model if config.get("batchnorm", False) else without_batchnorm(model)

    model, oc = net(), net()
    collate_fn = None
    if config.get("float64"):
        model, oc = model.double(), oc.double()

        def collate_fn(items: list[dict[str, Any]]) -> dict[str, Any]:
            batch = collate(items)
            return {k: _double(v) for k, v in batch.items()}

    extra = {"mask_threshold": config["mask_threshold"]} if "mask_threshold" in config else {}
    method = build_method(config["method"], model, oc=oc, **extra)
    modules = method.modules()
    optimizers = {
        name: build_sgd(
            m.param_groups(), lr=config.get("lr", 0.01), weight_decay=1e-4, nesterov=True
        )
        for name, m in modules.items()
    }
    checkpoint = (
        CheckpointConfig(config["checkpoint"], every_steps=2, fingerprint="test")
        if config.get("checkpoint")
        else None
    )
    steps = StepLog()
    callbacks = [steps, *([KillAt(config["kill_at"])] if config.get("kill_at") else [])]
    runtime = Runtime(seed=0, progress=False, checkpoint=checkpoint, callbacks=callbacks)
    data = TrainData(
        ClassificationSet(dataset, classification_train_transform(size)),
        epochs=config.get("epochs", 1),
        batch_size=config["batch_size"],
        max_steps_per_epoch=config["steps"],
        collate_fn=collate_fn,
    )
    result = fit(method, data, optimizers, runtime)
    if world().is_main:
        out = Path(config["out"])
        out.mkdir(parents=True, exist_ok=True)
        torch.save({k: m.state_dict() for k, m in modules.items()}, out / "final.pt")
        summary = {
            "steps": result.steps,
            "resumed_from_step": result.resumed_from_step,
            "history": result.history,
            "world_size": world().size,
            "steps_metrics": steps.rows,
        }
        (out / "result.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    train(json.loads(Path(sys.argv[1]).read_text()))
