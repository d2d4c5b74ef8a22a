"""Exceptions raised by the library. Each names the file, key or value at fault."""

from __future__ import annotations

from pathlib import Path


class PnocError(Exception):
    """Base class of every error pnoc raises on purpose."""


class ConfigError(PnocError, ValueError):
    """A parameter is missing, unknown or outside its allowed range."""


class DatasetError(PnocError):
    """A dataset file is missing, corrupt or inconsistent.

    The message always starts with the offending path so a user can open it.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[type[DatasetError], tuple[Path, str]]:
        # Picklable, so that an error met in a DataLoader worker reaches the caller as itself.
        return type(self), (self.path, self.problem)


class NonFiniteLossError(PnocError, FloatingPointError):
    """A loss term became NaN or Inf; training stopped after saving the last good state."""

    def __init__(self, step: int, term: str, value: float) -> None:
        self.step = step
        self.term = term
        self.value = value
        super().__init__(f"loss term '{term}' is {value} at step {step}; training stopped")
