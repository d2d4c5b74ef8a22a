"""What every stage shares: params.yaml, its contract in dvc.yaml, the runtime, its MLflow run.

dvc.yaml is the one place a stage's contract is written: ``stage(name)`` logs exactly the params
the stage lists there and hands the stage a view of params.yaml in which any other key is an
error, so code and dvc.yaml cannot drift apart unnoticed (tests/pipelines/test_contracts.py checks
the paths the same way).

A killed stage leaves nothing behind: ``stage(name)`` first deletes the temporaries a killed run
of it left beside its outputs (``.<name>.<random>.tmp``, see :func:`pnoc.io.atomic_path`) and
marks runs whose process is gone KILLED (:func:`pnoc_pipelines.tracking.end_orphaned_runs`);
``main`` turns SIGTERM and SIGINT into a KeyboardInterrupt, so the stage's run ends KILLED, its
temporaries are removed and the process exits with status 143 or 130.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import logging
import os
import shutil
import signal
import statistics
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel

from pnoc.config import Params, flatten, parse_params
from pnoc.errors import ConfigError, PnocError
from pnoc_pipelines.paths import CHECKPOINT_DIR, DVC_FILE, PARAMS_FILE

if TYPE_CHECKING:
    from pnoc.engine import Runtime
    from pnoc.engine.distributed import World

log = logging.getLogger("pnoc")


def read_yaml(path: Path) -> Any:
    if not path.exists():
        raise ConfigError(f"{path}: file not found (run from the project root)")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def mean_std(values: Iterable[float]) -> dict[str, float]:
    """``mean`` and sample ``std`` of ``values`` over seeds (std 0 for a single value)."""
    vs = list(values)
    return {"mean": statistics.mean(vs), "std": statistics.stdev(vs) if len(vs) > 1 else 0.0}


def venv_env() -> dict[str, str]:
    """This environment with this interpreter's folder first on PATH: the stage commands
    dvc.yaml names (``python -m …``) then run in the same venv, activated or not."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def load_params(path: Path = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate params.yaml; a bad key stops here, before any work.

    ``overrides`` (dotted key -> value, as ``--set`` gives them) are applied before validation,
    and an error names them beside the file.
    """
    if not overrides:
        return parse_params(read_yaml(path), source=str(path))
    from pnoc.tune.space import apply_overrides

    source = str(path) + "".join(f" --set {k}={v}" for k, v in overrides.items())
    return parse_params(apply_overrides(read_yaml(path) or {}, overrides), source=source)


@functools.cache
def _dvc_stages(path: Path) -> dict[str, Any]:
    stages = (read_yaml(path) or {}).get("stages")
    if not isinstance(stages, dict):
        raise ConfigError(f"{path}: expected a 'stages' mapping")
    return stages


def stage_contract(name: str, path: Path = DVC_FILE) -> dict[str, Any]:
    """The dvc.yaml entry of stage ``name`` (cmd, deps, params, outs, metrics, plots)."""
    stages = _dvc_stages(path)
    if name not in stages:
        raise ConfigError(f"{path}: no stage '{name}' (stages: {', '.join(stages)})")
    return stages[name]


def declared_params(name: str, path: Path = DVC_FILE) -> list[str]:
    """The dotted params keys stage ``name`` lists under ``params:`` in dvc.yaml."""
    keys: list[str] = []
    for entry in stage_contract(name, path).get("params") or []:
        # An entry is a key of params.yaml, or {other_file.yaml: [keys]}: only the former here.
        keys += [entry] if isinstance(entry, str) else []
    return keys


class UndeclaredParamError(ConfigError, AttributeError):
    """A stage read a params key its dvc.yaml entry does not declare (``hasattr`` sees none)."""


class DeclaredParams:
    """params.yaml as a stage may read it: the keys its dvc.yaml entry declares, and no other.

    A declared section comes back whole (the typed model); a section of which only some keys are
    declared comes back as another ``DeclaredParams``; anything else is a ConfigError naming the
    key, so a stage that reads an undeclared param fails on its first run instead of silently
    missing DVC's change detection.
    """

    def __init__(self, params: BaseModel, stage: str, declared: list[str], prefix: str = ""):
        self._params, self._stage, self._declared, self._prefix = params, stage, declared, prefix

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        key = self._prefix + name
        value = getattr(self._params, name)
        if any(key == d or key.startswith(d + ".") for d in self._declared):
            return value
        if any(d.startswith(key + ".") for d in self._declared):
            return DeclaredParams(value, self._stage, self._declared, key + ".")
        raise UndeclaredParamError(
            f"stage '{self._stage}' reads params key '{key}', which dvc.yaml does not list under "
            f"stages.{self._stage}.params (declared: {', '.join(self._declared)})"
        )


@dataclass
class StageContext:
    name: str
    params: Params  # a DeclaredParams view, typed as what it reads like

    @property
    def world(self) -> World:
        """This process among the stage's workers (:mod:`pnoc.engine.distributed`): rank 0
        alone writes outputs, metrics and MLflow; the others only hold an MLflow-less stage."""
        from pnoc.engine.distributed import world

        return world()

    def runtime(self) -> Runtime:
        """The stage's run settings from ``base``."""
        from pnoc.engine import Runtime

        return Runtime.from_params(self.params.base)

    def training_runtime(self, section: str) -> Runtime:
        """:meth:`runtime` with an MLflow logger and a resumable checkpoint at
        ``.pnoc/checkpoints/<stage>.ckpt``, keyed by ``base``, ``data`` and ``section``."""
        from pnoc.engine import CheckpointConfig, fingerprint
        from pnoc_pipelines.tracking import MlflowLogger

        p = self.params
        # What the run computes, not where it runs: a rerun on another device or number of
        # workers resumes the same checkpoint.
        computes = p.base.model_dump(mode="json", include={"seed", "amp", "sync_bn"})
        key = fingerprint(computes, p.data, getattr(p, section))
        checkpoint = CheckpointConfig(CHECKPOINT_DIR / f"{self.name}.ckpt", 50, key)
        callbacks = [MlflowLogger()] if self.world.is_main else []
        return self.runtime().replace(checkpoint=checkpoint, callbacks=callbacks)


def stage_outputs(name: str, path: Path = DVC_FILE) -> list[Path]:
    """The paths stage ``name`` lists under ``outs``, ``metrics`` and ``plots`` in dvc.yaml."""
    contract = stage_contract(name, path)
    found = []
    for key in ("outs", "metrics", "plots"):
        for entry in contract.get(key) or []:
            found.append(Path(next(iter(entry)) if isinstance(entry, dict) else entry))
    return found


def remove_stale_temporaries(name: str, path: Path = DVC_FILE) -> list[Path]:
    """Delete the ``.<out>.<random>.tmp`` siblings a killed run of stage ``name`` left beside its
    outputs and its checkpoint (:func:`pnoc.io.atomic_path` names them so); return them."""
    targets = [*stage_outputs(name, path), CHECKPOINT_DIR / f"{name}.ckpt"]
    removed = []
    for target in targets:
        if "${" in str(target) or not target.parent.is_dir():
            continue
        for tmp in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        log.info(
            "removed %d temporary file(s) left by a killed run of stage '%s'", len(removed), name
        )
    return removed


@contextlib.contextmanager
def stage(name: str) -> Iterator[StageContext]:
    """Load params, clear what a killed run of the stage left (:func:`remove_stale_temporaries`)
    and open the stage's MLflow run, logging the params dvc.yaml declares."""
    from pnoc.engine.distributed import world
    from pnoc_pipelines import tracking

    params = load_params()
    declared = declared_params(name)
    view: Any = DeclaredParams(params, name, declared)
    if not world().is_main:  # another worker of a multi-worker stage: rank 0 writes and logs
        yield StageContext(name=name, params=view)
        return
    remove_stale_temporaries(name)
    everything = flatten(params)
    logged = {
        k: v
        for k, v in everything.items()
        if any(k == s or k.startswith(s + ".") for s in declared)
    }
    with tracking.stage_run(name, logged, pipeline_params=everything) as _run:
        yield StageContext(name=name, params=view)


def run_as_worker(fn: Callable[[], None]) -> None:
    """Run the stage function ``fn`` as one worker of a multi-worker stage
    (:mod:`pnoc_pipelines.launch`): join the process group, run, leave it. Workers other than
    rank 0 log warnings and errors only."""
    from pnoc.engine import resolve_device
    from pnoc.engine.distributed import init_from_env, world
    from pnoc_pipelines.launch import TIMEOUT_S

    base = load_params().base
    init_from_env(resolve_device(base.device), timeout_s=TIMEOUT_S)
    if not world().is_main:
        logging.getLogger("pnoc").setLevel(logging.WARNING)
    try:
        fn()
    finally:
        import torch.distributed as dist

        if dist.is_initialized() and not os.environ.get("PNOC_RAY_WORKER"):
            dist.destroy_process_group()  # Ray Train owns (and ends) the group of its workers


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT reached a stage: unwinds like Ctrl-C, remembering the signal."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _interrupt(signum: int, frame: Any) -> None:
    # A second signal during the clean-up ends the process at once.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    raise Interrupted(signum)


@contextlib.contextmanager
def scratch_dir(path: Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` that is removed afterwards (never published): where a
    worker other than rank 0 writes what it needs but rank 0 publishes."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent) as d:
        yield Path(d)


def main(fn: Callable[[], None], *, workers: bool = False) -> None:
    """Run a stage's entry point: clean one-line errors for known problems, exit status 1.

    ``workers``: the stage runs on ``base.workers`` workers when asked
    (:mod:`pnoc_pipelines.launch`); stages without it always run as one process.

    SIGTERM and SIGINT raise :class:`Interrupted` in the stage, which ends its MLflow run as
    KILLED and removes its temporaries on the way out; the exit status is then 128 + signal
    (143, 130), as if the signal had ended the process.
    """
    from pnoc_pipelines import launch

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupt)
    where = ""
    try:
        if launch.is_worker():
            rank, size = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
            where = f" (rank {rank} of {size})"
            run_as_worker(fn)
            return
        base = load_params().base
        if workers and launch.wants_launch(base):
            sys.exit(launch.launch(fn, base))
        fn()
    except PnocError as exc:
        print(f"error{where}: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"error: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        sys.exit(128 + signum)
