"""Shared fixtures: the tiny params override and a throw-away DVC project using it."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests use tiny tensors: one thread avoids OpenMP contention on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_params() -> dict[str, Any]:
    """params.yaml with tests/tiny.yaml merged on top (a plain dict, to edit per test)."""
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    return deep_merge(base, yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text()))


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point MLflow at a SQLite store under tmp_path for this test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("PNOC_PIPELINE_ID", raising=False)
    return uri


class Project:
    """A copy of the pipeline (dvc.yaml, code, tiny params) in its own folder."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env

    def run(
        self, *args: str, check: bool = True, timeout: float = 900
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            list(args), cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def dvc(self, *args: str, **kw: Any) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "dvc", *args, **kw)

    def write_params(self, params: dict[str, Any]) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_project(root: Path, params: dict[str, Any], mlflow_uri: str) -> Project:
    """Copy dvc.yaml and the code into ``root``, write ``params`` and initialise DVC there."""
    root.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore"):  # the repository's own, so ignores apply as there
        shutil.copy(REPO / name, root / name)
    for folder in ("src", "pipelines"):
        shutil.copytree(
            REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["MLFLOW_TRACKING_URI"] = mlflow_uri
    env["OMP_NUM_THREADS"] = "1"  # as the test process (_one_thread): same float rounding
    env.pop("PNOC_PIPELINE_ID", None)
    project = Project(root, env)
    project.write_params(params)
    project.dvc("init", "--no-scm", "-q")
    project.dvc("config", "core.analytics", "false")
    return project


@pytest.fixture
def tiny_project(tmp_path: Path, tiny_params: dict[str, Any], mlflow_store: str) -> Project:
    return make_project(tmp_path / "project", tiny_params, mlflow_store)


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The tiny pipeline after one real `dvc repro`, shared by the end-to-end tests."""
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    params = deep_merge(base, yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text()))
    tmp = tmp_path_factory.mktemp("reproduced")
    project = make_project(tmp / "project", params, f"sqlite:///{tmp / 'mlflow.db'}")
    project.first_repro = project.dvc("repro")  # type: ignore[attr-defined]
    return project


# -- a stand-in for the engine's TrainContext, recording gradients at each update --------


def has_grad(module: nn.Module) -> bool:
    """True when any parameter of ``module`` holds a non-zero gradient."""
    return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())


@dataclass
class Update:
    optimizer: str
    loss: float
    terms: dict[str, float]
    grads_before: dict[str, bool]
    grads_after: dict[str, bool]


@dataclass
class FakeContext:
    modules: dict[str, nn.Module]
    progress: float = 0.5
    lr: float = 0.01
    device: torch.device = torch.device("cpu")
    amp: bool = False
    epoch: int = 0
    step: int = 0
    total_steps: int = 10
    updates: list[Update] = field(default_factory=list)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, module in self.modules.items():
            self.optimizers[name] = torch.optim.SGD(module.parameters(), lr=self.lr)

    def autocast(self) -> Any:
        return contextlib.nullcontext()

    def update(self, optimizer: str, loss: Tensor, terms: dict[str, Tensor] | None = None) -> None:
        before = {n: has_grad(m) for n, m in self.modules.items()}
        loss.backward()
        after = {n: has_grad(m) for n, m in self.modules.items()}
        self.updates.append(
            Update(
                optimizer,
                float(loss.detach()),
                {k: float(v.detach()) for k, v in (terms or {}).items()},
                before,
                after,
            )
        )
        opt = self.optimizers[optimizer]
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.step += 1


@pytest.fixture
def fake_context():
    return FakeContext
