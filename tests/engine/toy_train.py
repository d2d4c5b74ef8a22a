"""Toy training run for the kill-and-resume determinism test (run as a script).

    PYTHONPATH=src python tests/engine/toy_train.py run OUT_DIR CHECKPOINT_PATH
    PYTHONPATH=src python tests/engine/toy_train.py scenario WORK_DIR KILL_AT_STEP

``run`` trains once and writes OUT_DIR/final.pt (the modules' state dicts) and
OUT_DIR/result.json. With the environment variable PNOC_TOY_KILL_AT_STEP=N the process SIGKILLs
itself at the end of optimizer step N, like an out-of-memory kill or a pre-empted machine: no
exception handler, no cleanup.

``scenario`` pays the interpreter + torch import once (seconds on a small CPU machine) and forks
the three runs as real child processes: an uninterrupted reference run (WORK_DIR/reference), in
parallel a run SIGKILLed at step KILL_AT_STEP, then the same run started again from the
checkpoint the killed one left (WORK_DIR/resumed). It writes WORK_DIR/scenario.json with each
child's exit code. Forked children inherit nothing that training depends on: ``main`` reseeds
every RNG, and the resumed child only knows what it reads from the checkpoint file.

Every RNG the engine must restore is used: dropout (torch), a random loss weight drawn from
numpy's and python's global RNGs, and a per-sample augmentation seeded by the SampleKey.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np
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
    param_groups,
)


class ToyDataset:
    """22 random 1×8×8 images, binary labels; augmentation: random flip + noise from key.seed."""

    def __init__(self, n: int = 22) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, 8, 8, generator=g)
        self.y = (self.x[:, :, :, :4].mean(dim=(1, 2, 3)) > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(key.seed)
        x = self.x[key.index]
        if rng.random() < 0.5:
            x = x.flip(-1)
        x = x + torch.from_numpy(rng.normal(0.0, 0.1, size=x.shape).astype(np.float32))
        return x, self.y[key.index]


class ToyMethod:
    def __init__(self) -> None:
        self.backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

    def modules(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "head": self.head}

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor], ctx: TrainContext) -> dict:
        x, y = batch
        with ctx.autocast():
            logits = self.head(self.backbone(x))
        ce = F.cross_entropy(logits, y)
        weight = 1.0 + 0.1 * float(np.random.rand()) + 0.1 * random.random()
        loss = weight * ce
        ctx.update("sgd", loss, {"ce": ce})
        return {"loss": loss.item(), "ce": ce.item()}


class KillAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, ctx: TrainContext, metrics: dict[str, float]) -> None:
        if ctx.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main(out_dir: Path, ckpt: Path) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    torch.set_num_threads(1)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    method = ToyMethod()
    opt = build_sgd(param_groups(method.backbone, method.head), lr=0.05, weight_decay=1e-4)
    kill = os.environ.get("PNOC_TOY_KILL_AT_STEP")
    runtime = Runtime(
        seed=123,
        checkpoint=CheckpointConfig(ckpt, every_steps=2, fingerprint="toy-v1"),
        callbacks=[KillAt(int(kill))] if kill else [],
        progress=False,
    )
    result = fit(method, TrainData(ToyDataset(), epochs=2, batch_size=4), {"sgd": opt}, runtime)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {
        f"{name}.{k}": v for name, m in method.modules().items() for k, v in m.state_dict().items()
    }
    torch.save(state, out_dir / "final.pt")
    summary = {
        "steps": result.steps,
        "epochs": result.epochs,
        "resumed_from_step": result.resumed_from_step,
        "history": result.history,
    }
    (out_dir / "result.json").write_text(json.dumps(summary))


def _fork(fn: Any, *args: Any, kill_at: int | None = None) -> int:
    """Run ``fn(*args)`` in a forked child; return its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        if kill_at is None:
            os.environ.pop("PNOC_TOY_KILL_AT_STEP", None)
        else:
            os.environ["PNOC_TOY_KILL_AT_STEP"] = str(kill_at)
        fn(*args)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def scenario(work: Path, kill_at: int) -> None:
    # torch.optim imports torch._dynamo lazily (seconds); import it here, once, not per child.
    import torch._dynamo  # noqa: F401

    ckpt = work / "ckpt" / "toy.ckpt"
    reference = _fork(main, work / "reference", work / "ref.ckpt")
    killed_rc = _wait(_fork(main, work / "killed", ckpt, kill_at=kill_at))
    ckpt_after_kill = ckpt.exists()
    resumed_rc = _wait(_fork(main, work / "resumed", ckpt))
    report = {
        "killed_rc": killed_rc,
        "checkpoint_after_kill": ckpt_after_kill,
        "reference_rc": _wait(reference),
        "resumed_rc": resumed_rc,
        "checkpoint_after_resume": ckpt.exists(),
    }
    (work / "scenario.json").write_text(json.dumps(report))


if __name__ == "__main__":
    if sys.argv[1] == "run":
        main(Path(sys.argv[2]), Path(sys.argv[3]))
    elif sys.argv[1] == "scenario":
        scenario(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        raise SystemExit(__doc__)
