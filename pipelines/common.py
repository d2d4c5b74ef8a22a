"""What every stage shares: loading params.yaml, seeding, the device, its MLflow run, errors."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pnoc.config import Params, flatten, parse_params, resolve_device, seed_everything
from pnoc.errors import ConfigError, PnocError

PARAMS_FILE = Path("params.yaml")
log = logging.getLogger("pnoc")


def read_yaml(path: Path) -> Any:
    if not path.exists():
        raise ConfigError(f"{path}: file not found (run from the project root)")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


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


@dataclass
class StageContext:
    name: str
    params: Params
    device: str


@contextlib.contextmanager
def stage(name: str, sections: Sequence[str]) -> Iterator[StageContext]:
    """Load params, seed, pick the device and open the stage's MLflow run.

    ``sections`` are the params keys (``"cam"``, ``"base.seed"``) the stage reads: exactly those
    are logged, mirroring the ``params:`` list of the stage in dvc.yaml.
    """
    from pnoc_pipelines import tracking

    params = load_params()
    seed_everything(params.base.seed)
    device = resolve_device(params.base.device)
    flat = flatten(params)
    logged = {
        k: v for k, v in flat.items() if any(k == s or k.startswith(s + ".") for s in sections)
    }
    with tracking.stage_run(name, logged) as _run:
        yield StageContext(name=name, params=params, device=device)


def main(fn: Callable[[], None]) -> None:
    """Run a stage's entry point: clean one-line errors for known problems, exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        fn()
    except PnocError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


CHECKPOINT_DIR = Path(".pnoc/checkpoints")


def checkpoint_config(stage_name: str, *parts: Any, every_steps: int = 50):
    """Resumable-training state for a stage, outside DVC's outputs, keyed by its config."""
    from pnoc.cam.training import fingerprint
    from pnoc.engine import CheckpointConfig

    return CheckpointConfig(
        path=CHECKPOINT_DIR / f"{stage_name}.ckpt",
        every_steps=every_steps,
        fingerprint=fingerprint(*parts),
    )
