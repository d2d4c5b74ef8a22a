"""Where a sweep keeps its files (``sweeps/<name>/``) and the lock that allows one driver."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from pnoc.errors import ConfigError
from pnoc.io import write_text

SWEEPS = Path("sweeps")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _under_dir(name: str) -> property:
    return property(lambda self: self.dir / name)


@dataclass(frozen=True)
class SweepPaths:
    """The files of one sweep; the Ray Tune experiments it ran are ``ray/seg-000``, … ."""

    dir: Path
    ray = _under_dir("ray")
    optuna = _under_dir("optuna.db")
    summary = _under_dir("sweep.json")
    best = _under_dir("best.yaml")
    trials = _under_dir("trials.csv")
    plots = _under_dir("plots")
    lock = _under_dir(".lock")

    @property
    def name(self) -> str:
        return self.dir.name

    def experiments(self) -> list[str]:
        """The sweep's Ray Tune experiments that saved their state (Ray writes
        ``experiment_state-*.json`` once trials exist), oldest first."""
        found = self.ray.glob("seg-*") if self.ray.is_dir() else []
        return sorted(p.name for p in found if any(p.glob("experiment_state-*.json")))

    def new_experiment(self) -> str:
        """The name of the next experiment; a folder of that name left by a driver killed
        before Ray saved any state holds no trial and is cleared."""
        name = f"seg-{len(self.experiments()):03d}"
        shutil.rmtree(self.ray / name, ignore_errors=True)
        return name


def sweep_paths(name: str, root: Path | None = None) -> SweepPaths:
    if not _NAME.match(name):
        raise ConfigError(f"--name '{name}': use letters, digits, '.', '_' and '-' only")
    return SweepPaths(((root or Path.cwd()) / SWEEPS / name).resolve())


def _alive_since(pid: int, mtime: float) -> bool:
    """A process ``pid`` runs that started before the lock was written (not a reused pid)."""
    import psutil

    try:
        return psutil.Process(pid).create_time() <= mtime + 1.0
    except psutil.Error:
        return False


class Lock:
    """One driver per sweep: ``sweeps/<name>/.lock`` holds the driver's pid."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            try:
                pid = int(self.path.read_text().strip() or 0)
            except ValueError:
                pid = 0
            if pid and pid != os.getpid() and _alive_since(pid, self.path.stat().st_mtime):
                raise ConfigError(
                    f"sweep {self.path.parent.name} is already running (pid {pid}); "
                    f"wait for it or remove {self.path} if that process is not a sweep"
                )
        write_text(self.path, str(os.getpid()))
        return self

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)
