"""Checkpoint files and global RNG state, in a form ``torch.load(weights_only=True)`` accepts.

``weights_only`` loading refuses arbitrary pickled objects (numpy arrays included), so RNG states
are stored as tensors, lists and plain numbers and converted back on restore.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pnoc.errors import ConfigError
from pnoc.io import save_torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointConfig",
    "fingerprint",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

log = logging.getLogger(__name__)

#: Version of the dict ``fit`` saves; a checkpoint of another version is ignored. 2: the
#: networks' state-dict keys are timm's (pnoc.models.backbones).
CHECKPOINT_FORMAT = 2


@dataclass
class CheckpointConfig:
    """Where and how often ``fit`` saves its resumable state.

    path: e.g. ``.pnoc/checkpoints/train_cam.ckpt``. Not a DVC output: DVC deletes a stage's
        outputs before running it, which would defeat resuming.
    every_steps: save every this many optimizer steps (0: only at epoch ends); a checkpoint is
        also saved at every epoch end.
    fingerprint: hash of the stage config. A checkpoint with another fingerprint (or another
        data/batch layout) is ignored, with a log line, and training starts fresh.
    """

    path: Path
    every_steps: int = 50
    fingerprint: str = ""

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.every_steps < 0:
            raise ConfigError(f"checkpoint every_steps must be >= 0, got {self.every_steps}")


def rng_state() -> dict[str, Any]:
    """Every global RNG state (python ``random``, numpy legacy, torch CPU, all CUDA devices)."""
    version, internal, gauss = random.getstate()
    key, mt, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "key": str(key),
            "state": torch.from_numpy(mt.astype(np.int64)),  # uint32 → int64, lossless
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA only when the device count matches)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["key"],
            npst["state"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state["cuda"]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    elif cuda:
        log.warning("checkpoint holds CUDA RNG states for %d devices; not restored", len(cuda))


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` atomically (a killed process never leaves a truncated checkpoint)."""
    save_torch(path, dict(state))


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """Read a checkpoint with ``weights_only=True`` onto the CPU; None (logged) if missing or
    unreadable (e.g. written by an incompatible version)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file means: start fresh
        log.warning("ignoring unreadable checkpoint %s (%s); starting fresh", path, exc)
        return None
    if not isinstance(state, dict):
        log.warning("ignoring checkpoint %s: not a dict; starting fresh", path)
        return None
    return state


def fingerprint(*parts: Any) -> str:
    """Stable hash of the config a checkpoint belongs to (pydantic models or JSON-like values)."""
    norm = [p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts]
    return hashlib.sha256(json.dumps(norm, sort_keys=True, default=str).encode()).hexdigest()[:16]
